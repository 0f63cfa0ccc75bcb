"""The backbone's last block for the class token only (`mai.backbone.class_token_only`):
the served graphs against the full ones, side by side in one run.

    python benchmarks/bench_cls_only.py                      # default model's calibration for int8
    python benchmarks/bench_cls_only.py --rounds 7 --batch-size 16

For fp32 and int8 (the int8 graph quantized with the default model's shipped
calibration, `int8.json`): the largest difference of each feature (`embed`, `cls`,
`layers`) between the full graph and the served one on random images, whether the
served graph is batch-invariant, and model-only images/s (backbone only, batch
--batch-size, --threads, rounds interleaved; medians, best beside). The full graphs
are built in memory (`mai.backbone.full_graph`, then `mai.quantize.quantize`), the
served ones are the cached `feature_graph`s.
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

from bench_model import _cpu_name as cpu_name  # noqa: E402


def session(model: object, threads: int, optimise: bool = True):
    """A CPU session on a graph (a ModelProto or a path) with MAI's CPU thread settings;
    optimise=False runs every node as written (no fused kernels)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as mai.session does on the CPU
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from mai.artifact import default_model_dir, load_artifact
    from mai.backbone import feature_graph, full_graph, get_backbone
    from mai.quantize import Calibration, quantize

    art = load_artifact(default_model_dir())
    bb = get_backbone(art.meta["backbone"]["name"])
    cal = art.path / "int8.json"
    full32 = full_graph(bb)
    graphs = {"fp32 full": full32, "fp32 served": feature_graph(bb, print),
              "int8 full": quantize(full32, Calibration.load(cal)),
              "int8 served": feature_graph(bb, print, "int8", cal)}
    sessions = {k: session(g, args.threads) for k, g in graphs.items()}
    del graphs, full32
    x = np.random.default_rng(0).integers(0, 256, (args.batch_size, bb.size, bb.size, 3), dtype=np.uint8)
    out = {k: s.run(None, {"image": x}) for k, s in sessions.items()}
    names = [o.name for o in sessions["fp32 full"].get_outputs()]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; threads {args.threads}, batch {args.batch_size}; "
          f"backbone {bb.name}, last block {bb.last_block!r}\n")
    for p in ("fp32", "int8"):
        diffs = ", ".join(f"{n} {np.abs(out[f'{p} full'][i] - out[f'{p} served'][i]).max():.1e}"
                          for i, n in enumerate(names))
        one = sessions[f"{p} served"].run(None, {"image": x[1:2]})
        inv = all(np.array_equal(one[i][0], out[f"{p} served"][i][1]) for i in range(len(names)))
        print(f"{p}: served vs full, largest difference: {diffs}; served graph batch-invariant: {inv}")
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"image": x})
            times[k].append(time.perf_counter() - t0)
    rate = {k: len(x) / float(np.median(t)) for k, t in times.items()}
    print(f"\nbackbone only, {args.rounds} interleaved rounds, images/s median (best):")
    for k, t in times.items():
        print(f"  {k:12s} {rate[k]:6.2f} ({len(x) / min(t):.2f})   x{rate[k] / rate['fp32 full']:.2f} fp32 full")
    for p in ("fp32", "int8"):
        print(f"  {p}: served / full = {rate[f'{p} served'] / rate[f'{p} full']:.3f}")


if __name__ == "__main__":
    main()
