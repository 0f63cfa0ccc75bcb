"""`mai data check`: what is wrong with labelled data before a model learns from it.

Bad data is reported, never silently used: a file that does not decode, the same
bytes twice within a split (it counts double), in two splits (validation or test
then measures memory), or under both labels (the label is noise). Several data
sets are checked together, so a photo in one set's training split and another's
test split is found too. Byte-identical copies only: re-encoded or resized copies
are not found (the wild recipe's report also compares decoded pixels).
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mai_train.data import DataSet, Item
from mai_train.evaluate import MAX_PIXELS


@dataclass
class Report:
    files: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (dataset:relpath, error)
    same_split: list[list[str]] = field(default_factory=list)  # groups of identical files
    across_splits: list[list[str]] = field(default_factory=list)
    both_labels: list[list[str]] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.unreadable) + len(self.same_split) + len(self.across_splits) + len(self.both_labels)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "unreadable": [list(u) for u in self.unreadable],
                "duplicates_same_split": self.same_split, "duplicates_across_splits": self.across_splits,
                "same_file_both_labels": self.both_labels}


def _decodes(raw: bytes) -> str | None:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any failure to decode is the finding
        return f"{type(e).__name__}: {e}"
    return None


def check(sets: Sequence[DataSet], decode: bool = True) -> Report:
    """Hash every item's bytes (and decode it, unless `decode` is False)."""
    rep = Report()
    seen: dict[str, list[tuple[str, Item]]] = defaultdict(list)
    for ds in sets:
        for it in ds.items:
            rep.files += 1
            name = f"{ds.name}:{it.relpath}"
            try:
                raw = ds.read_bytes(it)
            except OSError as e:
                rep.unreadable.append((name, f"{type(e).__name__}: {e}"))
                continue
            if decode and (why := _decodes(raw)) is not None:
                rep.unreadable.append((name, why))
            seen[hashlib.sha256(raw).hexdigest()].append((f"{ds.name}:{ds.split_of(it)}", it))
    for copies in seen.values():
        if len(copies) < 2:
            continue
        names = [f"{where}:{it.relpath}" for where, it in copies]
        if len({it.label for _, it in copies}) > 1:
            rep.both_labels.append(names)
        elif len({where for where, _ in copies}) > 1:
            rep.across_splits.append(names)
        else:
            rep.same_split.append(names)
    return rep


def summary_lines(rep: Report, show: int = 5) -> list[str]:
    lines = [f"{rep.files} files: {len(rep.unreadable)} unreadable, {len(rep.both_labels)} files under both labels, "
             f"{len(rep.across_splits)} duplicated across splits, {len(rep.same_split)} duplicated within a split"]
    for title, groups in (("unreadable", [[f"{n} ({why})"] for n, why in rep.unreadable]),
                          ("under both labels", rep.both_labels), ("across splits", rep.across_splits),
                          ("within a split", rep.same_split)):
        for g in groups[:show]:
            lines.append(f"  {title}: {' = '.join(g)}")
        if len(groups) > show:
            lines.append(f"  {title}: ... and {len(groups) - show} more (--json lists all)")
    return lines
