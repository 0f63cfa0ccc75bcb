"""`mai train probe`: a logistic head on a frozen backbone's features (no torch).

Features are extracted once per data set, split, view and backbone and cached in
the app folder (`$MAI_HOME/features/`), so trying another feature, view or
regularisation costs seconds. The regularisation strength is chosen on the
validation split by ROC-AUC; the threshold and the uncertainty band are then
calibrated on the same split by the rule every MAI detector uses
(`mai_train.evaluate.calibrate`). The run folder becomes a model artifact: `mai.json`,
the head's weights in `model.safetensors`, and the head as `model.fp32.onnx`,
proven equal to the numpy head before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mai.appdir import app_dir
from mai.artifact import SCHEMA, WEIGHTS_NAME, Artifact, load_artifact, onnx_metadata, sha256_file
from mai.backbone import FEATURES, Backbone, feature_graph, get_backbone
from mai.errors import MaiError
from mai.preprocess import PreprocessSpec, Step
from mai_train.checkpoint import versions
from mai_train.data import DataSet, Item, open_dataset
from mai_train.evaluate import Scored, calibrate
from mai_train.probe import Features, Head, extract, fit_logistic, head_onnx

VIEWS = ("crop", "center_crop")  # native 224 centre crop, or the whole image resized (CLIP's own recipe)
L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
HEAD_TOLERANCE = 1e-4  # max |prob difference| between the ONNX head and the numpy head, as fp32 exports


class ProbeError(MaiError):
    """A probe run that cannot go on; the message says why."""


@dataclass
class ProbeConfig:
    data: str
    out: str
    backbone: str = "clip-vit-b16"
    feature: str = "embed"
    view: str = "crop"
    l2: Sequence[float] = field(default_factory=lambda: L2_GRID)
    target_fpr: float | None = None
    band_precision: float = 0.98
    batch_size: int = 16
    threads: int | None = None
    name: str | None = None


def probe_spec(bb: Backbone, view: str) -> PreprocessSpec:
    if view not in VIEWS:
        raise ProbeError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    return PreprocessSpec(steps=(Step((bb.size, bb.size), "bicubic"),), fit=view, mean=bb.mean, std=bb.std)


def feature_session(bb: Backbone, threads: int | None = None) -> Any:
    """The backbone's feature graph on the CPU (training and evaluation are offline work)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(feature_graph(bb)), sess_options=opts, providers=["CPUExecutionProvider"])


def cached_features(bb: Backbone, ds: DataSet, items: list[Item], spec: PreprocessSpec, threads: int | None,
                    batch_size: int, log: Any = None) -> Features:
    """`mai_train.probe.extract`, cached by backbone, spec, data and items."""
    key = hashlib.sha256(json.dumps(
        [bb.sha256, spec.to_json(), ds.fingerprint(), [it.relpath for it in items], ""]).encode()).hexdigest()
    path = app_dir() / "features" / f"{key[:24]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Features({n: z[n] for n in FEATURES if n in z}, z["labels"], list(z["sources"]),
                            list(z["relpaths"]), [tuple(r) for r in z["unreadable"].reshape(-1, 2)])
    t0 = time.monotonic()
    said = [0]

    def progress(k: int) -> None:
        if log is not None and (k - said[0] >= 200 or k == len(items)):
            said[0] = k
            log(f"  features: {k}/{len(items)} images, {k / max(time.monotonic() - t0, 1e-9):.1f}/s")

    f = extract(feature_session(bb, threads), ds, items, spec, batch_size, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, labels=f.labels, sources=np.asarray(f.sources, dtype=str), relpaths=np.asarray(f.relpaths, dtype=str),
             unreadable=np.asarray(f.unreadable, dtype=str).reshape(-1, 2), **f.feats)
    os.replace(tmp, path)
    return f


def _scored(f: Features, probs: np.ndarray) -> Scored:
    return Scored(np.asarray(probs, np.float64), f.labels, f.sources, f.relpaths, f.unreadable)


def train_probe(cfg: ProbeConfig, log: Any = None) -> Path:
    """Extract (or reuse) features, fit, choose, calibrate, write and prove the artifact."""
    say = log or (lambda line: None)
    if cfg.feature not in FEATURES:
        raise ProbeError(f"unknown feature {cfg.feature!r}; use one of {', '.join(FEATURES)}")
    bb = get_backbone(cfg.backbone)
    spec = probe_spec(bb, cfg.view)
    ds = open_dataset(cfg.data)
    train_items, val_items = ds.split("train"), ds.split("val")
    if not train_items or not val_items or len({it.label for it in train_items}) < 2:
        raise ProbeError(f"{cfg.data}: the split ({ds.split_rule}) left {len(train_items)} training and "
                         f"{len(val_items)} validation images, or one class only; add data")
    t0 = time.monotonic()
    say(f"{len(train_items)} training / {len(val_items)} validation images from {cfg.data} ({ds.split_rule}); "
        f"{bb.name} {cfg.feature}, view {cfg.view}")
    tr = cached_features(bb, ds, train_items, spec, cfg.threads, cfg.batch_size, log=say)
    va = cached_features(bb, ds, val_items, spec, cfg.threads, cfg.batch_size, log=say)
    if len(set(va.labels.tolist())) < 2:
        raise ProbeError(f"{cfg.data}: the validation split holds one class only; it cannot calibrate")
    from mai_train import metrics

    tried = []
    for l2 in cfg.l2:
        head = fit_logistic(tr.feats[cfg.feature], tr.labels, l2)
        auc = metrics.roc_auc(head.prob(va.feats[cfg.feature]), va.labels) or 0.0
        tried.append({"l2": l2, "val_roc_auc": auc})
        say(f"  l2 {l2:g}: val ROC-AUC {auc:.4f}")
    # The strongest regularisation within 0.002 of the best AUC: simpler heads travel better.
    best_auc = max(t["val_roc_auc"] for t in tried)
    l2 = max(t["l2"] for t in tried if t["val_roc_auc"] >= best_auc - 0.002)
    head = fit_logistic(tr.feats[cfg.feature], tr.labels, l2)
    cal = calibrate(_scored(va, head.prob(va.feats[cfg.feature])), cfg.target_fpr, cfg.band_precision)
    train_rep = metrics.summarise(head.prob(tr.feats[cfg.feature]), tr.labels, cal["threshold"])

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(head.arrays(), str(tmp), metadata={"format": "np"})
    os.replace(tmp, out / WEIGHTS_NAME)
    digest = sha256_file(out / WEIGHTS_NAME)
    name = cfg.name or out.name
    meta = {
        "schema": SCHEMA, "model_id": f"{name}@{digest[:8]}", "weights_sha256": digest, "name": name,
        "architecture": {"name": "probe", "args": {"feature": cfg.feature, "dim": bb.dim(cfg.feature)}},
        "backbone": bb.to_dict(),
        "preprocess": spec.to_dict(),
        **cal,
        "data": {"source": str(cfg.data), "fingerprint": ds.fingerprint(), "split_rule": ds.split_rule,
                 "counts": {"all": ds.counts(), "train": len(train_items), "val": len(val_items)},
                 "unreadable_train": len(tr.unreadable), "unreadable_val": len(va.unreadable)},
        "train": {
            "command": " ".join(["mai", *sys.argv[1:]]) if sys.argv and "mai" in Path(sys.argv[0]).name else None,
            "config": {**asdict(cfg), "l2": list(cfg.l2)}, "l2_chosen": l2, "l2_tried": tried,
            "selected_by": "val ROC-AUC (the strongest l2 within 0.002 of the best)",
            "train_metrics": train_rep, "wall_s": round(time.monotonic() - t0, 1),
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        },
        "versions": versions(),
    }
    (out / "mai.json.tmp").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(out / "mai.json.tmp", out / "mai.json")
    art = load_artifact(out)
    worst = export_probe(art, va.feats[cfg.feature])
    rep = cal["metrics"]["val"]
    say(f"saved {art.model_id} to {out} (l2 {l2:g}, threshold {art.threshold:.4f}, band "
        f"[{art.uncertain[0]:.4f}, {art.uncertain[1]:.4f}], val ROC-AUC {rep['roc_auc']:.4f}, "
        f"accuracy {rep['accuracy']:.4f}); model.fp32.onnx: head parity max |dp| {worst:.1e}")
    return out


def load_head(art: Artifact) -> Head:
    from safetensors.numpy import load_file

    if sha256_file(art.weights) != art.meta.get("weights_sha256"):
        raise ProbeError(f"{art.weights} does not match the hash in mai.json: restore it or re-train")
    return Head.from_arrays(load_file(str(art.weights)))


def export_probe(art: Artifact, feats: np.ndarray | None = None, out: Path | None = None) -> float:
    """Write the head as `model.fp32.onnx` and prove it against the numpy head on
    `feats` (default: random unit vectors); returns the worst |prob difference|."""
    import onnxruntime as ort

    head = load_head(art)
    if feats is None:
        feats = np.random.default_rng(0).standard_normal((64, head.w.shape[0])).astype(np.float32)
    final = (out or art.path) / "model.fp32.onnx"
    tmp = final.with_name(f".{final.name}.partial")
    try:
        head_onnx(head, onnx_metadata(art, "fp32"), tmp)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(tmp), sess_options=opts, providers=["CPUExecutionProvider"])
        got = sess.run(["prob"], {"features": np.asarray(feats, np.float32)})[0]
        worst = float(np.max(np.abs(got - head.prob(feats))))
        if not worst <= HEAD_TOLERANCE:
            raise ProbeError(f"{final.name}: head parity failed: max |prob difference| {worst:.2e} > {HEAD_TOLERANCE}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return worst
