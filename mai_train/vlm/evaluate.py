"""Scoring labelled data with a VLM, and `mai eval` for a VLM adapter.

The report has the same shape as the CNN's (`mai_train.evaluate.report`): accuracy,
balanced accuracy, ROC-AUC, AP, TPR/FPR at the adapter's stored threshold, the
per-source table and the share of images inside its uncertainty band.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mai_train.data import DataSet, Item
from mai_train.evaluate import Scored


def score_items(p_yes: Callable[[list[Any]], list[float]], ds: DataSet, items: Sequence[Item],
                batch_size: int = 8, progress: Callable[[int], None] | None = None,
                perturb: Callable[[Any], Any] | None = None) -> Scored:
    """P(Yes) for every readable item through `p_yes(images)`; unreadable items
    are listed, not fatal. `perturb` (e.g. a JPEG re-encoder) applies to each image first."""
    from mai.vlm.images import open_image

    scores: list[float] = []
    labels: list[int] = []
    sources: list[str] = []
    relpaths: list[str] = []
    bad: list[tuple[str, str]] = []
    batch: list[Any] = []
    meta: list[Item] = []

    def flush() -> None:
        if batch:
            scores.extend(float(s) for s in p_yes(batch))
            for it in meta:
                labels.append(it.label)
                sources.append(it.source)
                relpaths.append(it.relpath)
            batch.clear()
            meta.clear()

    for n, it in enumerate(items, 1):
        try:
            im = open_image(ds.read_bytes(it))
            batch.append(perturb(im).convert("RGB") if perturb else im)
            meta.append(it)
        except Exception as e:  # noqa: BLE001 - any unreadable image is counted and skipped
            bad.append((it.relpath, f"{type(e).__name__}: {e}"))
        if len(batch) >= batch_size:
            flush()
            if progress:
                progress(n)
    flush()
    if progress:
        progress(len(items))
    return Scored(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64), sources, relpaths, bad)


def run_vlm_eval(adapter: str, data: str, split: str = "all", limit: int | None = None, batch_size: int = 8,
                 device: str = "auto", base: str | None = None, trust_remote_code: bool = False,
                 jpeg_quality: int | None = None) -> dict[str, Any]:
    """`mai eval` for a VLM adapter folder: the same report as for a CNN."""
    from mai.vlm import VLMScorer
    from mai_train.data import open_dataset
    from mai_train.evaluate import jpeg_reencoder, report

    scorer = VLMScorer(base, adapter, trust_remote_code=trust_remote_code, device=device, batch_size=batch_size)
    ds = open_dataset(data)
    items = ds.split(split)
    if limit and len(items) > limit:
        items = sorted(random.Random(0).sample(items, limit), key=lambda i: i.relpath)
    perturb = jpeg_reencoder(jpeg_quality) if jpeg_quality else None
    scored = score_items(scorer.score, ds, items, batch_size=batch_size, perturb=perturb)
    rep = report(scored, scorer.threshold, scorer.uncertain)
    meta = scorer.meta or {}
    return {
        "model": scorer.model_id, "kind": "vlm", "base": str(scorer.base_path), "data": str(data), "split": split,
        "jpeg_quality": jpeg_quality, "fingerprint": ds.fingerprint(), "uncertain": list(scorer.uncertain),
        "calibration": meta.get("calibration"),
        "unreadable_items": [{"path": p, "error": e} for p, e in scored.unreadable], **rep,
    }
