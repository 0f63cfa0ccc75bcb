"""`mai export int8` (the export package): the static int8 calibration a probe's backbone graph ships with.

Runs the backbone's fp32 feature graph over training images (a seeded sample of
one split), gathers the statistics of every weight product's input
(`mai.quantize.collect`) and writes the ranges and SmoothQuant divisors
(`mai.quantize.calibration`) as `int8.json` in the model folder. On a user's
machine `mai.backbone.feature_graph(bb, precision="int8")` builds the int8 graph
from the fp32 graph and that file, with no data: every scale is a constant, so a
file's features never depend on its batch mates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "int8.json"


@dataclass(frozen=True)
class Int8Settings:
    """How the calibration is drawn and computed (`mai export int8`'s flags)."""

    split: str = "train"  # the split the calibration images come from
    images: int = 256
    method: str = "p99.99"  # range of activations not smoothed: minmax, or a percentile pNN.NN
    alpha: float = 0.8  # SmoothQuant migration strength (0: no smoothing)
    keep_fp32: tuple[str, ...] = ("gelu",)  # products left in fp32 besides the last layer
    batch_size: int = 16
    seed: int = 0


def calibrate_int8(model_path: str | None, data: str, settings: Int8Settings = Int8Settings(), *,
                   threads: int | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write `int8.json` beside the probe at `model_path`, from images of `data`."""

    from mai.artifact import load_artifact
    from mai.backbone import GRAPH_VERSION, full_graph, get_backbone
    from mai.quantize import Stats, calibration, collect
    from mai_train.data import open_dataset
    from mai_train.evaluate import decode_item

    s = settings
    split, images, method, alpha, batch_size, seed, keep_fp32 = (s.split, s.images, s.method, s.alpha,
                                                                 s.batch_size, s.seed, s.keep_fp32)

    art = load_artifact(model_path)
    if "backbone" not in art.meta:
        raise SystemExit(f"{art.path} is not a probe: int8 calibration is for a backbone graph")
    bb = get_backbone(art.meta["backbone"]["name"])
    ds = open_dataset(data)
    items = list(ds.split(split))
    random.Random(seed).shuffle(items)
    items = items[:images]
    fp32 = full_graph(bb)  # every token of every block: what the int8 graph is quantized from

    def batches() -> Any:
        batch: list[np.ndarray] = []
        done = 0
        for it in items:
            try:
                batch.append(decode_item(ds, it, art.spec))
            except Exception:  # noqa: BLE001 - an unreadable image is skipped
                continue
            if len(batch) == batch_size:
                done += len(batch)
                yield np.stack(batch)
                batch = []
                if log is not None:
                    log(f"calibrate: {done}/{len(items)} images")
        if batch:
            yield np.stack(batch)

    st = collect(fp32, batches(), threads, Stats())
    cal = calibration(fp32, st, method, alpha, symmetric=False, keep_fp32=keep_fp32, info={
        "backbone": bb.name, "backbone_sha256": bb.sha256, "graph_version": GRAPH_VERSION,
        "data": Path(data).name, "data_fingerprint": ds.fingerprint(), "split": split,
        "images": len(items), "seed": seed})
    out = art.path / CALIBRATION_FILE
    out.write_text(cal.to_json() + "\n")
    return out
