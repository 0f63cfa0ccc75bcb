"""Benchmark `mai-scan` against the decode floor and a naive scanner, and its memory.

    python benchmarks/bench_scan.py --files 200            # the throughput part
    python benchmarks/bench_scan.py --files 4 --memory-sizes 20,40   # a smoke run

One run measures, on the same generated folder and the same number of worker
processes:

1. the decode floor: a Pillow full decode (`convert("RGB")`) of every file in a
   process pool, nothing else;
2. a naive scanner: open, `prepare` (no DCT scaling), infer one image at a time;
3. `mai-scan` itself, as a subprocess (start-up included), with the time to its
   first record;

and prints images/s and the ratios (targets on a 2-core machine: mai-scan at
least 3x the naive scanner and at least 0.9x the decode floor). It also reports
how much DCT scaling moves scores on these JPEGs (max and mean |dp|), and the
peak memory of the scan (its process tree: RSS summed, and PSS when the kernel
offers it) on folders of 1,000 and 10,000 tiny JPEGs: it should not grow with
the number of files.

The folders are generated deterministically (photo-like content: smooth noise,
gradients and grain, since flat colour decodes unrealistically fast) and cached
under the temp folder, keyed by their parameters. Without --model, a randomly
initialised MAI CNN is exported once into the cache (needs the train extra): its
speed is the real model's, its scores are not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data

def photo_like(w: int, h: int, seed: int) -> Image.Image:
    """Smooth structures, a gradient and sensor-like grain: compresses and decodes like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 50, (max(2, h // 64), max(2, w // 64), 3)).clip(0, 255).astype(np.uint8)
    mid = rng.normal(0, 18, (max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    base += np.asarray(Image.fromarray((mid + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                       dtype=np.float32) - 128
    base += np.linspace(-20, 20, w, dtype=np.float32)[None, :, None]
    base += rng.normal(0, 4, (h, w, 1)).astype(np.float32)  # grain
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def _write_one(args: tuple[str, int, int, int, str]) -> None:
    path, w, h, seed, fmt = args
    if os.path.exists(path):
        return
    im = photo_like(w, h, seed)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 6}))
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def make_folder(n: int, size: tuple[int, int], png_every: int, png_size: tuple[int, int], workers: int) -> Path:
    """Cached: the same parameters give the same folder, generated once."""
    key = hashlib.sha1(json.dumps([n, size, png_every, png_size, 2]).encode()).hexdigest()[:10]
    d = Path(tempfile.gettempdir()) / f"mai-bench-{n}-{size[0]}x{size[1]}-{key}"
    done = d / ".complete"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        png = png_every > 0 and i % png_every == png_every - 1
        w, h = png_size if png else size
        jobs.append((str(d / f"img_{i:06d}.{'png' if png else 'jpg'}"), w, h, i, "PNG" if png else "JPEG"))
    t0 = time.monotonic()
    print(f"generating {n} files in {d} ...", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max(1, workers)) as ex:
        list(ex.map(_write_one, jobs, chunksize=8))
    done.write_text("ok")
    print(f"  generated in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return d


def files_of(d: Path) -> list[str]:
    return sorted(str(p) for p in d.iterdir() if p.suffix in (".jpg", ".png"))


def bench_model(model: str | None) -> str:
    if model:
        return model
    from mai.artifact import default_model_dir

    if any(default_model_dir().glob("model.*.onnx")):
        return str(default_model_dir())
    d = Path(tempfile.gettempdir()) / "mai-bench-model" / "bench-cnn"
    if not (d / "model.fp32.onnx").exists():
        print("exporting a random MAI CNN for the benchmark ...", file=sys.stderr, flush=True)
        import torch

        from export.onnx import export_onnx
        from mai.preprocess import CIFAKE_SPEC
        from mai_train.checkpoint import save_artifact
        from mai_train.registry import create_model

        torch.manual_seed(0)
        meta = {"name": "bench-cnn", "architecture": {"name": "mai_cnn", "args": {}},
                "preprocess": CIFAKE_SPEC.to_dict(), "threshold": 0.5, "uncertain": [0.4, 0.6],
                "calibration": {}, "metrics": {}, "data": {}, "train": {}}
        save_artifact(d, create_model("mai_cnn"), meta, "bench-cnn")
        export_onnx(d, ("fp32",))
    return str(d)


# ----------------------------------------------------------------------------- measurements

def _full_decode(path: str) -> int:
    with Image.open(path) as im:
        return im.convert("RGB").size[0]


def decode_floor(files: list[str], workers: int) -> float:
    from scanner.decode import init_worker

    with ProcessPoolExecutor(max(1, workers), initializer=init_worker) as ex:
        list(ex.map(_full_decode, files[:2]))  # start the workers outside the clock
        t0 = time.monotonic()
        list(ex.map(_full_decode, files, chunksize=2))
        return len(files) / (time.monotonic() - t0)


def naive(files: list[str], model_path: str) -> float:
    from mai.preprocess import prepare
    from mai.session import open_model

    model = open_model(model_path, "cpu")
    t0 = time.monotonic()
    for p in files:
        with Image.open(p) as im:
            x = prepare(im, model.spec)
        model.predict(x[None])
    return len(files) / (time.monotonic() - t0)


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled from /proc
    (psutil when installed). RSS counts shared pages once per process; PSS
    shares them out, so it is the honest total."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        try:
            import psutil

            p = psutil.Process(self.pid)
            return [self.pid, *(c.pid for c in p.children(recursive=True))]
        except ImportError:
            pass
        except Exception:  # noqa: BLE001 - the process ended
            return []
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                    parents.setdefault(ppid, []).append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(parents.get(p, []))
        return out

    @staticmethod
    def _kb(path: str, field: str) -> int:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self._tree()
            rss = sum(self._kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
            pss = sum(self._kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.every_s)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._t.join()
        return self.peak_rss / 1024, self.peak_pss / 1024  # MiB


def mai_scan(folder: Path, model_path: str, workers: int, batch_size: int, extra: list[str] = (),
             scores: dict[str, float | None] | None = None, home: str | None = None) -> dict:
    """Run the real command; count records on its stdout (and keep path -> CNN score in `scores`).
    `home` is its MAI_HOME (default: a fresh one; a probe model's backbone graph is cached there)."""
    env = dict(os.environ, MAI_HOME=home or tempfile.mkdtemp(prefix="mai-bench-home-"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "scanner.cli", str(folder), "--model", model_path, "--jsonl", "-", "-q",
           "--no-state", "--workers", str(workers), "--batch-size", str(batch_size), *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    mem = TreeMemory(proc.pid)
    first, n, errors = None, 0, 0
    for line in proc.stdout:
        if first is None:
            first = time.monotonic() - t0
        n += 1
        errors += b'"verdict": "error"' in line
        if scores is not None:
            rec = json.loads(line)
            scores[rec["path"]] = rec["scores"]["cnn"]
    rc = proc.wait()
    wall = time.monotonic() - t0
    rss, pss = mem.stop()
    log = proc.stderr.read().decode()
    if rc not in (0, 3):
        raise SystemExit(f"mai-scan failed ({rc}): {log[-2000:]}")
    steady = (n - 1) / (wall - first) if first is not None and n > 1 and wall > first else 0.0
    return {"records": n, "errors": errors, "wall_s": wall, "rate": n / wall, "steady_rate": steady,
            "first_s": first, "rss_mib": rss, "pss_mib": pss, "log": log}


def draft_effect(files: list[str], model_path: str, limit: int = 50) -> tuple[float, float, int]:
    from mai.session import open_model
    from scanner.engine import score_batch

    model = open_model(model_path, "cpu")
    jpgs = [f for f in files if f.endswith(".jpg")][:limit]
    if not jpgs:
        return 0.0, 0.0, 0
    a = [r["scores"]["cnn"] for r in score_batch(jpgs, model, draft=True)]
    b = [r["scores"]["cnn"] for r in score_batch(jpgs, model, draft=False)]
    d = np.abs(np.asarray(a) - np.asarray(b))
    return float(d.max()), float(d.mean()), len(jpgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200, help="camera-sized files for the throughput part")
    ap.add_argument("--size", default="4000x3000", help="JPEG size WxH")
    ap.add_argument("--png-every", type=int, default=10, help="every Nth file is a PNG (0: none)")
    ap.add_argument("--png-size", default="1600x1200", help="PNG size WxH")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None, help="model folder or .onnx (default: the embedded model, else random)")
    ap.add_argument("--memory-sizes", default="1000,10000", help="tiny-JPEG folder sizes, memory part ('' skips)")
    ap.add_argument("--naive-limit", type=int, default=40, help="files the (slow) naive scanner times")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = ap.parse_args()

    size = tuple(int(v) for v in args.size.split("x"))
    png_size = tuple(int(v) for v in args.png_size.split("x"))
    model_path = bench_model(args.model)
    folder = make_folder(args.files, size, args.png_every, png_size, args.workers)
    files = files_of(folder)
    res: dict = {"files": len(files), "workers": args.workers, "cpus": os.cpu_count(), "model": model_path}

    print(f"{len(files)} files ({args.size} JPEG q90, every {args.png_every}th a {args.png_size} PNG), "
          f"{args.workers} workers, {os.cpu_count()} CPUs", flush=True)
    res["floor"] = decode_floor(files, args.workers)
    print(f"decode floor (Pillow full decode, pool): {res['floor']:8.1f} images/s", flush=True)
    naive_files = files[: max(1, args.naive_limit)]
    res["naive"] = naive(naive_files, model_path)
    print(f"naive scanner (one at a time, {len(naive_files)} files): {res['naive']:8.1f} images/s", flush=True)
    scan = mai_scan(folder, model_path, args.workers, args.batch_size)
    res["scan"] = scan
    print(f"mai-scan (wall, start-up included):     {scan['rate']:8.1f} images/s  "
          f"first record after {scan['first_s'] or 0:.2f} s, peak RSS {scan['rss_mib']:.0f} MiB "
          f"(PSS {scan['pss_mib']:.0f} MiB)", flush=True)
    print(f"  after the first record (start-up excluded): {scan['steady_rate']:.1f} images/s", flush=True)
    print(f"  ratios: {scan['rate'] / res['naive']:.2f}x naive (target >= 3), "
          f"{scan['rate'] / res['floor']:.2f}x decode floor (target >= 0.9)", flush=True)
    dmax, dmean, dn = draft_effect(files, model_path)
    res["draft_effect"] = {"max": dmax, "mean": dmean, "n": dn}
    print(f"  DCT scaling moves scores by max {dmax:.2e}, mean {dmean:.2e} |dp| over {dn} JPEGs", flush=True)

    res["memory"] = {}
    for n in [int(v) for v in args.memory_sizes.split(",") if v.strip()]:
        tiny = make_folder(n, (64, 48), 0, (0, 0), args.workers)
        m = mai_scan(tiny, model_path, args.workers, args.batch_size)
        res["memory"][n] = m
        print(f"memory, {n:>6} tiny JPEGs: peak RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB, "
              f"{m['rate']:.0f} images/s, {m['records']} records", flush=True)
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
