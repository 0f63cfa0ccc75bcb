"""Scoring labelled data with a VLM (validation while training an adapter, and
`mai eval` of an adapter, which `mai_train.eval_report.run_eval` reports like
any other model's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mai_train.data import DataSet, Item
from mai_train.evaluate import Scored, batch_items


def score_vlm_items(p_yes: Callable[[list[Any]], list[float]], ds: DataSet, items: Sequence[Item],
                batch_size: int = 8, progress: Callable[[int], None] | None = None,
                perturb: Callable[[Any], Any] | None = None) -> Scored:
    """P(Yes) for every readable item through `p_yes(images)` (PIL images at their
    own size); unreadable items are listed, not fatal. `perturb` (e.g. a JPEG
    re-encoder) applies to each image first."""
    from mai.vlm.images import open_image

    def load(it: Item) -> Any:
        im = open_image(ds.read_bytes(it))
        return perturb(im).convert("RGB") if perturb else im

    def run(images: list[Any]) -> dict[str, np.ndarray]:
        return {"prob": np.asarray([float(s) for s in p_yes(images)], dtype=np.float64)}

    return batch_items(run, ds, items, load, batch_size, progress).scored()
