"""The GPU scan path, measured on the machine it runs on: model only, decode, end to end.

    python benchmarks/bench_gpu.py                       # on a GPU machine (the gpu extra for the decode table)
    python benchmarks/bench_gpu.py --files 8 --size 640x480 --batch-sizes 8 --cpu-batch-sizes 8 \
        --seconds 0.3 --stand-in-cpu                     # a smoke run on a CPU machine

Three tables, each as images/s and the ratio to the slowest row of its table:

1. Model only, for each model (`--models`: the default CLIP probe and the CIFAKE
   CNN): ONNX Runtime CUDA fp16 and fp32 (host batches, and fp16 from device memory
   through IO binding, as the GPU scan path feeds it) at batch sizes up to 1024,
   against the CPU provider in fp32 at small batches (`--cpu-batch-sizes`), all
   through `mai.session.open_model` (`precision=` picks fp32 on CUDA; the probe's
   backbone graphs are built before timing). Engines are interleaved round by round
   (`bench_model.measure`).
2. Decode: the CPU path's decoder (`scanner.decode.decode_chunk`) in a pool of
   one process per core, DCT-scaled (mai-scan's default) and at full size,
   against the GPU path's readers plus nvJPEG and resizing on the device
   (`scanner.gpu.GpuStage`, needs torch), on the same generated folder of camera-sized JPEGs.
3. End to end, for each model: the real `mai-scan` command (a subprocess,
   start-up included) on that folder: the CPU path (`--device cpu`), CPU decode
   feeding the model on CUDA (`--device cuda --decoder cpu`) and the GPU path
   (`--device cuda --decoder gpu`), plus how far the GPU path's scores are from
   the CPU path's. Every scan shares one MAI_HOME (`--home`), so graphs are built once, outside the clock.

Where no GPU works, the GPU rows are reported as not measured and the CPU rows
still run; `--stand-in-cpu` runs the "CUDA" engines on the CPU instead (checks the
script, measures nothing about GPUs). The folder is generated once and cached under
the temp folder (benchmarks/bench_scan.py's generator: photo-like content at quality 90).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import _cpu_name, measure  # noqa: E402
from bench_scan import files_of, mai_scan, make_folder  # noqa: E402


def _gpu_info() -> tuple[str, str | None]:
    """A line naming the GPU, driver and versions; None for `why` when a GPU works.
    ONNX Runtime decides (its CUDA provider must really load); torch is optional."""
    import onnxruntime as ort

    from mai.session import gpu_providers

    versions = f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    try:
        import torch
        import torchvision

        versions = f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, " \
                   + versions
    except ImportError:
        versions = "no torch, " + versions
    providers, why = gpu_providers(ort)
    if not providers:
        return f"no GPU; {versions}", why
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    gpu = out.stdout.strip().splitlines()[0] if out and out.returncode == 0 and out.stdout.strip() else "?"
    return f"GPU {gpu} (name, driver, memory); {versions}", None


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

def _bound(model: object) -> Callable[[np.ndarray], object]:
    """`predict_bound` on a batch uploaded once per batch size (the GPU scan path decodes on the device)."""
    import onnxruntime as ort

    cache: dict[str, object] = {}

    def run(x: np.ndarray) -> object:
        if cache.get("shape") != x.shape:
            cache["v"], cache["shape"] = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0), x.shape
        return model.predict_bound(cache["v"].data_ptr(), x.shape, "cuda", 0)

    return run


def model_only(model: str | None, batch_sizes: list[int], cpu_batch_sizes: list[int], seconds: float,
               threads: int, gpu: bool, stand_in: bool) -> None:
    from mai.session import open_model

    t0 = time.perf_counter()
    cpu = open_model(model, "cpu", threads, precision="fp32")
    eng: dict[str, Callable[[np.ndarray], object]] = {}
    if gpu or stand_in:
        where = "cuda" if gpu else "cuda stand-in on the CPU"
        for prec in ("fp16", "fp32"):
            m = open_model(model, "cuda" if gpu else "cpu", threads, precision=prec)
            eng[f"onnxruntime {prec} {where}"] = m.predict
            if gpu and prec == "fp16":
                eng[f"onnxruntime {prec} {where}, IO binding"] = _bound(m)
    cpu_name = "onnxruntime fp32 cpu"
    eng[cpu_name] = cpu.predict
    w, h = cpu.spec.input_size
    print(f"\n### Model only: {cpu.model_id} (uint8 {w}x{h} batches; opened in {time.perf_counter() - t0:.1f} s)\n")
    print("| batch | engine | images/s | ratio to slowest |")
    print("|---|---|---|---|")
    for bs in batch_sizes:
        at = {k: v for k, v in eng.items() if k != cpu_name or bs in cpu_batch_sizes}
        for b, name, rate, ratio in measure(at, [bs], seconds, (w, h)):
            print(f"| {b} | {name} | {rate:,.0f} | {ratio:.2f}x |", flush=True)


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

def _scans(folder: Path, model: str, workers: int, gpu: bool, why: str | None, home: str) -> None:
    cpu_scores: dict = {}
    gpu_scores: dict = {}
    runs = [("mai-scan --device cpu (the CPU path)", ["--device", "cpu"], 32, cpu_scores)]
    if gpu:
        runs += [("mai-scan --device cuda --decoder cpu", ["--device", "cuda", "--decoder", "cpu"], 256, None),
                 ("mai-scan --device cuda --decoder gpu (the GPU path)",
                  ["--device", "cuda", "--decoder", "gpu"], 256, gpu_scores)]
    rows, notes = [], {}
    for name, extra, bs, keep in runs:
        r = mai_scan(folder, model, workers, bs, extra, keep, home=home)
        rows.append((name, r["rate"]))
        notes[name] = (f"{r['records']} records in {r['wall_s']:.1f} s, first after {r['first_s']:.1f} s, "
                       f"{r['steady_rate']:,.0f} img/s after it; peak RSS {r['rss_mib']:,.0f} MiB")
    if not gpu:
        rows.append((f"mai-scan --device cuda ({why})", 0.0))
    files = files_of(folder)
    _table(f"End to end: `mai-scan --model {model}` on {len(files)} files of {folder.name} "
           "(wall clock, start-up included)", rows, notes)
    if gpu_scores:
        common = sorted(set(cpu_scores) & set(gpu_scores))
        d = np.abs(np.array([cpu_scores[p] for p in common], float) - np.array([gpu_scores[p] for p in common], float))
        print(f"\nGPU path vs CPU path scores on {len(common)} files: max |dp| {d.max():.2e}, "
              f"mean {d.mean():.2e} (the CPU path decodes DCT-scaled and runs fp32; the GPU path "
              "decodes at full size and runs fp16)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,mai-cnn-cifake",
                    help="comma-separated models (folders, files or shipped names; `default`: the default model)")
    ap.add_argument("--files", type=int, default=500, help="JPEGs in the generated folder")
    ap.add_argument("--size", default="4000x3000", help="their size, WxH (camera-sized by default)")
    ap.add_argument("--batch-sizes", default="32,256,1024", help="model-only batch sizes")
    ap.add_argument("--cpu-batch-sizes", default="32", help="model-only batch sizes for the CPU provider")
    ap.add_argument("--seconds", type=float, default=2.0, help="model-only time per engine and batch size")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU decode processes and threads")
    ap.add_argument("--home", default=os.environ.get("MAI_HOME") or tempfile.mkdtemp(prefix="mai-bench-home-"),
                    help="MAI_HOME for every scan (default: $MAI_HOME): graphs are built once, outside the clock")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: model,decode,scan")
    ap.add_argument("--stand-in-cpu", action="store_true",
                    help="run the CUDA engines and the GPU path's decode on the CPU (checks the script, measures "
                         "nothing about GPUs)")
    args = ap.parse_args()
    os.environ["MAI_HOME"] = args.home
    skip = set(filter(None, args.skip.split(",")))
    models = [None if m == "default" else m for m in args.models.split(",")]
    w, h = (int(v) for v in args.size.lower().split("x"))
    info, why = _gpu_info()
    gpu = why is None
    print(f"# {platform.node()}: {_cpu_name()}, {os.cpu_count()} cores; {info}")
    print(f"# python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    from mai.session import open_model, usable_default

    paths = [str(usable_default(lambda line: print(f"# {line}"))) if m is None else m for m in models]

    if "model" not in skip:
        for m in paths:
            model_only(m, [int(b) for b in args.batch_sizes.split(",")],
                       [int(b) for b in args.cpu_batch_sizes.split(",")], args.seconds, args.workers, gpu,
                       args.stand_in_cpu)
    if not skip >= {"decode", "scan"}:
        folder = make_folder(args.files, (w, h), 0, (w, h), args.workers)
        files = files_of(folder)
    if "decode" not in skip:
        spec_json = open_model(paths[0], "cpu").spec.to_json()
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
        _table(f"Decode + preprocess to {paths[0]}'s input, {len(files)} JPEGs of {w}x{h} ({w * h / 1e6:.0f} MP)",
               rows)
    if "scan" not in skip:
        for m in paths:
            _scans(folder, m, args.workers, gpu, why, args.home)


if __name__ == "__main__":
    main()
