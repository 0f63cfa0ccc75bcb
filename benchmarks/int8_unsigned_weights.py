"""Is 16-bit saturation why the int8 graph lands far from fp32 on a CPU without VNNI?

    python benchmarks/int8_unsigned_weights.py

ONNX Runtime documents that on x86 CPUs with AVX2 but no VNNI, uint8 x int8 products
go through 16-bit saturating adds, and that unsigned weights avoid it. This makes a
copy of the default model's int8 backbone graph with its weights stored as uint8
with zero point 128 (the same dequantized values) and compares, on random images:
the `layers` features of the shipped graph, the copy and fp32, each against the
scheme's float reference (the int8 graph run with graph optimisations off, so every
DequantizeLinear -> MatMul runs in float), and the speed of the three (interleaved
rounds). If saturation were the cause, the copy would sit much closer to the
reference than the shipped graph.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cls_only import session  # noqa: E402  (one CPU-session rule for both scripts)
from bench_model import _cpu_name as cpu_name  # noqa: E402


def unsigned_copy(model: object) -> tuple[object, int]:
    """The graph with every int8 weight DequantizeLinear re-stored as uint8 + 128."""
    from onnx import numpy_helper

    g = model.graph
    idx = {t.name: k for k, t in enumerate(g.initializer)}
    n = 0
    for node in g.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith(".int8"):
            continue
        w = numpy_helper.to_array(g.initializer[idx[node.input[0]]])
        zp = numpy_helper.to_array(g.initializer[idx[node.input[2]]])
        if w.dtype != np.int8 or zp.any():
            continue
        g.initializer[idx[node.input[0]]].CopyFrom(
            numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), node.input[0]))
        g.initializer[idx[node.input[2]]].CopyFrom(
            numpy_helper.from_array(np.full(zp.shape, 128, np.uint8), node.input[2]))
        n += 1
    return model, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    from mai.artifact import default_model_dir, load_artifact
    from mai.backbone import feature_graph, get_backbone

    art = load_artifact(default_model_dir())
    bb = get_backbone(art.meta["backbone"]["name"])
    int8 = feature_graph(bb, print, "int8", art.path / "int8.json")
    copy, n = unsigned_copy(onnx.load(str(int8)))

    t = args.threads
    s = {"fp32": session(feature_graph(bb), t), "int8 (int8 weights)": session(int8, t),
         "int8 (uint8 weights)": session(copy, t), "reference": session(int8, t, optimise=False)}
    x = np.random.default_rng(0).integers(0, 256, (args.batch_size, bb.size, bb.size, 3), dtype=np.uint8)
    out = {k: v.run(["layers"], {"image": x})[0] for k, v in s.items()}
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; ONNX Runtime {ort.__version__}; {n} weights re-stored; "
          f"threads {args.threads}, batch {args.batch_size}\n\n`layers` against the float reference:")
    for k in ("int8 (int8 weights)", "int8 (uint8 weights)", "fp32"):
        d = np.abs(out[k] - out["reference"])
        print(f"  {k:21s} largest {d.max():.4f}, mean {d.mean():.5f}")
    times: dict[str, list[float]] = {k: [] for k in ("fp32", "int8 (int8 weights)", "int8 (uint8 weights)")}
    for _ in range(args.rounds):
        for k in times:
            t0 = time.perf_counter()
            s[k].run(None, {"image": x})
            times[k].append(time.perf_counter() - t0)
    print(f"\n{args.rounds} interleaved rounds, images/s median (best):")
    for k, t in times.items():
        print(f"  {k:21s} {len(x) / float(np.median(t)):6.2f} ({len(x) / min(t):.2f})")


if __name__ == "__main__":
    main()
