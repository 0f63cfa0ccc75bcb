"""Scoring labelled data with a torch model, and the evaluation report.

Used by training (validation each epoch, calibration at the end) and `mai eval`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mai.preprocess import PreprocessSpec, prepare
from mai_train import metrics
from mai_train.data import DataSet, Item

#: Pillow refuses images above this many pixels (a decompression-bomb guard that
#: raises, rather than Pillow's default warning).
MAX_PIXELS = 200_000_000


@dataclass
class Scored:
    scores: np.ndarray
    labels: np.ndarray
    sources: list[str]
    relpaths: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def decode_item(ds: DataSet, item: Item, spec: PreprocessSpec, upto: int | None = None,
                augment: Callable[[Image.Image], Image.Image] | None = None) -> np.ndarray:
    """Read, decode and preprocess one data set item (raises on a bad file)."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(ds.read_bytes(item))) as im:
        im.load()
        return prepare(im, spec, upto=upto, augment=augment)


@dataclass
class Features:
    """Named per-image arrays from `map_items` (probabilities, backbone features)."""

    feats: dict[str, np.ndarray]  # name -> (N, ...) in item order
    labels: np.ndarray
    sources: list[str]
    relpaths: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def scored(self, name: str = "prob") -> Scored:
        scores = self.feats[name].astype(np.float64) if name in self.feats else np.zeros(0)
        return Scored(scores, self.labels, self.sources, self.relpaths, self.unreadable)


def batch_items(fn: Callable[[list[Any]], dict[str, np.ndarray]], ds: DataSet, items: Sequence[Item],
                load: Callable[[Item], Any], batch_size: int = 128,
                progress: Callable[[int], None] | None = None) -> Features:
    """The one loop over labelled items: `load(item)` each (an exception lists the
    item as unreadable, never fatal), and run `fn` (a list of loaded items ->
    named arrays, one row per item) on full batches. `progress(n)` hears how many
    items are done, after each batch."""
    out: dict[str, list[np.ndarray]] = {}
    labels: list[int] = []
    sources: list[str] = []
    relpaths: list[str] = []
    bad: list[tuple[str, str]] = []
    batch: list[Any] = []

    def flush() -> None:
        for name, v in fn(batch).items():
            out.setdefault(name, []).append(np.asarray(v))
        batch.clear()

    for n, it in enumerate(items, 1):
        try:
            x = load(it)
        except Exception as e:  # noqa: BLE001 - any unreadable image is counted and skipped
            bad.append((it.relpath, f"{type(e).__name__}: {e}"))
            continue
        batch.append(x)
        labels.append(it.label)
        sources.append(it.source)
        relpaths.append(it.relpath)
        if len(batch) == batch_size:
            flush()
            if progress:
                progress(n)
    if batch:
        flush()
    if progress:
        progress(len(items))
    feats = {name: np.concatenate(v) for name, v in out.items()}
    return Features(feats, np.asarray(labels, dtype=np.int64), sources, relpaths, bad)


def map_items(fn: Callable[[np.ndarray], dict[str, np.ndarray]], ds: DataSet, items: Sequence[Item],
              spec: PreprocessSpec, batch_size: int = 128, upto: int | None = None,
              progress: Callable[[int], None] | None = None,
              perturb: Callable[[Image.Image], Image.Image] | None = None) -> Features:
    """`batch_items` for model inputs: each item decoded and preprocessed by `spec`
    (its first `upto` steps), `fn` gets a uint8 NHWC batch.

    `perturb` acts on each upright RGB image before preprocessing (e.g. a JPEG
    re-encode, for evaluations where the two classes differ in format)."""
    return batch_items(lambda batch: fn(np.stack(batch)), ds, items,
                       lambda it: decode_item(ds, it, spec, upto=upto, augment=perturb), batch_size, progress)


def score_torch_items(model: Any, ds: DataSet, items: Sequence[Item], spec: PreprocessSpec,
                batch_size: int = 128, device: str = "cpu",
                progress: Callable[[int], None] | None = None,
                perturb: Callable[[Image.Image], Image.Image] | None = None) -> Scored:
    """P(synthetic) from a torch model for every readable item (see `map_items`)."""
    import torch

    from mai.preprocess_torch import finish

    model.eval()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(batch).to(device)
        with torch.inference_mode():
            p = torch.sigmoid(model(finish(x, spec)).float())
        return {"prob": p.cpu().numpy().astype(np.float64)}

    return map_items(run, ds, items, spec, batch_size, upto=1, progress=progress, perturb=perturb).scored()


def jpeg_reencoder(quality: int) -> Callable[[Image.Image], Image.Image]:
    """Re-encode as JPEG at `quality` (4:2:0), as a fair-evaluation perturbation."""
    from mai_train.augment import jpeg_at

    return jpeg_at(quality)


def report(scored: Scored, threshold: float, band: tuple[float, float] | None = None) -> dict[str, Any]:
    """Metrics at the stored threshold, overall and per source."""
    out: dict[str, Any] = metrics.summarise(scored.scores, scored.labels, threshold)
    out["per_source"] = metrics.per_source(scored.scores, scored.labels, scored.sources, threshold)
    out["unreadable"] = len(scored.unreadable)
    if band is not None:
        lo, hi = band
        inside = (scored.scores > lo) & (scored.scores < hi)
        out["uncertain_fraction"] = float(inside.mean()) if scored.scores.size else None
        sure = ~inside
        if sure.any():
            out["accuracy_outside_band"] = float(
                np.mean((scored.scores[sure] >= threshold) == (scored.labels[sure] == 1))
            )
    return out


def calibrate(scored: Scored, target_fpr: float | None, band_precision: float) -> dict[str, Any]:
    """Choose the threshold and the uncertainty band on validation scores: the
    `threshold`, `uncertain` and `calibration` entries of a model's mai.json,
    and its `metrics.val` report. One rule for every detector MAI trains."""
    threshold, how = metrics.choose_threshold(scored.scores, scored.labels, target_fpr)
    band = metrics.uncertainty_band(scored.scores, scored.labels, threshold, band_precision)
    return {
        "threshold": threshold,
        "uncertain": list(band),
        "calibration": {
            "threshold_rule": how,
            "band_rule": f"validation precision >= {band_precision:g} outside the band on each side",
            "on": f"{len(scored.scores)} validation images",
        },
        "metrics": {"val": report(scored, threshold, band)},
    }

