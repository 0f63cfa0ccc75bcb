"""The GPU scan path, measured on the machine it runs on: model only, decode, end to end.

    python benchmarks/bench_gpu.py                       # on a GPU machine (the gpu and train extras)
    python benchmarks/bench_gpu.py --files 40 --size 1600x1200 --batch-sizes 8 --seconds 0.5   # a smoke run

Three tables, each as images/s and the ratio to the slowest row of its table:

1. Model only: ONNX Runtime CUDA fp16 and fp32 (host batches, and device
   batches through IO binding, as the GPU scan path feeds them), torch eager
   fp32/fp16 on CUDA, and the CPU engines, at several batch sizes
   (`bench_model.measure`: engines interleaved round by round).
2. Decode: the CPU path's decoder (`scanner.decode.decode_chunk`) in a pool of
   one process per core, DCT-scaled (mai-scan's default) and at full size,
   against the GPU path's readers plus nvJPEG and resizing on the device
   (`scanner.gpu.GpuStage`), on the same generated folder of camera-sized JPEGs.
3. End to end: the real `mai-scan` command (a subprocess, start-up included) on
   that folder: the CPU path (`--device cpu`), CPU decode feeding the model on
   CUDA (`--device cuda --decoder cpu`) and the GPU path (`--device cuda
   --decoder gpu`), plus how far the GPU path's scores are from the CPU path's.

Where no GPU works, the GPU rows are reported as not measured and the CPU rows
still run. The folder is generated once and cached under the temp folder
(benchmarks/bench_scan.py's generator: photo-like content at quality 90).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import _cpu_name, engines, measure  # noqa: E402
from bench_scan import bench_model, files_of, mai_scan, make_folder  # noqa: E402


def _gpu_info() -> tuple[str, str | None]:
    """A line naming the GPU, driver and versions; None for `why` when a GPU works."""
    import onnxruntime as ort
    import torch
    import torchvision

    versions = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})")
    if not torch.cuda.is_available():
        return f"no GPU; {versions}", "torch sees no CUDA device"
    driver = "?"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"
    name = torch.cuda.get_device_name(0)
    return f"GPU {name} (driver, memory: {driver}; CUDA runtime {torch.version.cuda}); {versions}", None


def _table(title: str, rows: list[tuple[str, float]], extra: dict[str, str] | None = None) -> None:
    print(f"\n### {title}\n")
    measured = [r for _, r in rows if r > 0]
    slowest = min(measured) if measured else 1.0
    print("| run | images/s | ratio to slowest |" + ("" if not extra else " note |"))
    print("|---|---|---|" + ("" if not extra else "---|"))
    for name, rate in rows:
        note = f" {extra.get(name, '')} |" if extra else ""
        if rate > 0:
            print(f"| {name} | {rate:,.1f} | {rate / slowest:.2f}x |{note}")
        else:
            print(f"| {name} | not measured | - |{note}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- 1. model only

def model_only(model_dir: str, batch_sizes: list[int], seconds: float, threads: int, gpu: bool) -> None:
    import torch

    from mai.session import open_model

    eng: dict[str, Callable[[np.ndarray], object]] = engines(Path(model_dir), threads)
    if gpu:
        for prec in ("fp16", "fp32"):
            f = Path(model_dir) / f"model.{prec}.onnx"
            if not f.is_file():
                continue
            m = open_model(f, device="cuda")
            cache: dict[str, object] = {}

            def bound(x: np.ndarray, m=m, cache=cache) -> object:
                if cache.get("shape") != x.shape:  # uploaded once per batch size: the scan decodes on the device
                    cache["t"], cache["shape"] = torch.from_numpy(x).cuda(), x.shape
                t = cache["t"]
                return m.predict_bound(t.data_ptr(), tuple(t.shape), "cuda", 0)

            eng[f"onnxruntime {prec} cuda, IO binding"] = bound
    print("\n### Model only (uint8 200x200 batches; `bench_model.measure`)\n")
    print("| batch | engine | images/s | ratio to slowest |")
    print("|---|---|---|---|")
    for bs, name, rate, ratio in measure(eng, batch_sizes, seconds):
        print(f"| {bs} | {name} | {rate:,.0f} | {ratio:.2f}x |", flush=True)


# ----------------------------------------------------------------------------- 2. decode

def _cpu_decode(files: list[str], spec_json: str, workers: int, draft: bool) -> float:
    from mai.preprocess import PreprocessSpec
    from scanner.decode import decode_chunk, init_worker

    spec = PreprocessSpec.from_json(spec_json)
    chunks = [files[i:i + 4] for i in range(0, len(files), 4)]
    with ProcessPoolExecutor(workers, initializer=init_worker) as ex:
        list(ex.map(decode_chunk, chunks[:workers], [spec] * workers))  # start the workers outside the clock
        t0 = time.monotonic()
        n = sum(len(r) for r in ex.map(decode_chunk, chunks, [spec] * len(chunks), [180_000_000] * len(chunks),
                                       [draft] * len(chunks)))
        return n / (time.monotonic() - t0)


def _gpu_decode(files: list[str], spec_json: str, readers: int, batch: int, device: str) -> float:
    import torch

    from mai.preprocess import PreprocessSpec
    from scanner.decode import read_chunk
    from scanner.gpu import GpuStage

    spec = PreprocessSpec.from_json(spec_json)
    stage = GpuStage(spec, device=device)
    stage._decode(read_chunk(files[:2], spec), [0, 1])  # CUDA context, nvJPEG handles, weights: outside the clock
    chunks = [files[i:i + 4] for i in range(0, len(files), 4)]
    t0 = time.monotonic()
    n = 0
    with ThreadPoolExecutor(readers) as ex:  # the readers run ahead while the device decodes
        pending: list = []
        for got in ex.map(read_chunk, chunks, [spec] * len(chunks)):
            pending.extend(got)
            if len(pending) >= batch:
                n += len(stage._decode(pending, list(range(len(pending)))))
                pending = []
        if pending:
            n += len(stage._decode(pending, list(range(len(pending)))))
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.monotonic() - t0)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder with model.fp16.onnx/model.fp32.onnx "
                    "(default: the embedded model)")
    ap.add_argument("--files", type=int, default=2000, help="JPEGs in the generated folder")
    ap.add_argument("--size", default="4000x3000", help="their size, WxH (camera-sized by default)")
    ap.add_argument("--batch-sizes", default="32,256,1024,4096", help="model-only batch sizes")
    ap.add_argument("--seconds", type=float, default=3.0, help="model-only time per engine and batch size")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU decode processes")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: model,decode,scan")
    ap.add_argument("--stand-in-cpu", action="store_true",
                    help="run the GPU path's decode on torch's CPU device (checks the script, measures nothing "
                         "about GPUs)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    w, h = (int(v) for v in args.size.lower().split("x"))
    info, why = _gpu_info()
    gpu = why is None
    print(f"# {platform.node()}: {_cpu_name()}, {os.cpu_count()} cores; {info}")
    print(f"# python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    model_dir = bench_model(args.model)

    if "model" not in skip:
        model_only(model_dir, [int(b) for b in args.batch_sizes.split(",")], args.seconds, args.workers, gpu)

    folder = make_folder(args.files, (w, h), 0, (w, h), args.workers)
    files = files_of(folder)
    from mai.session import open_model

    spec_json = open_model(model_dir, "cpu").spec.to_json()
    mp = w * h / 1e6
    if "decode" not in skip:
        rows = [(f"CPU pool, {args.workers} processes, DCT-scaled (mai-scan default)",
                 _cpu_decode(files, spec_json, args.workers, True)),
                (f"CPU pool, {args.workers} processes, full size",
                 _cpu_decode(files, spec_json, args.workers, False))]
        if gpu or args.stand_in_cpu:
            device = "cuda" if gpu else "cpu"
            label = "GPU: readers + nvJPEG + resize on the device" if gpu else "torch CPU stand-in for the GPU stage"
            rows.append((label, _gpu_decode(files, spec_json, 2 * args.workers, 256, device)))
        else:
            rows.append((f"GPU: readers + nvJPEG + resize on the device ({why})", 0.0))
        _table(f"Decode + preprocess to the model's input, {len(files)} JPEGs of {w}x{h} ({mp:.0f} MP)", rows)

    if "scan" not in skip:
        cpu_scores: dict = {}
        gpu_scores: dict = {}
        runs = [("mai-scan --device cpu (the CPU path)", ["--device", "cpu"], 32, cpu_scores)]
        if gpu:
            runs += [("mai-scan --device cuda --decoder cpu", ["--device", "cuda", "--decoder", "cpu"], 256, None),
                     ("mai-scan --device cuda --decoder gpu (the GPU path)",
                      ["--device", "cuda", "--decoder", "gpu"], 256, gpu_scores)]
        rows, notes = [], {}
        for name, extra, bs, keep in runs:
            r = mai_scan(folder, model_dir, args.workers, bs, extra, keep)
            rows.append((name, r["rate"]))
            notes[name] = (f"{r['records']} records in {r['wall_s']:.1f} s, first after {r['first_s']:.1f} s, "
                           f"{r['steady_rate']:,.0f} img/s after it; peak RSS {r['rss_mib']:,.0f} MiB")
        if not gpu:
            rows.append((f"mai-scan --device cuda --decoder gpu ({why})", 0.0))
        _table(f"End to end: `mai-scan` on {len(files)} JPEGs of {w}x{h} (wall clock, start-up included)",
               rows, notes)
        if gpu_scores:
            common = sorted(set(cpu_scores) & set(gpu_scores))
            d = np.abs(np.array([cpu_scores[p] for p in common], float) - np.array([gpu_scores[p] for p in common],
                                                                                   float))
            print(f"\nGPU path vs CPU path scores on {len(common)} files: max |dp| {d.max():.2e}, "
                  f"mean {d.mean():.2e} (the CPU path decodes DCT-scaled and runs fp32; the GPU path "
                  "decodes at full size and runs fp16)")


if __name__ == "__main__":
    main()
