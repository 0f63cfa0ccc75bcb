"""fp16 against fp32 scores of a model on a data set's split, as mai-scan computes them.

    python benchmarks/fp16_parity.py --data modern-train.tar --split val                # the default probe
    python benchmarks/fp16_parity.py --model mai-cnn-cifake --data cifake-train.tar --split val
    python benchmarks/fp16_parity.py --model mai-cnn-cifake --data cifake-train.tar --split val \\
        --reference old.fp32.onnx --precisions fp32,fp16        # the shipped int8 form against a file

The model opens through `mai.session.open_model` once per precision (on --device;
fp16 runs on the CPU provider too, slower), the split's images are decoded by the
model's own spec (`mai_train.evaluate.decode_item`), and each precision's scores are
compared with the reference: the model in fp32, or `--reference` (any MAI .onnx
file). Prints max and mean |dp|, verdict flips at the model's threshold, accuracy,
and seconds per precision. Needs the data set; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder, file or shipped name (default: the default model)")
    ap.add_argument("--data", required=True, help="data set (folder, .tar, manifest)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precisions", default="fp16", help="comma-separated precisions to compare with the reference")
    ap.add_argument("--reference", default=None, help="an .onnx file to compare against (default: the model in fp32)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="the first N images of the split only")
    args = ap.parse_args()

    from mai.session import open_model
    from mai_train.data import open_dataset
    from mai_train.evaluate import decode_item

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    ref = (open_model(args.reference, args.device, args.threads, log) if args.reference
           else open_model(args.model, args.device, args.threads, log, precision="fp32"))
    models = {p: open_model(args.model, args.device, args.threads, log, precision=p)
              for p in args.precisions.split(",")}
    ds = open_dataset(args.data)
    items = ds.split(args.split)[: args.limit]
    labels = np.array([it.label for it in items])
    scores: dict[str, list[np.ndarray]] = {"reference": [], **{p: [] for p in models}}
    spent = dict.fromkeys(scores, 0.0)
    for i in range(0, len(items), args.batch_size):
        x = np.stack([decode_item(ds, it, ref.spec) for it in items[i:i + args.batch_size]])
        for name, m in (("reference", ref), *models.items()):
            t = time.perf_counter()
            scores[name].append(m.predict(x)[1])
            spent[name] += time.perf_counter() - t
    want = np.concatenate(scores["reference"])
    thr = ref.threshold
    print(f"# {ds.name} split {args.split}: {len(items)} images; reference {ref.describe()}; device {args.device}")
    print("| model | max abs dp | mean abs dp | verdict flips | accuracy (reference) | seconds |")
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        got = np.concatenate(scores[name])
        d = np.abs(got - want)
        print(f"| {m.describe()} | {d.max():.2e} | {d.mean():.2e} | {int(((got >= thr) != (want >= thr)).sum())} "
              f"| {((got >= thr) == labels).mean():.4f} ({((want >= thr) == labels).mean():.4f}) "
              f"| {spent[name]:.0f} ({spent['reference']:.0f}) |")


if __name__ == "__main__":
    main()
