"""Which probe head on the `layers` feature (blocks 7-12): logistic regression or a
one-hidden-layer MLP, and how wide. Chosen by leave-one-generator-out ROC-AUC on the
training generators (each generator's fakes left out of training in turn, scored
against its own data set's validation reals), never by a test set; the held-out
test columns are printed beside it for the record.

    python benchmarks/head_study.py --shared ../shared/data --wild /path/to/wild

Training data as the default model's (modern-train + wild + 1,200 CIFAKE at weight
0.2, clean copies only here), cached features (`mai train probe` fills the cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_study import Study, cat, fakes_vs_reals  # noqa: E402

from mai_train import metrics  # noqa: E402
from mai_train.probe import MlpConfig, fit_logistic, fit_mlp  # noqa: E402
from mai_train.train_probe import MIN_HELD_OUT, Pool, parse_blocks  # noqa: E402

SELECT = parse_blocks("7-12", 12)


def fitter(kind: str, size: float):
    if kind == "linear":
        return lambda p: fit_logistic(p.x, p.labels, size, blocks=12, select=SELECT, weight=p.weight)
    return lambda p: fit_mlp(p.x, p.labels, MlpConfig(hidden=int(size)), blocks=12, select=SELECT, weight=p.weight)


def folds(tr: Pool):
    """(generator, its training fakes as a mask, the data sets it comes from) for each
    generator with enough fakes to leave out, and enough others left in its data sets."""
    fakes = tr.labels == 1
    for g in sorted(set(tr.generator[fakes])):
        out = fakes & (tr.generator == g)
        home = sorted(set(tr.dataset[out]))
        if out.sum() >= MIN_HELD_OUT and (fakes & ~out & np.isin(tr.dataset, home)).sum() >= MIN_HELD_OUT:
            yield g, out, home


def logo(fit, tr: Pool, val: Pool) -> list[float]:
    """ROC-AUC of each training generator's fakes under a head trained without it."""
    aucs = []
    for g, out, home in folds(tr):
        head = fit(tr.rows(~out))
        unseen = np.concatenate([head.prob(tr.x[out]), head.prob(val.x[(val.labels == 1) & (val.generator == g)])])
        reals = head.prob(val.x[(val.labels == 0) & np.isin(val.dataset, home)])
        aucs.append(metrics.roc_auc(np.r_[unseen, reals], np.r_[np.ones(len(unseen)), np.zeros(len(reals))]))
    return aucs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--wild", type=Path, required=True)
    ap.add_argument("--heads", default="linear:300,linear:1000,mlp:128,mlp:256,mlp:512")
    args = ap.parse_args()
    st = Study(args.shared, args.wild)

    def pool(key: str, split: str, cap: int | None = None) -> Pool:
        return st.pool(key, split, "layers", (None,), cap)

    tr = cat(pool("modern", "train"), pool("wild", "train"), pool("cifake", "train", 600))
    tr.weight[tr.dataset == "cifake-train"] = 0.2
    mval = pool("modern", "val")
    val = cat(mval, pool("wild", "val"))
    tests = {"modern test_gen": fakes_vs_reals(pool("modern", "test_generator"), mval),
             "wild test": fakes_vs_reals(pool("wild", "test_generator"), pool("wild", "test_real")),
             "cifake val": pool("cifake", "val", 200)}
    table("head", {f"{kind} {size}": fitter(kind, float(size))
                   for kind, size in (spec.split(":") for spec in args.heads.split(","))}, tr, val, tests)


def table(what: str, fits: dict, tr: Pool, val: Pool, tests: dict[str, Pool]) -> None:
    """One Markdown row per candidate: its LOGO ROC-AUC on the training generators,
    val ROC-AUC, and each held-out set's ROC-AUC and TPR at val's 5% FPR threshold."""
    print(f"| {what} | LOGO mean ROC-AUC (min, generators) | val ROC-AUC | "
          + " | ".join(f"{k}: ROC-AUC / TPR at val FPR 5%" for k in tests) + " | seconds |")
    print("|---" * (len(tests) + 4) + "|")
    for name, fit in fits.items():
        t0 = time.monotonic()
        aucs = logo(fit, tr, val)
        head = fit(tr)
        sv = head.prob(val.x)
        thr = np.quantile(sv[val.labels == 0], 0.95)
        cells = []
        for p in tests.values():
            s = head.prob(p.x)
            cells.append(f"{metrics.roc_auc(s, p.labels):.3f} / {np.mean(s[p.labels == 1] > thr):.0%}")
        print(f"| {name} | {np.mean(aucs):.3f} ({np.min(aucs):.3f}, {len(aucs)}) | "
              f"{metrics.roc_auc(sv, val.labels):.3f} | " + " | ".join(cells) + f" | {time.monotonic() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
