"""Does a second view help the default probe? CLIP's own view (the whole image,
cropped square and resized to 224) against a native 224x224 centre crop (no
resampling: the pixels a generator wrote), and both: their class tokens side by
side in one MLP head, or the two heads' scores averaged. A second view costs a
second backbone pass, so it has to earn it.

    python benchmarks/view_study.py --shared ../shared/data --wild /path/to/wild

Chosen by leave-one-generator-out ROC-AUC on the training generators (as
head_study.py), never by a test set; the held-out columns are printed for the
record. Training data as the default model's, clean copies only; features cached
(the crop view's first run extracts them: about one backbone pass per image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_study import table  # noqa: E402
from probe_study import Study, cat, fakes_vs_reals  # noqa: E402

from mai_train.probe import MlpConfig, fit_mlp  # noqa: E402
from mai_train.train_probe import Pool, parse_blocks, probe_spec  # noqa: E402

BLOCKS = parse_blocks("7-12", 12)


class Views:
    """Both views' pools of one split, rows aligned (same files, same order)."""

    def __init__(self, st: Study) -> None:
        self.st = st
        self.specs = {v: probe_spec(st.bb, v) for v in ("center_crop", "crop")}

    def pool(self, key: str, split: str, cap: int | None = None, perturb: str | None = None) -> Pool:
        ps = {}
        for v, spec in self.specs.items():
            self.st.spec = spec
            ps[v] = self.st.pool(key, split, "layers", (perturb,), cap)
        a, b = ps["center_crop"], ps["crop"]
        if a.relpaths != b.relpaths:
            raise SystemExit(f"{key} {split}: the two views' rows differ")
        # 24 blocks: 0-11 the whole image's class tokens, 12-23 the crop's.
        return Pool(np.concatenate([a.x, b.x], axis=1), a.labels, a.sources, a.relpaths, a.copy, [],
                    a.weight, a.dataset, a.generator)


class Averaged:
    """Late fusion: the mean of two heads' probabilities."""

    def __init__(self, *heads) -> None:
        self.heads = heads

    def prob(self, x: np.ndarray) -> np.ndarray:
        return np.mean([h.prob(x) for h in self.heads], axis=0)


def fitters(hidden: int) -> dict:
    cfg = MlpConfig(hidden=hidden)

    def one(select):
        return lambda p: fit_mlp(p.x, p.labels, cfg, blocks=24, select=select, weight=p.weight)

    whole, crop = one(BLOCKS), one(tuple(12 + b for b in BLOCKS))
    return {"whole image (CLIP's view; the default)": whole,
            "native 224 crop": crop,
            "both, one head on the two views' tokens": one(BLOCKS + tuple(12 + b for b in BLOCKS)),
            "both, the two heads' scores averaged": lambda p: Averaged(whole(p), crop(p))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--wild", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    vw = Views(Study(args.shared, args.wild))
    tr = cat(vw.pool("modern", "train"), vw.pool("wild", "train"), vw.pool("cifake", "train", 600))
    tr.weight[tr.dataset == "cifake-train"] = 0.2
    mval = vw.pool("modern", "val")
    val = cat(mval, vw.pool("wild", "val"))
    tests = {"modern test_gen": fakes_vs_reals(vw.pool("modern", "test_generator"), mval),
             "same, web": fakes_vs_reals(vw.pool("modern", "test_generator", perturb="web"),
                                         vw.pool("modern", "val", perturb="web")),
             "wild test": fakes_vs_reals(vw.pool("wild", "test_generator"), vw.pool("wild", "test_real")),
             "cifake val": vw.pool("cifake", "val", 200)}
    print(f"{len(tr.labels)} training rows (clean copies), {len(val.labels)} validation rows; MLP {args.hidden}")
    table("views", fitters(args.hidden), tr, val, tests)


if __name__ == "__main__":
    main()
