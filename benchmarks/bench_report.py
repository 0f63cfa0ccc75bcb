"""What `--html` costs a scan, and whether a 100,000-record report opens.

    python benchmarks/bench_report.py --files 200 --models mai-cnn-cifake --repeats 3
    python benchmarks/bench_report.py --files 40 --models mai-clip-wild --repeats 2
    python benchmarks/bench_report.py --files 0 --page-records 100000     # the browser part only

1. Overhead: `mai-scan` as a subprocess (start-up included, `--no-state`, records
   to a JSON Lines file) on the same generated folder (bench_scan.py's photo-like
   4000x3000 JPEGs, every 10th file a 1600x1200 PNG), without `--html`, with
   `--html` (thumbnails auto: within their CPU budget), `--html-thumbs all`
   and `--html-thumbs none`, interleaved run by run; the median of each and
   its ratio to the run without, side by side; and how many thumbnails auto
   made (one more run).
2. The page at scale: `--page-records N` writes a report of N made-up records
   (no image files, so no thumbnails; paths, scores, provenance and error
   records varied), times the writer, then loads the page in headless Chromium
   (`--dump-dom` after the page's script ran): the wall time of the whole
   browser run, the time the page's own script reports until the first page of
   cards was on screen, and checks that 200 cards, the page count and a filter
   given in the URL (`#verdict=synthetic&page=N`) are right.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def scan_seconds(folder: Path, model: str, workers: int, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "scanner.cli", str(folder), "--model", model, "--no-state", "-q",
           "--workers", str(workers), "--jsonl", str(out / "out.jsonl"), *extra]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=out, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def overhead(folder: Path, model: str, workers: int, repeats: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        variants = {"no --html": [], "--html (thumbnails auto)": ["--html", str(out / "r.html")],
                    "--html --html-thumbs all": ["--html", str(out / "a.html"), "--html-thumbs", "all"],
                    "--html --html-thumbs none": ["--html", str(out / "n.html"), "--html-thumbs", "none"]}
        scan_seconds(folder, model, workers, out, [])  # warm-up: graphs built once, page cache filled
        times: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(repeats):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(scan_seconds(folder, model, workers, out, variants[name]))
                print(f"  {model} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
        return times


def thumbs_made(folder: Path, model: str, workers: int) -> str:
    """How many thumbnails auto made in one more run (its report's summary)."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        scan_seconds(folder, model, workers, Path(tmp), ["--html", str(Path(tmp) / "r.html")])
        html = (Path(tmp) / "r.html").read_text()
        s = json.loads(re.search(r'id="mai-summary">(.*?)</script>', html, re.S).group(1))
    made = s["total"] - s["thumbs_skipped"]
    return f"{made} of {s['total']} thumbnails, {s['thumbs_cpu_s']:.1f} CPU s"


def fake_records(n: int, seed: int = 0):
    from scanner.records import Decision, error_record, make_record

    rng = random.Random(seed)
    d = Decision.make(0.5, (0.4, 0.6))
    gens = ["AUTOMATIC1111", "ComfyUI", "NovelAI", None]
    for i in range(n):
        path = f"/data/photos/album{i // 500:03d}/IMG_{i:06d}.jpg"
        if i % 97 == 0:
            yield error_record(path, "decode", "corrupt JPEG: its header cannot be read", model="bench@00000000")
            continue
        prov = []
        if i % 23 == 0:
            prov.append({"signal": "png:parameters", "where": "PNG tEXt", "generator": rng.choice(gens), "ai": True})
        if i % 51 == 0:
            prov.append({"signal": "c2pa:manifest", "where": "C2PA manifest", "generator": "Adobe Firefly",
                         "ai": bool(i % 2)})
        facts = {"scores": {"cnn": rng.betavariate(0.6, 1.6), "vlm": None}, "provenance": prov,
                 "width": 4000, "height": 3000, "format": "JPEG", "bytes": 3_000_000 + i}
        yield make_record(path, model="bench@00000000", facts=facts, decision=d)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def dump_dom(browser: str, url: str, timeout: float = 300) -> tuple[str, float]:
    t0 = time.monotonic()
    r = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=10000",
                        "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    return r.stdout, time.monotonic() - t0


def page_check(n: int) -> None:
    from scanner.report import ReportWriter

    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "big.html")
        t0 = time.monotonic()
        w = ReportWriter(target, roots=["/data/photos"], thumbs="none",
                         models=[{"id": "bench@00000000", "threshold": 0.5, "band": [0.4, 0.6]}])
        synthetic = 0
        for rec in fake_records(n):
            synthetic += rec["verdict"] == "synthetic"
            w.write(rec)
        w.close()
        write_s = time.monotonic() - t0
        size = os.path.getsize(target)
        print(f"page: {n:,} records written in {write_s:.1f} s ({write_s / n * 1e6:.0f} us a record), "
              f"{size / 1e6:.1f} MB")
        browser = chromium()
        if browser is None:
            print("page: no Chromium found (apt-get install chromium); the browser part is skipped")
            return
        url = Path(target).as_uri()
        dom, wall = dump_dom(browser, url)
        cards = dom.count('class="card ')
        ms = re.search(r'data-load-ms="(\d+)"', dom)
        pages = re.search(r"page 1 of ([\d,]+)", dom)
        print(f"page: opened in headless Chromium in {wall:.1f} s wall (browser start included); the page's script "
              f"had the first page on screen {int(ms.group(1)) / 1000 if ms else float('nan'):.1f} s after the "
              f"navigation; {cards} cards, page 1 of {pages.group(1) if pages else '?'}")
        assert cards == 200 and pages and int(pages.group(1).replace(",", "")) == -(-n // 200), (cards, pages)
        last = -(-synthetic // 200)
        dom, wall = dump_dom(browser, f"{url}#verdict=synthetic&page={last}")
        shown = re.search(r'id="shown-count">([\d,]+)<', dom)
        cards = dom.count('class="card v-synthetic"')
        print(f"page: #verdict=synthetic&page={last}: {shown.group(1) if shown else '?'} shown "
              f"({synthetic:,} expected), {cards} cards on the last page, {wall:.1f} s wall")
        assert shown and int(shown.group(1).replace(",", "")) == synthetic
        assert cards == synthetic - (last - 1) * 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200, help="camera-sized files for the overhead part (0: skip)")
    ap.add_argument("--models", default="mai-cnn-cifake", help="comma-separated --model values")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--page-records", type=int, default=0, help="records for the browser part (0: skip)")
    args = ap.parse_args()

    if args.files:
        from bench_scan import make_folder

        folder = make_folder(args.files, (4000, 3000), 10, (1600, 1200), args.workers)
        print("| model | files | without --html | --html (thumbnails auto) | --html-thumbs all | --html-thumbs none |")
        print("|---|---|---|---|---|---|")
        for model in args.models.split(","):
            t = overhead(folder, model, args.workers, args.repeats)
            base, auto, every, none = (statistics.median(v) for v in t.values())
            print(f"| {model} | {args.files} | {base:.2f} s | {auto:.2f} s, **{auto / base:.3f}x** "
                  f"({thumbs_made(folder, model, args.workers)}) | {every:.2f} s, {every / base:.3f}x | "
                  f"{none:.2f} s, {none / base:.3f}x |", flush=True)
    if args.page_records:
        page_check(args.page_records)


if __name__ == "__main__":
    main()
