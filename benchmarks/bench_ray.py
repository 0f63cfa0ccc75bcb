"""Benchmark `mai-scan --engine ray` (Ray local mode) against the local process pool.

    python benchmarks/bench_ray.py --files 200                    # the real run
    python benchmarks/bench_ray.py --files 8 --size 640x480       # a smoke run

One run scans the same generated folder (benchmarks/bench_scan.py's generator
and model) with the real command, as a subprocess, start-up included:

1. `mai-scan --engine local --workers W` (W: one per CPU by default);
2. `mai-scan --engine ray --workers 1`, then `--workers 2` (Ray started locally
   by the command itself, as a user would run it);

and prints a table: records, wall time, images/s over the wall time and after
the first record (Ray's start-up, several seconds, is in the first number and
not in the second), and each row's ratio to the local pool from the same run.
Every number is from this one machine: multi-machine figures are not measured
here. `--gpus-per-worker X` gives the Ray workers GPUs (on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import bench_model, files_of, mai_scan, make_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200, help="camera-sized files")
    ap.add_argument("--size", default="4000x3000", help="JPEG size WxH")
    ap.add_argument("--png-every", type=int, default=10, help="every Nth file is a PNG (0: none)")
    ap.add_argument("--png-size", default="1600x1200", help="PNG size WxH")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local pool's decode processes")
    ap.add_argument("--ray-workers", default="1,2", help="Ray worker counts to run, comma-separated")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (0: CPU workers)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None, help="model folder or .onnx (default: the embedded model, else random)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = ap.parse_args()

    try:
        import ray  # noqa: F401 - only to fail early, with the fix
    except ImportError:
        raise SystemExit("Ray is not installed: pip install 'mai-detect[ray]'") from None
    size = tuple(int(v) for v in args.size.split("x"))
    png_size = tuple(int(v) for v in args.png_size.split("x"))
    model_path = bench_model(args.model)
    folder = make_folder(args.files, size, args.png_every, png_size, args.workers)
    n = len(files_of(folder))
    print(f"{n} files ({args.size} JPEG q90, every {args.png_every}th a {args.png_size} PNG), {os.cpu_count()} CPUs, "
          f"batch {args.batch_size}", flush=True)

    runs: list[tuple[str, dict]] = []
    runs.append((f"local pool, {args.workers} workers", mai_scan(folder, model_path, args.workers, args.batch_size)))
    gpu = ["--gpus-per-worker", f"{args.gpus_per_worker:g}"] if args.gpus_per_worker else ["--device", "cpu"]
    for w in [int(v) for v in args.ray_workers.split(",") if v.strip()]:
        res = mai_scan(folder, model_path, w, args.batch_size, extra=["--engine", "ray", *gpu])
        runs.append((f"ray local mode, {w} worker{'s' * (w > 1)}", res))

    base = runs[0][1]
    head = f"{'engine':<28}{'records':>8}{'wall s':>9}{'img/s':>9}{'first s':>9}{'after 1st':>11}{'x local':>9}" \
           f"{'x local (after 1st)':>21}"
    print(head)
    print("-" * len(head))
    for name, r in runs:
        ratio = r["rate"] / base["rate"] if base["rate"] else 0.0
        steady = r["steady_rate"] / base["steady_rate"] if base["steady_rate"] else 0.0
        print(f"{name:<28}{r['records']:>8}{r['wall_s']:>9.1f}{r['rate']:>9.1f}{r['first_s'] or 0:>9.2f}"
              f"{r['steady_rate']:>11.1f}{ratio:>9.2f}{steady:>21.2f}", flush=True)
    if any(r["records"] != n for _, r in runs):
        raise SystemExit(f"a run did not give one record per file ({n})")
    if args.json:
        print(json.dumps({"files": n, "cpus": os.cpu_count(), "runs": dict(runs)}))


if __name__ == "__main__":
    main()
