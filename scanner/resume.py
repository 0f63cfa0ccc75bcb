"""`--resume` of a JSON Lines output: cut the file after its last complete
record, and remember the paths already there in little memory (`PathSet`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from scanner.summary import Summary


class PathSet:
    """Membership of record paths in little memory: sorted 64-bit hashes (8 bytes
    a path; a million files take 8 MB, not a set of strings' 100+). Paths are
    compared absolute and normalised, so `photos/a.jpg` and `./photos/a.jpg`
    are the same file when resumed from the same folder."""

    def __init__(self, paths: list[int] | None = None) -> None:
        import numpy as np

        self._a = np.sort(np.asarray(paths or [], dtype=np.uint64))

    @staticmethod
    def hash(path: str) -> int:
        norm = os.path.abspath(path)
        return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")

    def __len__(self) -> int:
        return int(self._a.size)

    def __contains__(self, path: str) -> bool:
        import numpy as np

        if not self._a.size:
            return False
        h = np.uint64(self.hash(path))
        i = int(np.searchsorted(self._a, h))
        return i < self._a.size and self._a[i] == h


@dataclass
class Resumed:
    """What `--resume` found in the output file."""

    paths: PathSet
    cut: int  # bytes of an unfinished last line removed
    models: set[str]  # model ids of the records there


def resume_jsonl(path: str, summary: Summary | None = None) -> Resumed:
    """Prepare `path` for `--resume`: cut it after its last complete record and
    return the paths already in it. `summary` counts the records already there,
    so the resumed scan's summary and exit status are those of the whole scan.

    A line counts when it ends in a newline and parses as a JSON object with a
    path; from the first one that does not (the half-written line of a killed
    process) the file is truncated.
    """
    import json

    hashes: list[int] = []
    models: set[str] = set()
    good = 0
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return Resumed(PathSet(), 0, models)
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
                p = rec["path"]
            except (ValueError, KeyError, TypeError):
                break
            if not isinstance(p, str):
                break
            hashes.append(PathSet.hash(p))
            if isinstance(rec.get("model"), str):
                models.add(rec["model"])
            if summary is not None:
                summary.add_resumed(rec)
            good += len(line)
        size = f.seek(0, os.SEEK_END)
        if size != good:
            f.truncate(good)
    return Resumed(PathSet(hashes), size - good, models)
