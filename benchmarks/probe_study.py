"""The study behind the default probe: which feature and blocks, what augmentation
buys, which training data. On cached features (`mai train probe` and `mai eval`
fill the same cache), so after the first run each table takes a minute or two.

    python benchmarks/probe_study.py blocks  --shared ../shared/data
    python benchmarks/probe_study.py augment --shared ../shared/data
    python benchmarks/probe_study.py data    --shared ../shared/data --wild /path/to/wild

Columns: ROC-AUC on modern-train `val` and on its `test_generator` fakes (GPT-image,
Nano Banana: never trained on) against the `val` reals, each as the files are,
after `web` (0.6x + JPEG q75) and after JPEG q50 (both classes alike). `data` adds
the wild set's held-out generators against its held-out real source, CIFAKE `val`
and, per cell, TPR at 5% FPR. modern-train's dcsan_* sources are excluded
everywhere (held out for evaluation).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mai.backbone import get_backbone  # noqa: E402
from mai_train import metrics  # noqa: E402
from mai_train.data import open_dataset  # noqa: E402
from mai_train.probe import fit_logistic  # noqa: E402
from mai_train.train_probe import Pool, ProbeConfig, load_pool, parse_blocks, probe_spec  # noqa: E402

EXCLUDE = ("dcsan_*",)


class Study:
    def __init__(self, shared: Path, wild: Path | None) -> None:
        self.bb = get_backbone("clip-vit-b16")
        self.spec = probe_spec(self.bb, "center_crop")
        self.paths = {"modern": shared / "modern-train.tar", "cifake": shared / "cifake-train.tar", "wild": wild}
        self.sets: dict[str, object] = {}

    def pool(self, key: str, split: str, feature: str, perturbs: tuple[str | None, ...],
             cap: int | None = None) -> Pool:
        ds = self.sets.setdefault(key, open_dataset(self.paths[key]))
        cfg = ProbeConfig(data=(), out="", exclude_source=EXCLUDE, cap=(f"cifake-train={cap}",) if cap else ())
        return load_pool(self.bb, self.spec, [ds], split, feature, perturbs, cfg)


def cat(*ps: Pool) -> Pool:
    return Pool(np.concatenate([p.x for p in ps]), np.concatenate([p.labels for p in ps]),
                np.concatenate([p.sources for p in ps]), sum([p.relpaths for p in ps], []),
                np.concatenate([p.copy for p in ps]), [], np.concatenate([p.weight for p in ps]),
                np.concatenate([p.dataset for p in ps]), np.concatenate([p.generator for p in ps]))


def fakes_vs_reals(fakes: Pool, reals: Pool) -> Pool:
    return cat(fakes.rows(fakes.labels == 1), reals.rows(reals.labels == 0))


def cell(head, p: Pool, tpr: bool = False) -> str:
    s = head.prob(p.x)
    out = f"{metrics.roc_auc(s, p.labels):.3f}"
    return out + (f" / {metrics.tpr_at_fpr(s, p.labels, 0.05):.2f}" if tpr else "")


def modern_evals(st: Study, feature: str) -> dict[str, Pool]:
    out = {}
    for name, p in (("", None), (" web", "web"), (" q50", "jpeg50")):
        va = st.pool("modern", "val", feature, (p,))
        out["val" + name] = va
        out["test_gen" + name] = fakes_vs_reals(st.pool("modern", "test_generator", feature, (p,)), va)
    return out


def fit(tr: Pool, l2: float, blocks: str | None, feature: str, mask: np.ndarray | None = None):
    nb = 12 if feature == "layers" else 1
    m = np.ones(len(tr.labels), bool) if mask is None else mask
    return fit_logistic(tr.x[m], tr.labels[m], l2, blocks=nb, select=parse_blocks(blocks, nb), weight=tr.weight[m])


def study_blocks(st: Study, args: argparse.Namespace) -> None:
    """Class token of the last block against several blocks' class tokens (clean training)."""
    rows = [("cls", None)] + [("layers", b) for b in ("1-12", "4-12", "7-12", "9-12", "3,6,9,12")]
    evals = {f: modern_evals(st, f) for f in ("cls", "layers")}
    print("| feature | blocks | l2 | " + " | ".join(evals["cls"]) + " |")
    print("|---|---|---|" + "---|" * len(evals["cls"]))
    for feature, blocks in rows:
        tr = st.pool("modern", "train", feature, (None,))
        for l2 in args.l2:
            h = fit(tr, l2, blocks, feature)
            print(f"| {feature} | {blocks or '-'} | {l2:g} | " + " | ".join(cell(h, e) for e in evals[feature].values())
                  + " |", flush=True)


def study_augment(st: Study, args: argparse.Namespace) -> None:
    """Leave-one-op-out: clean + the wild copies that did not get op X, against clean +
    a random subset of the copies of the same size (equal data, op X present)."""
    from PIL import Image, ImageOps

    from mai.preprocess import to_rgb
    from mai_train.augment import WILD_OPS, wild_ops

    feature, blocks, l2 = "layers", args.blocks, args.l2[0]
    tr = st.pool("modern", "train", feature, (None, "wild"))
    ds = st.sets["modern"]
    n = int((tr.copy == "").sum())
    by_path = {it.relpath: it for it in ds.items}
    ops = []
    for r in tr.relpaths[:n]:  # which ops each copy got: a pure function of the image
        with Image.open(io.BytesIO(ds.read_bytes(by_path[r]))) as im:
            im.load()
            ops.append(wild_ops(to_rgb(ImageOps.exif_transpose(im), st.spec.alpha)))
    evals = modern_evals(st, feature)
    print(f"layers {blocks}, l2 {l2:g}; copies with each op: "
          + ", ".join(f"{op} {np.mean([op in o for o in ops]):.0%}" for op in WILD_OPS))
    print("| training rows | n | " + " | ".join(evals) + " |")
    print("|---|---|" + "---|" * len(evals))
    clean = tr.copy == ""
    rng = np.random.default_rng(0)

    def row(name: str, mask: np.ndarray) -> None:
        h = fit(tr, l2, blocks, feature, mask)
        print(f"| {name} | {mask.sum()} | " + " | ".join(cell(h, e) for e in evals.values()) + " |", flush=True)

    row("clean only", clean)
    row("clean + every copy", np.ones(len(clean), bool))
    for op in WILD_OPS:
        without = np.array([op not in o for o in ops])
        m = clean.copy()
        m[n:] = without
        row(f"clean + copies without {op}", m)
        r = clean.copy()
        r[n:] = rng.permutation(np.r_[np.ones(without.sum(), bool), np.zeros(n - without.sum(), bool)])
        row("clean + as many random copies", r)


def study_data(st: Study, args: argparse.Namespace) -> None:
    """modern-train alone, + CIFAKE, + the wild set, + both (CIFAKE at two weights)."""
    if st.paths["wild"] is None:
        raise SystemExit("data: give --wild (the folder python -m mai_train.datasets.wild builds)")
    feature, blocks = "layers", args.blocks
    mv = st.pool("modern", "val", feature, (None,))
    evals = {
        "modern val": mv,
        "modern test_gen": fakes_vs_reals(st.pool("modern", "test_generator", feature, (None,)), mv),
        "modern test_gen web": fakes_vs_reals(st.pool("modern", "test_generator", feature, ("web",)),
                                              st.pool("modern", "val", feature, ("web",))),
        "wild val": st.pool("wild", "val", feature, (None,)),
        "wild test_gen + test_real": fakes_vs_reals(st.pool("wild", "test_generator", feature, (None,)),
                                                    st.pool("wild", "test_real", feature, (None,))),
        "wild same, web": fakes_vs_reals(st.pool("wild", "test_generator", feature, ("web",)),
                                         st.pool("wild", "test_real", feature, ("web",))),
        "CIFAKE val": st.pool("cifake", "val", feature, (None,), cap=200),
    }
    train = {k: st.pool(k, "train", feature, (None, "wild"), cap=600) for k in ("modern", "wild", "cifake")}
    print(f"layers {blocks}; cells: ROC-AUC / TPR at 5% FPR")
    print("| training data | CIFAKE weight | l2 | " + " | ".join(evals) + " |")
    print("|---|---|---|" + "---|" * len(evals))
    for name, keys, weights in (("modern", ("modern",), (1.0,)), ("modern + CIFAKE", ("modern", "cifake"), (1.0,)),
                                ("modern + wild", ("modern", "wild"), (1.0,)),
                                ("modern + wild + CIFAKE", ("modern", "wild", "cifake"), (1.0, 0.2))):
        for w in weights:
            parts = [train[k] for k in keys]
            tr = cat(*parts)
            tr.weight = np.where(tr.dataset == "cifake-train", w, 1.0)
            for l2 in args.l2:
                h = fit(tr, l2, blocks, feature)
                print(f"| {name} | {w:g} | {l2:g} | " + " | ".join(cell(h, e, True) for e in evals.values()) + " |",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["blocks", "augment", "data"])
    ap.add_argument("--shared", required=True, type=Path, help="the shared data folder (modern-train.tar, ...)")
    ap.add_argument("--wild", type=Path, default=None, help="the wild set's folder (data)")
    ap.add_argument("--blocks", default="7-12", help="layers blocks for augment and data")
    ap.add_argument("--l2", type=float, action="append", default=None, help="repeatable (default 300, 1000)")
    args = ap.parse_args()
    args.l2 = args.l2 or [300.0, 1000.0]
    st = Study(args.shared, args.wild)
    {"blocks": study_blocks, "augment": study_augment, "data": study_data}[args.what](st, args)


if __name__ == "__main__":
    main()
