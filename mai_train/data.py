"""Labelled image sets from folders, tar files or manifests (torch-free).

Layouts understood (label folders in any case, matched on the nearest one):

- `real/ fake/` and synonyms (`authentic/synthetic`, `human/ai`, `nature/ai`, ...)
- CIFAKE `REAL/ FAKE/`
- ForenSynths `<family>/[<class>/]0_real|1_fake`, GenImage `<family>/nature|ai`
- a CSV (`path,label[,source]`, header optional) or JSONL manifest
  (`{"path": ..., "label": ..., "source": ...}`), paths relative to the manifest

A folder, a `.tar` (read in place), or a `.tar.gz`/`.tgz` (read into memory) holds
the images. Each item keeps its source: the folder above its label folder (the
generator family), or the data set's own name when the labels sit at the top.

The train/validation split is a pure function of the item's relative path, so it
survives reordering and added files; `SPLIT_RULE` is stored in every artifact.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mai.errors import MaiError

REAL, FAKE = 0, 1
LABEL_WORDS = {
    REAL: {"real", "0_real", "authentic", "human", "nature", "natural", "genuine", "photo", "photos", "0"},
    FAKE: {"fake", "1_fake", "synthetic", "ai", "generated", "ai_generated", "ai-generated", "1"},
}
_WORD_TO_LABEL = {w: lab for lab, words in LABEL_WORDS.items() for w in words}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic", ".heif"}
VAL_PERCENT = 10
MANIFEST_NAME = "manifest.csv"  # at the root of a folder or tar: may carry the data set's own split
SPLIT_RULE = f"val if int.from_bytes(sha1(relpath).digest()[:8], 'big') % 100 < {VAL_PERCENT}"


class DataError(MaiError, ValueError):
    """A data set that cannot be read as given."""


@dataclass(frozen=True)
class Item:
    relpath: str  # posix path inside the data set; the split key
    label: int  # REAL or FAKE
    source: str  # family / generator, for per-source metrics
    loc: str | tuple[int, int]  # a file path, or (offset, size) inside an uncompressed tar
    split: str | None = None  # the data set's own split (a manifest's `split` column), else the hash rule
    generator: str | None = None  # a manifest's `generator` column (one generator may span several sources)


def is_val(relpath: str, percent: int = VAL_PERCENT) -> bool:
    h = int.from_bytes(hashlib.sha1(relpath.encode("utf-8")).digest()[:8], "big")
    return h % 100 < percent


def label_of(word: str) -> int | None:
    return _WORD_TO_LABEL.get(word.strip().lower())


def _label_and_source(relpath: str, default_source: str) -> tuple[int, str] | None:
    parts = PurePosixPath(relpath).parts[:-1]
    for i in range(len(parts) - 1, -1, -1):
        lab = label_of(parts[i])
        if lab is not None and parts[i] not in ("0", "1"):
            # ForenSynths nests a class folder: <family>/<class>/0_real; the family is first.
            source = parts[0] if i > 0 else default_source
            return lab, source
    return None


class DataSet:
    """A list of `Item`s and a way to read their bytes."""

    def __init__(self, root: Path, items: list[Item], kind: str, skipped: int = 0) -> None:
        self.root = root
        self.items = items
        self.kind = kind
        self.skipped_unlabelled = skipped
        self._tar_fh: tuple[int, io.BufferedReader] | None = None
        self._blobs: dict[str, bytes] | None = None

    @property
    def name(self) -> str:
        n = self.root.name
        for suffix in (".tar.gz", ".tgz", ".tar", ".csv", ".jsonl"):
            if n.endswith(suffix):
                return n[: -len(suffix)]
        return n

    def __len__(self) -> int:
        return len(self.items)

    def read_bytes(self, item: Item) -> bytes:
        if self._blobs is not None:
            return self._blobs[item.relpath]
        if isinstance(item.loc, tuple):
            # One handle per process: DataLoader workers are forked.
            if self._tar_fh is None or self._tar_fh[0] != os.getpid():
                self._tar_fh = (os.getpid(), open(self.root, "rb"))
            fh = self._tar_fh[1]
            fh.seek(item.loc[0])
            return fh.read(item.loc[1])
        with open(item.loc, "rb") as f:
            return f.read()

    @property
    def own_splits(self) -> list[str]:
        """The splits a manifest named (train, val, test_generator, ...), or [] for the hash rule."""
        return sorted({it.split for it in self.items if it.split})

    @property
    def split_rule(self) -> str:
        return "the manifest's split column" if self.own_splits else SPLIT_RULE

    def split(self, part: str) -> list[Item]:
        if part == "all":
            return list(self.items)
        own = self.own_splits
        if own:
            if part not in own:
                raise DataError(f"unknown split {part!r}; this data set's manifest has {', '.join(own)} (or all)")
            return [it for it in self.items if it.split == part]
        if part not in ("train", "val"):
            raise DataError(f"unknown split {part!r}; use train, val or all")
        want = part == "val"
        return [it for it in self.items if is_val(it.relpath) == want]

    def split_of(self, item: Item) -> str:
        """The split an item belongs to: its manifest's, else the hash rule's."""
        return item.split or ("val" if is_val(item.relpath) else "train")

    def counts(self) -> dict[str, int]:
        c = Counter(it.label for it in self.items)
        return {"real": c[REAL], "fake": c[FAKE]}

    def fingerprint(self) -> str:
        """A hash of what the set holds (paths, labels, sizes), not of where it lies."""
        h = hashlib.sha256()
        for it in sorted(self.items, key=lambda i: i.relpath):
            size = it.loc[1] if isinstance(it.loc, tuple) else _size(it)
            h.update(f"{it.relpath}\t{it.label}\t{it.source}\t{size}\n".encode())
        return h.hexdigest()[:16]

    def sources(self) -> list[str]:
        return sorted({it.source for it in self.items})


def _size(it: Item) -> int:
    try:
        return os.path.getsize(it.loc) if isinstance(it.loc, str) else -1
    except OSError:
        return -1


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def _from_names(names: Iterator[tuple[str, str | tuple[int, int]]], default_source: str) -> tuple[list[Item], int]:
    items, skipped = [], 0
    for rel, loc in names:
        if not _is_image_name(rel):
            continue
        ls = _label_and_source(rel, default_source)
        if ls is None:
            skipped += 1
            continue
        items.append(Item(rel, ls[0], ls[1], loc))
    items.sort(key=lambda i: i.relpath)
    return items, skipped


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def open_dataset(path: str | os.PathLike[str]) -> DataSet:
    """Open a folder, tar file or manifest; raises `DataError` with the fix."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"data not found: {root}")
    name = root.name.lower()
    stem = root.name
    if root.is_dir():
        def walk() -> Iterator[tuple[str, str]]:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in sorted(filenames):
                    full = os.path.join(dirpath, f)
                    yield Path(full).relative_to(root).as_posix(), full
        items, skipped = _from_names(walk(), stem)
        if (root / MANIFEST_NAME).is_file():
            items = _with_manifest_splits(items, (root / MANIFEST_NAME).read_bytes(), root)
        ds = DataSet(root, items, "folder", skipped)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        gz = not name.endswith(".tar")
        stem = DataSet(root, [], "").name
        try:
            with tarfile.open(root, "r:gz" if gz else "r:") as tf:
                members = [m for m in tf.getmembers() if m.isfile()]
                blobs: dict[str, bytes] | None = None
                if gz:
                    # Compressed tars cannot seek: hold the bytes (CIFAKE is 70 MB).
                    blobs = {}
                    for m in members:
                        if _is_image_name(_clean(m.name)):
                            fh = tf.extractfile(m)
                            if fh is not None:
                                blobs[_clean(m.name)] = fh.read()
                names = ((_clean(m.name), (m.offset_data, m.size)) for m in members)
                items, skipped = _from_names(names, stem)
                manifest = next((m for m in members if _clean(m.name) == MANIFEST_NAME), None)
                if manifest is not None and (fh := tf.extractfile(manifest)) is not None:
                    items = _with_manifest_splits(items, fh.read(), root)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read tar file {root}: {e}") from e
        ds = DataSet(root, items, "tar.gz" if gz else "tar", skipped)
        ds._blobs = blobs
    elif name.endswith((".csv", ".jsonl")):
        ds = _open_manifest(root)
    else:
        raise DataError(
            f"{root} is not a folder, .tar, .tar.gz or .csv/.jsonl manifest; "
            "point --data at one of those"
        )
    if not ds.items:
        raise DataError(
            f"no labelled images in {root}: put them under real/ and fake/ folders "
            "(or REAL/FAKE, 0_real/1_fake), or list them in a path,label manifest"
        )
    return ds


def _with_manifest_splits(items: list[Item], raw: bytes, root: Path) -> list[Item]:
    """Items of a folder or tar whose root `manifest.csv` has `path` and `split`
    columns take their split (and `source`, when given) from it."""
    try:
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{root}: {MANIFEST_NAME} is not a readable CSV: {e}") from e
    if not rows or "path" not in rows[0] or "split" not in rows[0]:
        return items
    by_path = {PurePosixPath(r["path"]).as_posix(): r for r in rows}
    out = []
    for it in items:
        r = by_path.get(it.relpath)
        if r is None:
            raise DataError(f"{root}: {it.relpath} is not in {MANIFEST_NAME}, which splits the data set")
        out.append(Item(it.relpath, it.label, r.get("source") or it.source, it.loc, r["split"] or None,
                        r.get("generator") or None))
    return out


def _open_manifest(root: Path) -> DataSet:
    rows: list[dict[str, str]] = []
    try:
        text = root.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {root}: {e}") from e
    if root.name.lower().endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{root}:{n}: not JSON: {e}") from e
    else:
        reader = csv.reader(io.StringIO(text))
        for n, rec in enumerate(reader, 1):
            if not rec or (n == 1 and rec[0].strip().lower() == "path"):
                continue
            if len(rec) < 2:
                raise DataError(f"{root}:{n}: expected path,label[,source]")
            rows.append({"path": rec[0], "label": rec[1], "source": rec[2] if len(rec) > 2 else ""})
    items = []
    base = root.parent
    for n, r in enumerate(rows, 1):
        if "path" not in r or "label" not in r:
            raise DataError(f"{root}: row {n} lacks path or label")
        lab = label_of(str(r["label"]))
        if lab is None:
            raise DataError(f"{root}: row {n}: label {r['label']!r} is neither real nor fake (use 0/1 or real/fake)")
        rel = str(r["path"])
        full = rel if os.path.isabs(rel) else os.path.join(base, rel)
        items.append(Item(PurePosixPath(rel).as_posix(), lab, str(r.get("source") or DataSet(root, [], "").name), full))
    return DataSet(root, items, "manifest")
