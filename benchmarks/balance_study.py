"""Does weighting generators evenly help the probe on generators it never saw?

The default's training fakes are dominated by four sources (SD 1.5 fine-tunes,
Midjourney, a web-scraped mix: 2,400 of 3,600 fake rows), while 30 smaller modern
generators have 2 to 150 rows each. Weighting each fake row by count(generator)^-gamma
(the fakes' total weight unchanged) gives the small, varied generators more say; the
worst left-out generators (StyleGAN2-ADA, Z-Image-Turbo, SD 2.x) are small ones.

    python benchmarks/balance_study.py --shared ../shared/data --wild WILD

The default's training rows (clean and `wild` copies, as `mai train probe` with the
card's command), MLP 256, cached features (benchmarks/adapter_study.py extract, or
`mai train probe`, fills the cache). Chosen by leave-one-generator-out ROC-AUC on the
training generators (benchmarks/head_study.py's table), never by a test set. The
rule, written before any figure: a gamma replaces 0 only if its LOGO mean is >= 0.005
higher and its validation ROC-AUC not lower.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapter_study import SELECT, Data, pools  # noqa: E402
from head_study import table  # noqa: E402
from probe_study import cat, fakes_vs_reals  # noqa: E402

from mai_train.probe import MlpConfig, fit_mlp  # noqa: E402


def balanced(weight: np.ndarray, labels: np.ndarray, generator: np.ndarray, gamma: float) -> np.ndarray:
    """`weight` with each fake row scaled by count(its generator)^-gamma, renormalised
    so the fakes keep their total weight."""
    if gamma == 0:
        return weight
    fake = labels == 1
    n = Counter(generator[fake].tolist())
    scale = np.array([n[g] ** -gamma if f else 1.0 for g, f in zip(generator, fake, strict=True)])
    out = weight * scale
    out[fake] *= weight[fake].sum() / out[fake].sum()
    return out


def fitter(gamma: float):
    def fit(p):
        w = balanced(p.weight, p.labels, p.generator, gamma)
        return fit_mlp(p.x, p.labels, MlpConfig(), blocks=12, select=SELECT, weight=w)

    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--wild", type=Path, required=True)
    ap.add_argument("--gammas", default="0,0.5,1")
    args = ap.parse_args()
    d = Data(args.shared, args.wild)

    def one(key: str, split: str, perturb: str | None = None, cap: int | None = None):
        return d.load(key, split, perturb, cap)[0]

    tr = cat(*[one(k, s, p, c) for k, s, p, c in pools(True) if s == "train"])
    tr.weight[tr.dataset == "cifake-train"] = 0.2
    val = cat(*[one(k, s, p, c) for k, s, p, c in pools(True) if s == "val"])
    mval = one("modern", "val")
    tests = {"modern test_gen": fakes_vs_reals(one("modern", "test_generator"), mval),
             "same, q50": fakes_vs_reals(one("modern", "test_generator", "jpeg50"), one("modern", "val", "jpeg50")),
             "wild test": fakes_vs_reals(one("wild", "test_generator"), one("wild", "test_real"))}
    print(f"{len(tr.labels)} training rows, {len(val.labels)} validation rows; MLP 256")
    table("fake weight count(generator)^-gamma",
          {f"gamma {g}": fitter(float(g)) for g in args.gammas.split(",")}, tr, val, tests)


if __name__ == "__main__":
    main()
