"""`--out-dir DIR`: records as JSON Lines shards plus a manifest, for outputs too
large for one file. Works with both engines (local and ray): it is a sink like
the single `--jsonl FILE`, fed by the one process that writes records.

    DIR/part-00000.jsonl   records 1 .. RECORDS_PER_SHARD (schema mai.scan/1)
    DIR/part-00001.jsonl   the next ones ...
    DIR/manifest.json      which shards exist and which are complete

A shard is written like `--jsonl FILE` (whole lines, each with one write) and
is *complete* once it is closed: full, or the scan ended or was interrupted
(Ctrl-C, SIGTERM). Only the shard being written is incomplete; after a killed
process (SIGKILL, a lost machine) the manifest still lists it as incomplete,
and it may end in a partial line. `finished` is true when the scan went
through every input file. The manifest is replaced atomically (a temporary
file renamed over it), so a reader never sees half of one:

    {"schema": "mai.scan.shards/1", "record_schema": "mai.scan/1",
     "finished": true, "records": 250000, "model": "mai-cnn@1a2b3c4d",
     "shards": [{"file": "part-00000.jsonl", "records": 100000, "complete": true}, ...]}

Readers that must not see a scan in progress take the shards marked complete.
`--resume --out-dir DIR` cuts every shard after its last complete line (as
`--resume --jsonl FILE` does), marks them complete, skips the files already in
them and writes the rest to new shards. Without `--resume`, a DIR that already
holds shards or a manifest is refused (nothing is overwritten).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from mai.errors import MaiError
from scanner.records import SCHEMA
from scanner.resume import PathSet, Resumed, resume_jsonl
from scanner.sinks import JsonlWriter
from scanner.summary import Summary

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "mai.scan.shards/1"
RECORDS_PER_SHARD = 100_000
_SHARD_RE = re.compile(r"^part-(\d{5,})\.jsonl$")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def shard_files(folder: str) -> list[str]:
    """The shard file names in `folder`, in shard order."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), n) for n in names if (m := _SHARD_RE.match(n))]
    return [n for _, n in sorted(found)]


def read_manifest(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MaiError(f"{os.path.join(folder, MANIFEST)}: unreadable manifest ({e})") from None
    return data if isinstance(data, dict) else None


def check_out_dir(folder: str, jsonl: str | None, resume: bool) -> None:
    """Refuse what cannot work, before the model is opened (MaiError: exit 2)."""
    if jsonl not in (None, "-"):
        raise MaiError("--out-dir DIR and --jsonl FILE both write the records: choose one")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MaiError(f"--out-dir {folder} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise MaiError(f"--out-dir {folder}: the folder {parent} does not exist")
    if not resume and (shard_files(folder) or os.path.exists(os.path.join(folder, MANIFEST))):
        raise MaiError(f"--out-dir {folder} already holds a scan; add --resume to finish it, "
                       "or choose an empty folder")


def _write_manifest(folder: str, data: dict[str, Any]) -> None:
    tmp = os.path.join(folder, f".{MANIFEST}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(folder, MANIFEST))


def resume_shards(folder: str, summary: Summary | None = None) -> Resumed:
    """`--resume` for `--out-dir`: every shard is cut after its last complete
    record (see `resume.resume_jsonl`) and marked complete in the manifest;
    returns the paths already written, as `resume_jsonl` does for one file."""
    names = shard_files(folder)
    hashes: list[Any] = []
    models: set[str] = set()
    cut = 0
    shards = []
    for name in names:
        found = resume_jsonl(os.path.join(folder, name), summary)
        hashes.append(found.paths._a)  # the sorted 64-bit hashes; merged below
        models |= found.models
        cut += found.cut
        shards.append({"file": name, "records": len(found.paths), "complete": True})
    if names:
        old = read_manifest(folder) or {}
        _write_manifest(folder, {**_header(old.get("model")), "finished": False,
                                 "records": sum(s["records"] for s in shards), "shards": shards})
    import numpy as np

    merged = np.concatenate(hashes).tolist() if hashes else []
    return Resumed(PathSet(merged), cut, models)


def _header(model: str | None) -> dict[str, Any]:
    return {"schema": MANIFEST_SCHEMA, "record_schema": SCHEMA, "model": model}


class ShardWriter:
    """A sink: records into numbered JSON Lines shards of `records_per_shard`
    lines, and the manifest. Set `finished = True` before `close()` when the
    scan went through every input."""

    def __init__(self, folder: str, append: bool = False, model: str | None = None,
                 records_per_shard: int | None = None) -> None:
        self.folder = folder
        self.per_shard = records_per_shard or RECORDS_PER_SHARD
        self.model = model
        self.finished = False
        os.makedirs(folder, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        if append:
            listed = {s.get("file"): s for s in (read_manifest(folder) or {}).get("shards", [])
                      if isinstance(s, dict)}
            for name in shard_files(folder):
                s = listed.get(name) or {}
                self.shards.append({"file": name, "records": s.get("records"), "complete": True})
        last = shard_files(folder)[-1:] if append else []
        self.index = int(_SHARD_RE.match(last[0]).group(1)) + 1 if last else 0
        self.writer: JsonlWriter | None = None
        self.count = 0
        self._manifest()

    def _manifest(self) -> None:
        known = [s["records"] for s in self.shards if s["records"] is not None]
        data = {**_header(self.model), "finished": self.finished, "records": sum(known),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shards": self.shards}
        _write_manifest(self.folder, data)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            name = shard_name(self.index)
            self.writer = JsonlWriter(os.path.join(self.folder, name))
            self.count = 0
            self.shards.append({"file": name, "records": None, "complete": False})
            self._manifest()
        self.writer.write(record)
        self.count += 1
        if self.count >= self.per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        self.shards[-1].update(records=self.count, complete=True)
        self.index += 1
        self._manifest()

    def close(self) -> None:
        if self.writer is not None:
            self._close_shard()
        else:
            self._manifest()
