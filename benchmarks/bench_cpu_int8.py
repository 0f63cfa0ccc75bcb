"""The default model on the CPU: fp32 vs the static int8 backbone graph, side by side in one run.

    python benchmarks/bench_cpu_int8.py --data ../shared/data/modern-train.tar
    python benchmarks/bench_cpu_int8.py --parts model --rounds 3      # model-only, quick

Three parts, each interleaving the two precisions round by round (a noisy
neighbour slows both alike; figures are medians, with the best round beside):

1. model: `OnnxModel.predict` (backbone + head) on the same uint8 batches,
   images/s, fp32 vs int8 (`open_model(..., precision=...)`), at --threads;
2. scan: `mai-scan` end to end (a subprocess) on generated camera-sized JPEGs
   (4000x3000, q90; `bench_scan.make_folder`), with `--precision fp32` and
   `--precision int8` (the default picks int8 on a CPU with int8 dot products,
   fp32 elsewhere; the output says which): the marginal rate of a folder
   of --files and one of twice as many (start-up taken out), beside the
   model-only rate of the same precision, and the bound that the decode's own CPU
   cost sets when decode and model share the cores;
3. probe: the default model's metrics with each graph, on --data: ROC-AUC on val
   and on test_generator (its fakes against val's reals), accuracy at the stored
   threshold, and how many val verdicts (synthetic / uncertain / authentic, with
   the stored band) differ from fp32's, and the largest score change.

Every image is decoded and preprocessed once and fed to both graphs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import _cpu_name as cpu_name  # noqa: E402  (one CPU-name rule for every benchmark)

PRECISIONS = ("fp32", "int8")


def open_models(threads: int) -> dict[str, object]:
    from mai.session import open_model

    models = {p: open_model(None, "cpu", threads, log=lambda m: print(m, file=sys.stderr), precision=p)
              for p in PRECISIONS}
    for p, m in models.items():
        if m.precision != p:
            raise SystemExit(f"asked for {p}, got {m.precision}: is the int8 calibration file shipped?")
    return models


def model_only(models: dict, x: np.ndarray, rounds: int) -> dict[str, tuple[float, float]]:
    for m in models.values():
        m.predict(x)  # warm-up
    times: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(rounds):
        for p, m in models.items():
            t0 = time.perf_counter()
            m.predict(x)
            times[p].append(time.perf_counter() - t0)
    return {p: (len(x) / float(np.median(t)), len(x) / min(t)) for p, t in times.items()}


def decode_cost(folder: Path, spec: object, n: int = 16) -> float:
    """CPU seconds one file costs the scan's own decode (`scanner.decode.decode_file`:
    DCT-scaled JPEG decode, EXIF orientation, the model's preprocessing), on one
    thread, median over n files."""
    import bench_scan

    from scanner.decode import decode_file

    costs = []
    for path in bench_scan.files_of(folder)[:n]:
        t0 = time.process_time()
        decode_file(path, spec)
        costs.append(time.process_time() - t0)
    return float(np.median(costs))


def scan_part(files: int, workers: int, threads: int, batch: int, rounds: int) -> dict:
    """Each precision scans `files` and then 2 x `files` camera-sized JPEGs (the
    bigger folder holds the smaller one's files and as many more); the marginal rate,
    files / (wall(2 x files) - wall(files)), is the scan's pace with start-up (the
    interpreter, the model, the first batch) taken out."""
    import bench_scan

    from mai.artifact import default_model_dir, load_artifact
    from mai.session import precisions_for

    folders = [bench_scan.make_folder(n, (4000, 3000), 0, (0, 0), max(1, workers)) for n in (files, 2 * files)]
    default = str(default_model_dir())  # the model the model-only part opens (open_model(None, ...))
    home = os.environ.get("MAI_HOME") or tempfile.mkdtemp(prefix="mai-bench-home-")  # graphs built once
    # Both precisions by name, so a CPU whose default is fp32 (no int8 dot products)
    # still measures the int8 scan; which one the default picks is printed beside.
    out: dict = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for p in out:
            extra = ["--threads", str(threads), "--precision", p]
            small, big = (bench_scan.mai_scan(f, default, workers, batch, extra, home=home) for f in folders)
            out[p].append({"precision": p,
                           "marginal": files / max(big["wall_s"] - small["wall_s"], 1e-9), "rate": big["rate"]})
    out["default"] = precisions_for("cpu")[0]
    out["decode_s"] = decode_cost(folders[0], load_artifact(default).spec)
    return out


def probe_part(models: dict, data: str, batch: int) -> dict[str, dict]:
    from mai_train.data import open_dataset
    from mai_train.evaluate import decode_item
    from mai_train.metrics import roc_auc

    m0 = next(iter(models.values()))
    ds = open_dataset(data)
    sets = {"val": ds.split("val"),
            "test_generator": [it for it in ds.split("test_generator") if it.label == 1]
            + [it for it in ds.split("val") if it.label == 0]}
    out: dict[str, dict] = {}
    lo, hi = m0.uncertain

    def verdict(p: np.ndarray) -> np.ndarray:
        return np.where(p >= hi, 2, np.where(p <= lo, 0, 1)) if hi > lo else (p >= m0.threshold).astype(int)

    for name, items in sets.items():
        xs, ys = [], []
        for it in items:
            try:
                xs.append(decode_item(ds, it, m0.spec))
                ys.append(it.label)
            except Exception:  # noqa: BLE001 - unreadable items are skipped alike for both graphs
                continue
        x, y = np.stack(xs), np.asarray(ys)
        probs = {p: np.concatenate([m.predict(x[i:i + batch])[1] for i in range(0, len(x), batch)])
                 for p, m in models.items()}
        ref = probs["fp32"]
        for p, pr in probs.items():
            out.setdefault(p, {})[name] = {
                "n": len(y), "auc": roc_auc(pr, y), "acc": float(((pr >= m0.threshold) == y).mean()),
                "flips": int((verdict(pr) != verdict(ref)).sum()),
                "decision_flips": int(((pr >= m0.threshold) != (ref >= m0.threshold)).sum()),
                "max_dp": float(np.abs(pr - ref).max()), "mean_dp": float(np.abs(pr - ref).mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "modern-train.tar"))
    ap.add_argument("--parts", default="model,scan,probe")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=96, help="camera-sized JPEGs for the scan part")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="mai-scan --workers")
    ap.add_argument("--scan-rounds", type=int, default=2)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    import onnxruntime as ort

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; ONNX Runtime {ort.__version__}; "
          f"threads {args.threads}, batch {args.batch_size}")
    models = open_models(args.threads)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch_size, 224, 224, 3), dtype=np.uint8)
    rates = {}
    if "model" in parts or "scan" in parts:
        rates = model_only(models, x, args.rounds)
        print(f"\nmodel only (backbone + head), {args.rounds} interleaved rounds, images/s median (best):")
        for p, (med, best) in rates.items():
            print(f"  {p}: {med:6.2f} ({best:.2f})   x{med / rates['fp32'][0]:.2f} fp32")
    if "scan" in parts:
        res = scan_part(args.files, args.workers, args.threads, 32, args.scan_rounds)
        print(f"\nmai-scan end to end, {args.files} and {2 * args.files} JPEGs 4000x3000 q90, --workers "
              f"{args.workers} --threads {args.threads} --batch-size 32, {args.scan_rounds} interleaved rounds; "
              f"marginal rate = {args.files} / (wall({2 * args.files} files) - wall({args.files})):")
        decode_s = res.pop("decode_s")
        default_precision = res.pop("default")
        base = float(np.median([r["marginal"] for r in res["fp32"]]))
        for p, rs in res.items():
            rate = float(np.median([r["marginal"] for r in rs]))
            prec = rs[0]["precision"]
            tag = " (this CPU's default)" if p == default_precision else ""
            print(f"  --precision {p}{tag}: marginal {rate:5.2f} img/s, "
                  f"whole run of {2 * args.files} {np.median([r['rate'] for r in rs]):5.2f} img/s; "
                  f"x{rate / base:.2f} fp32 scan; {rate / rates[prec][0]:.2f} of model-only {prec}")
        # The scan decodes on the same cores the model runs on: each file costs the
        # model's core-seconds (threads / model-only rate) plus its decode's.
        cores = os.cpu_count() or 1
        print(f"  decode + preprocessing, one thread: {decode_s * 1000:.0f} ms a file; if the model's threads "
              f"were busy all the time, {cores} cores would scan about " + ", ".join(
                  f"{cores / (decode_s + args.threads / rates[p][0]):.2f} img/s {p} "
                  f"({cores / (decode_s + args.threads / rates[p][0]) / rates[p][0]:.2f} of model-only)"
                  for p in rates))
    if "probe" in parts:
        res = probe_part(models, args.data, args.batch_size)
        print(f"\nprobe metrics on {Path(args.data).name} (test_generator: its fakes vs val's reals):")
        for p, sets in res.items():
            for name, r in sets.items():
                print(f"  {p} {name:14s} n={r['n']:4d} ROC-AUC {r['auc']:.4f} acc {r['acc']:.4f} | vs fp32: "
                      f"verdicts changed {r['flips']} ({r['flips'] / r['n']:.1%}), decisions changed "
                      f"{r['decision_flips']}, max |dp| {r['max_dp']:.4f}, mean |dp| {r['mean_dp']:.4f}")


if __name__ == "__main__":
    main()
