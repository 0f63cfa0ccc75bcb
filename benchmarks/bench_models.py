"""Scan throughput of the shipped models side by side, and where the time goes.

    python benchmarks/bench_models.py --files 40                       # camera-sized JPEGs
    python benchmarks/bench_models.py --files 60 --size 640x480        # web-sized

One run, on the same generated folder (benchmarks/bench_scan.py's photo-like
files) and the same worker count, for each model (default: the CLIP probe
`mai-clip-modern` and the CIFAKE CNN `mai-cnn-cifake`):

1. `mai-scan` itself, as a subprocess: images/s over the whole run and after its
   first record (the model's start-up, including the probe's backbone, is outside
   the second figure; the backbone's fp32 graph is built before timing);
2. its parts, in this process: decode + `prepare` by the model's spec per image on
   one core (DCT scaling where the spec allows it, as mai-scan does), model
   inference per image on all cores, and the largest change DCT scaling makes to a
   score on these files (against a full decode, as `--no-draft` scans).

Prints a table with each model's ratio to the first one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import files_of, mai_scan, make_folder  # noqa: E402


def parts(files: list[str], model_name: str, batch: int, threads: int) -> dict[str, float]:
    from PIL import Image

    from mai.preprocess import draft_size, prepare
    from mai.session import open_model

    model = open_model(model_name, "cpu", threads)
    spec = model.spec
    t0 = time.perf_counter()
    arrays = []
    for f in files:
        with Image.open(f) as im:
            if im.format == "JPEG" and (ds := draft_size(spec, im.size)):
                im.draft("RGB", ds)
            arrays.append(prepare(im, spec))
    decode_s = (time.perf_counter() - t0) / len(files)
    x = np.stack(arrays)
    # What DCT scaling (on by default, --no-draft turns it off) moves the scores by.
    full = []
    for f in files:
        with Image.open(f) as im:
            full.append(prepare(im, spec))
    draft_dp = float(np.max(np.abs(model.predict(x)[1] - model.predict(np.stack(full))[1])))
    model.predict(x[:batch])  # warm-up
    t0 = time.perf_counter()
    n = 0
    while n < len(x):
        model.predict(x[n:n + batch])
        n += batch
    infer_s = (time.perf_counter() - t0) / len(x)
    return {"decode_ms": decode_s * 1e3, "infer_ms": infer_s * 1e3, "draft_dp": draft_dp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--size", default="4000x3000", help="JPEG size WxH")
    ap.add_argument("--models", default="mai-clip-modern,mai-cnn-cifake")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    folder = make_folder(args.files, (w, h), 0, (w, h), args.workers)
    files = files_of(folder)
    home = Path(os.environ.get("MAI_HOME") or Path.home() / ".mai")
    from mai.session import usable_default  # builds the backbone's graph now, outside the timings

    usable_default(lambda line: print(line, file=sys.stderr))
    rows = []
    for name in args.models.split(","):
        scan = mai_scan(folder, name, args.workers, args.batch_size, home=str(home))
        p = parts(files[: min(len(files), 16)], name, min(args.batch_size, 16), os.cpu_count() or 1)
        rows.append((name, scan, p))
        print(f"{name}: {scan['rate']:.2f} images/s wall, {scan['steady_rate']:.2f} after the first record; "
              f"decode+prepare {p['decode_ms']:.0f} ms/image (one core), inference {p['infer_ms']:.0f} ms/image "
              f"(all cores)", file=sys.stderr, flush=True)
    base = rows[0][1]["rate"]
    print(f"{args.files} JPEGs {w}x{h}, {args.workers} decode workers, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    print("| model | images/s (wall) | after first record | ratio to first | decode+prepare ms/image | "
          "inference ms/image | max \\|dp\\| from DCT scaling |")
    print("|---|---|---|---|---|---|---|")
    for name, scan, p in rows:
        print(f"| {name} | {scan['rate']:.2f} | {scan['steady_rate']:.2f} | {scan['rate'] / base:.2f}x | "
              f"{p['decode_ms']:.0f} | {p['infer_ms']:.0f} | {p['draft_dp']:.3f} |")


if __name__ == "__main__":
    main()
