"""Model-only throughput: torch eager vs ONNX Runtime, side by side in one run.

    python benchmarks/bench_model.py [--model DIR] [--batch-sizes 1,8,32,128] [--seconds 3]

On the CPU: torch eager fp32 vs ONNX Runtime fp32 (CPU provider). Where CUDA
works (torch sees a GPU and ONNX Runtime's CUDA provider loads): ONNX Runtime
CUDA fp16 and fp32 vs torch eager fp32 and fp16 on the GPU. Each engine runs the
same uint8 batches; figures are images/s and the ratio to the slowest engine at
that batch size. Engines are interleaved round by round, so a noisy neighbour
slows them all alike. Needs the train extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engines(model_dir: Path | None, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    import torch

    from mai.artifact import load_artifact
    from mai.session import open_model
    from mai_train.checkpoint import load_torch_model

    torch.set_num_threads(threads)
    art = load_artifact(model_dir)
    tmodel = load_torch_model(art)
    out: dict[str, Callable[[np.ndarray], object]] = {}

    def torch_run(m, device, half=False):
        def run(x: np.ndarray) -> object:
            with torch.inference_mode():
                t = torch.from_numpy(x).to(device)
                y = torch.sigmoid(m(t).float())
                return y.cpu().numpy()
        return run

    out["torch eager fp32 cpu"] = torch_run(tmodel, "cpu")
    ort_cpu = open_model(model_dir, device="cpu", threads=threads)
    out["onnxruntime fp32 cpu"] = lambda x: ort_cpu.predict(x)
    if torch.cuda.is_available():
        g32 = load_torch_model(art).cuda()
        import copy

        g16 = copy.deepcopy(g32).half()
        out["torch eager fp32 cuda"] = torch_run(g32, "cuda")
        out["torch eager fp16 cuda"] = torch_run(g16, "cuda")
        root = model_dir or art.path
        for prec in ("fp32", "fp16"):
            f = Path(root) / f"model.{prec}.onnx"
            if f.is_file():
                m = open_model(f, device="cuda")
                out[f"onnxruntime {prec} cuda"] = (lambda mm: (lambda x: mm.predict(x)))(m)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per engine and batch size")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    eng = engines(args.model, args.threads)
    print(f"# hardware: {_cpu_name()}, {os.cpu_count()} cores"
          + (f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"))
    print(f"# torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}")
    print("| batch | engine | images/s | ratio to slowest |")
    print("|---|---|---|---|")
    for bs, name, rate, ratio in measure(eng, [int(b) for b in args.batch_sizes.split(",")], args.seconds):
        print(f"| {bs} | {name} | {rate:,.0f} | {ratio:.2f}x |", flush=True)


def measure(eng: dict[str, Callable[[np.ndarray], object]], batch_sizes: list[int],
            seconds: float, size: tuple[int, int] = (200, 200)) -> list[tuple[int, str, float, float]]:
    """(batch, engine, images/s, ratio to the slowest at that batch) for each pair,
    on uint8 batches of `size` (w, h).

    Engines run the same uint8 batch, interleaved round by round, so a noisy
    neighbour slows them all alike; a torch CUDA engine is synchronised before its
    clock stops (ONNX Runtime's `run` returns host arrays: it has finished)."""
    sync = lambda: None  # noqa: E731
    if any("torch" in name and "cuda" in name for name in eng):
        import torch

        sync = torch.cuda.synchronize
    rng = np.random.default_rng(0)
    rows = []
    for bs in batch_sizes:
        x = rng.integers(0, 256, (bs, size[1], size[0], 3), dtype=np.uint8)
        for run in eng.values():
            run(x)  # warm-up (CUDA contexts, allocator, graph optimisation)
        counts = dict.fromkeys(eng, 0)
        spent = dict.fromkeys(eng, 0.0)
        deadline = time.perf_counter() + seconds * len(eng)
        while time.perf_counter() < deadline:
            for name, run in eng.items():
                t = time.perf_counter()
                run(x)
                if "torch" in name and "cuda" in name:
                    sync()
                spent[name] += time.perf_counter() - t
                counts[name] += bs
        rates = {n: counts[n] / spent[n] for n in eng}
        slowest = min(rates.values())
        rows.extend((bs, n, r, r / slowest) for n, r in rates.items())
    return rows

if __name__ == "__main__":
    main()
