"""Which items of which data sets a probe trains, calibrates and is measured on.

A probe may learn from several data sets at once (modern generators, the gathered
wild set, CIFAKE). Each is opened with `mai_train.data.open_dataset` and keeps its
own split (its manifest's, else the hash rule); `select` then drops sources held
out for evaluation (`exclude`, glob patterns on the source name) and caps each
(source, label) cell at `cap` items, chosen by a hash of the path, so a capped
set is stable when files are added and the feature cache stays valid.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections import defaultdict
from collections.abc import Sequence

from mai_train.data import DataSet, Item


def _order(relpath: str) -> bytes:
    return hashlib.sha1(b"cap:" + relpath.encode("utf-8")).digest()


def select(ds: DataSet, split: str, exclude: Sequence[str] = (), cap: int | None = None) -> list[Item]:
    """Items of `split` whose source matches none of `exclude`, at most `cap` per
    (source, label), in the data set's order."""
    items = [it for it in ds.split(split) if not any(fnmatch.fnmatchcase(it.source, p) for p in exclude)]
    if cap is None:
        return items
    cells: dict[tuple[str, int], list[Item]] = defaultdict(list)
    for it in items:
        cells[(it.source, it.label)].append(it)
    keep = {it.relpath for cell in cells.values() for it in sorted(cell, key=lambda i: _order(i.relpath))[:cap]}
    return [it for it in items if it.relpath in keep]
