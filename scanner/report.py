"""`--html FILE`: a scan as one self-contained HTML page (thumbnails, verdicts,
evidence), written as the scan goes; and `mai report`, the same page from JSON
Lines already written.

How it is written. `ReportWriter.write` takes each record as it comes: the
record goes at once, as one line of escaped JSON, into a temporary file beside
the report (memory stays flat however many records), and a thread makes its
thumbnail (the file decoded again, JPEGs DCT-scaled, 160 px on the long side,
a small JPEG) into a second temporary file. `close` assembles the page: the
template (`report_template.html`: inline CSS and JS, no network, a Content
Security Policy that allows only its own script and style), a summary and the
records, and renames it over FILE, so FILE is never half written.

Thumbnails cost a second decode of each file (about 30 ms of CPU for a 12 MP
JPEG, DCT-scaled; a PNG decodes whole), which next to a fast model would
double a scan's time. So `--html-thumbs auto`, the default, spends at most
THUMB_BUDGET of the machine's CPU time on them (their own measured CPU time,
counted against the scan's time so far on every core; the first THUMB_GRACE
are always made, so a handful of files get them all): every file gets one
while that holds (with the default CLIP model on a 2-core CPU, about a third
of them); past it, the flagged files (synthetic, uncertain) keep theirs first
and the others are skipped, marked so on the page. A resumed scan's earlier
records come under the same budget. `all` makes every one (the scan waits
for them), `none` none. `mai report` has no scan to slow down: it makes them
all.

Where they go: up to EMBED_MAX, in the page as base64 JPEGs (one file to mail
or archive); beyond, in a folder beside it, `REPORT.thumbs/` (100,000 embedded
thumbnails would weigh most of a gigabyte, and a browser opens such a page
slowly).

Safety. The records are data, never markup: they sit in a
`<script type="application/json">` with `<`, `>` and `&` written as `\\u003c`
`\\u003e` `\\u0026`, so no file name or metadata string can close the element,
and the page's script renders them with `textContent` only. Paths are shown
relative to the folder above each scanned root (`/home/me/photos/a.jpg`,
scanned as `/home/me/photos`, shows as `photos/a.jpg`), and the roots are
removed from error messages too: the page names what was scanned, not where
it sits on the disk.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

from mai.errors import MaiError
from scanner.records import MODEL_STAGE, display_path

THUMBS = ("auto", "all", "none")
PLACEMENTS = ("auto", "embed", "folder")
THUMB_PX = 160  # the long side of a thumbnail
THUMB_QUALITY = 70
EMBED_MAX = 1_000  # embedded up to this many thumbnails (about 8 MB of page), a folder beyond
PENDING_MAX = 64  # --html-thumbs all: thumbnails queued before the scan waits (memory stays bounded)
#: auto: the share of the scan's CPU time (elapsed x cores) thumbnails may take, and
#: the share of that the files not flagged may use (the flagged keep the rest).
#: Measured (benchmarks/README.md): a busy 2-core machine's scan grew by 1.3-2x
#: this share in wall time (a thread taking a core from ONNX Runtime's parallel
#: work stalls all of it), so 3% keeps it under the 10% asked for.
THUMB_BUDGET = 0.03
UNFLAGGED_SHARE = 0.6
THUMB_GRACE = 8  # the first thumbnails are always made: a handful of files get them all
FLAGGED = ("synthetic", "uncertain")
_THUMB_NAME = re.compile(r"^\d{6,}\.jpg$")
#: The provenance signal kinds the page filters on, by the signal's prefix.
SIGNAL_KINDS = {"c2pa": "c2pa", "exif": "exif", "xmp": "iptc", "iptc": "iptc"}  # anything else: "generator"


class ReportError(MaiError):
    """The report cannot be written (exit status 2, one line)."""


# ---------------------------------------------------------------------------- paths shown

class PathLabels:
    """Paths as the page shows them: relative to the folder above the scanned
    root they came from, so the root's own name stays (`photos/a.jpg`). A path
    under no root (cannot happen in a scan) shows its file name only."""

    def __init__(self, roots: Sequence[str]) -> None:
        seps = tuple({"/", os.sep})
        pairs: dict[str, str] = {}
        for root in roots:
            label = _root_label(root)
            trimmed = root.rstrip("".join(seps)) or root
            pairs[trimmed] = label
            absolute = os.path.abspath(root)
            pairs.setdefault(absolute, label)
        # Longest first: a root inside another root names its own files.
        self._roots = sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)
        self._seps = seps
        self.labels = list(dict.fromkeys(_root_label(r) for r in roots))

    def __call__(self, path: str) -> str:
        for root, label in self._roots:
            if path == root:
                return label
            if path.startswith(root) and (path[len(root):len(root) + 1] in self._seps or root.endswith(self._seps)):
                rest = path[len(root):].lstrip("".join(self._seps))
                return f"{label}/{rest}" if label else rest
        return os.path.basename(path) or path

    def redact(self, text: str) -> str:
        """`text` (an error message) with every scanned root replaced by its label."""
        for root, label in self._roots:
            if os.path.isabs(root) and len(root) > 1 and root in text:  # a relative root shows nothing local
                text = text.replace(root, label)
        return text


def _root_label(root: str) -> str:
    name = os.path.basename(os.path.abspath(root).rstrip("/" + os.sep))
    return display_path(name)


def common_root(paths: Iterable[str]) -> list[str]:
    """The folder all `paths` lie in (for a report made from JSON Lines, whose
    scan roots are not recorded): their common folder, the parent of a lone file."""
    common: str | None = None
    for p in paths:
        d = os.path.dirname(p)
        if common is None:
            common = d
        elif not (d == common or d.startswith(common.rstrip("/") + "/")):
            try:
                common = os.path.commonpath([common, d])
            except ValueError:  # absolute and relative paths mixed, or two Windows drives
                return []
    return [common] if common else []


# ---------------------------------------------------------------------------- thumbnails

_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}


def make_thumbnail(path: str, max_pixels: int, px: int = THUMB_PX) -> bytes | None:
    """A small upright RGB JPEG of the file's first frame, or None (not an image,
    over the pixel limit, gone, or anything else a hostile file can raise).
    The format is sniffed from the content, the size checked from the header
    before a pixel is decoded, and JPEGs are decoded DCT-scaled (1/8 at most)."""
    from PIL import Image

    from mai.preprocess import to_rgb
    from scanner.decode import MAX_SIDE
    from scanner.formats import HEAD_BYTES, missing_codec, sniff

    try:
        with open(path, "rb") as f:
            fmt = sniff(f.read(HEAD_BYTES))
            if fmt is None or missing_codec(fmt) is not None:
                return None
            f.seek(0)
            with Image.open(f, formats=[fmt]) as im:
                w, h = im.size
                if w <= 0 or h <= 0 or w * h > max_pixels or max(w, h) > MAX_SIDE:
                    return None
                try:
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:  # noqa: BLE001 - a broken EXIF block means upright
                    orientation = 1
                if getattr(im, "is_animated", False):
                    im.seek(0)
                if im.format == "JPEG":
                    im.draft(None, (px, px))
                small = to_rgb(im)
                small.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
                small.load()  # a small image may still be the lazy original: read it before the file closes
        if orientation in _TRANSPOSE:
            small = small.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=THUMB_QUALITY)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - no thumbnail is the worst a bad file can do to the report
        return None


# ---------------------------------------------------------------------------- records as page data

def safe_json(obj: Any) -> str:
    """JSON that can sit inside a <script> element: `<`, `>`, `&` (and, by
    ensure_ascii, every non-ASCII character) are \\u escapes, so no string can
    end the element or open a comment; not-a-number becomes null."""
    try:
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def signal_kinds(provenance: list[Any]) -> list[str]:
    """The kinds of provenance signal a record carries (the page's source filter):
    c2pa, exif (EXIF fields such as Software), iptc (IPTC/XMP digital source
    type) and generator (PNG text chunks, comments, stealth PNG info)."""
    kinds = [SIGNAL_KINDS.get(str(s.get("signal", "")).split(":")[0], "generator") for s in provenance]
    return list(dict.fromkeys(kinds))


def _num(v: Any) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _str(v: Any) -> str | None:
    return None if v is None else display_path(str(v))


def page_record(record: dict[str, Any], labels: PathLabels) -> dict[str, Any]:
    """The record as the page holds it: the path relative to its root, roots
    removed from the error message, and the fields the page reads given the
    types it expects (a JSON Lines file given to `mai report` may be anything)."""
    r = dict(record)
    r["path"] = labels(_str(record.get("path")) or "")
    r["verdict"] = _str(record.get("verdict")) or "error"
    r["score"] = _num(record.get("score"))
    r["stage"] = _str(record.get("stage"))
    scores = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    r["scores"] = {MODEL_STAGE: _num(scores.get(MODEL_STAGE)), "vlm": _num(scores.get("vlm")),
                   **{str(k): v for k, v in scores.items() if k not in (MODEL_STAGE, "vlm")}}
    prov = record.get("provenance")
    r["provenance"] = [s for s in prov if isinstance(s, dict)] if isinstance(prov, list) else []
    for k in ("width", "height", "bytes"):
        r[k] = _num(record.get(k))
    for k in ("model", "format"):
        r[k] = _str(record.get(k))
    err = record.get("error")
    if err is not None:
        err = err if isinstance(err, dict) else {"kind": "decode", "message": str(err)}
        message = labels.redact(_str(err.get("message")) or "")
        r["error"] = {**err, "kind": _str(err.get("kind")) or "?", "message": message}
    return r


# ---------------------------------------------------------------------------- the template

def _template() -> tuple[str, str, str]:
    """The page around the data: (head, between summary and data, tail), with the
    Content Security Policy naming the hashes of its one script and one style."""
    text = resources.files("scanner").joinpath("report_template.html").read_text(encoding="utf-8")
    digests = []
    for tag in ("style", "script"):
        m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        if m is None:
            raise ReportError(f"report_template.html has no <{tag}> element")
        digests.append("'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'")
    # No network at all: default-src 'none'; images only from the page itself or the thumbnail folder.
    csp = (f"default-src 'none'; style-src {digests[0]}; script-src {digests[1]}; img-src data: 'self' file:; "
           "base-uri 'none'; form-action 'none'")
    text = text.replace("{{CSP}}", csp)
    head, rest = text.split("{{SUMMARY}}")
    middle, tail = rest.split("{{DATA}}")
    return head, middle, tail


_ABS_DIRS = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[/\\](?:[^\s/\\()'\"]+[/\\])+")


def strip_dirs(text: str) -> str:
    """`text` with the folders of any absolute path in it dropped (a model's
    description may quote a library's path in why a provider did not load)."""
    return _ABS_DIRS.sub(".../", text)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mai-detect")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "?"


# ---------------------------------------------------------------------------- the writer

class ReportWriter:
    """A sink for records that ends as one HTML page at `target` (see the module
    docstring). `roots` are the scanned paths as given (for the paths shown);
    `models` describe the model(s): id, threshold, band, describe; `source`
    names what the records came from when not a live scan."""

    def __init__(self, target: str, *, roots: Sequence[str], thumbs: str = "auto", placement: str = "auto",
                 models: list[dict[str, Any]] | None = None, max_pixels: int = 180_000_000,
                 source: str | None = None) -> None:
        if thumbs not in THUMBS:
            raise ReportError(f"--html-thumbs {thumbs}: choose one of {', '.join(THUMBS)}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r}: one of {', '.join(PLACEMENTS)}")
        check_target(target)
        self.target, self.thumbs, self.placement = target, thumbs, placement
        self.max_pixels, self.source = max_pixels, source
        self.labels = PathLabels(roots)
        self.models = models or []
        self.count = 0
        self.thumb_count = 0
        self.skipped = 0  # thumbnails not made to keep within the budget (auto)
        self.mode = "none"  # what close() did: embedded, folder or none
        folder, name = os.path.split(os.path.abspath(target))
        self._folder, self._name = folder, name
        self._data = tempfile.TemporaryFile(dir=folder, prefix=f".{name}.", suffix=".records")
        self._spool = tempfile.TemporaryFile(dir=folder, prefix=f".{name}.", suffix=".thumbs")
        self._spool_end = 0
        self._where: dict[int, tuple[int, int]] = {}  # record number -> (offset, length) in the spool
        self._skipped: set[int] = set()
        self._lock = threading.Lock()
        # auto queues few, so that the scan's end does not wait for a backlog.
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._slots = threading.BoundedSemaphore(PENDING_MAX if thumbs == "all" else 2 * self._cores)
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mai-thumbs")
                      if thumbs != "none" else None)
        self._started = time.monotonic()
        self._cpu = 0.0  # CPU seconds the thumbnails took so far
        self._made = 0
        self._pending = 0
        self._closed = False

    def write(self, record: dict[str, Any], source: str | None = None) -> None:
        """Add one record; `source` is the file to make its thumbnail from (default: its path)."""
        r = page_record(record, self.labels)
        kinds = signal_kinds(r["provenance"])
        line = '{"s":' + safe_json(kinds) + ',"r":' + safe_json(r) + "}\n"
        self._data.write(line.encode("ascii"))
        n = self.count
        self.count += 1
        src = source if source is not None else record.get("path")
        if self._pool is None or r["error"] is not None or not isinstance(src, str) or \
                (r["width"] or 0) * (r["height"] or 0) > self.max_pixels:
            return
        if self.thumbs == "auto" and not self._affordable(r["verdict"]):
            self._skipped.add(n)
            return
        self._slots.acquire()  # the scan waits while the queue is full (the budget bounds what it waits for)
        with self._lock:
            self._pending += 1
        try:
            self._pool.submit(self._thumb, n, src)
        except RuntimeError:  # the pool is shut down (close() from another thread): no thumbnail
            self._done(0.0)

    def _affordable(self, verdict: str) -> bool:
        """auto: whether one more thumbnail keeps them within THUMB_BUDGET of the
        scan's CPU time so far (those queued counted at the mean cost so far)."""
        allowance = THUMB_BUDGET * (time.monotonic() - self._started) * self._cores
        with self._lock:
            if self._made + self._pending < THUMB_GRACE:
                return True
            mean = self._cpu / self._made if self._made else 0.03
            spent = self._cpu + (self._pending + 1) * mean
        return spent <= allowance * (1.0 if verdict in FLAGGED else UNFLAGGED_SHARE)

    def _thumb(self, n: int, path: str) -> None:
        t0 = time.thread_time()
        data = None
        try:
            data = make_thumbnail(path, self.max_pixels)
        finally:
            with self._lock:
                if data is not None:
                    self._spool.seek(self._spool_end)
                    self._spool.write(data)
                    self._where[n] = (self._spool_end, len(data))
                    self._spool_end += len(data)
            self._done(time.thread_time() - t0)

    def _done(self, cpu: float) -> None:
        with self._lock:
            self._pending -= 1
            self._cpu += cpu
            self._made += 1
        self._slots.release()

    def close(self, summary: Any = None, interrupted: bool = False) -> str:
        """Assemble the page (`summary`: a scanner.summary.Summary, for the scan's speed);
        returns the report's path. Interrupted: thumbnails still queued are dropped."""
        if self._closed:
            return self.target
        self._closed = True
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=interrupted)
            self.thumb_count, self.skipped = len(self._where), len(self._skipped)
            self.mode = ("none" if not self._where else "embedded" if self.placement == "embed" or
                         (self.placement == "auto" and self.thumb_count <= EMBED_MAX) else "folder")
            self._assemble(summary, interrupted)
        finally:
            self._data.close()
            self._spool.close()
        return self.target

    def abort(self) -> None:
        """Drop everything (the scan failed before it started)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._data.close()
        self._spool.close()

    @property
    def thumb_dir(self) -> str:
        return os.path.join(self._folder, thumb_folder_name(self._name))

    def _summary(self, summary: Any, interrupted: bool) -> dict[str, Any]:
        speed = None
        if summary is not None:
            speed = {"records": summary.files, "scanned": summary.scanned, "cached": summary.cached,
                     "resumed": summary.resumed, "seconds": round(summary.elapsed, 3),
                     "rate": round(summary.rate, 2)}
        return {"tool": f"mai-scan {_version()}", "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "source": self.source, "roots": self.labels.labels, "models": self.models, "speed": speed,
                "interrupted": interrupted, "total": self.count, "thumbs": self.mode,
                "thumbs_skipped": self.skipped, "thumbs_cpu_s": round(self._cpu, 2),
                "thumb_dir": quote(thumb_folder_name(self._name)) if self.mode == "folder" else None,
                "thumb_px": THUMB_PX}

    def _assemble(self, summary: Any, interrupted: bool) -> None:
        head, middle, tail = _template()
        tmp_html = os.path.join(self._folder, f".{self._name}.{os.getpid()}.tmp")
        tmp_dir = None
        if self.mode == "folder":
            tmp_dir = tempfile.mkdtemp(dir=self._folder, prefix=f".{self._name}.thumbs.")
        try:
            self._data.seek(0)
            with open(tmp_html, "w", encoding="ascii", newline="\n") as out:
                out.write(head)
                out.write(safe_json(self._summary(summary, interrupted)))
                out.write(middle)
                out.write("[\n")
                for n, line in enumerate(self._data):
                    thumb = self._thumb_ref(n, tmp_dir)
                    out.write(("," if n else "") + '{"t":' + thumb + "," + line[1:].decode("ascii"))
                out.write("]")
                out.write(tail)
            if tmp_dir is not None:
                _replace_folder(tmp_dir, self.thumb_dir)
                tmp_dir = None
            os.replace(tmp_html, self.target)
        except OSError as e:
            raise ReportError(f"--html {self.target}: cannot write the report ({e.strerror or e})") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp_html)
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def _thumb_ref(self, n: int, tmp_dir: str | None) -> str:
        """The record's thumbnail as the page data holds it: a data: URI, the
        number of its file in the folder, or null."""
        where = self._where.get(n)
        if where is None or self.mode == "none":
            return '"skipped"' if n in self._skipped else "null"
        self._spool.seek(where[0])
        data = self._spool.read(where[1])
        if tmp_dir is None:
            return '"data:image/jpeg;base64,' + base64.b64encode(data).decode("ascii") + '"'
        with open(os.path.join(tmp_dir, f"{n:06d}.jpg"), "wb") as f:
            f.write(data)
        return str(n)


def thumb_folder_name(report_name: str) -> str:
    """`report.html` -> `report.thumbs`."""
    stem = report_name[:-5] if report_name.lower().endswith(".html") else report_name
    return stem + ".thumbs"


def _replace_folder(new: str, old: str) -> None:
    """Put the new thumbnail folder in place of a previous report's (only a folder
    that holds nothing but thumbnails is ever removed)."""
    if os.path.lexists(old):
        if not os.path.isdir(old) or os.path.islink(old) or \
                any(not _THUMB_NAME.match(n) for n in os.listdir(old)):
            raise ReportError(f"{old} exists and is not a thumbnail folder of an earlier report; "
                              "move it or choose another report name")
        shutil.rmtree(old)
    os.rename(new, old)


def check_target(target: str) -> None:
    """Refuse an --html FILE that cannot be written, before the scan starts."""
    if target in ("", "-"):
        raise ReportError("--html writes a file: give a file name, e.g. --html report.html")
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise ReportError(f"--html {target}: the folder {parent} does not exist")
    if os.path.isdir(target):
        raise ReportError(f"--html {target} is a folder; give a file name")


# ---------------------------------------------------------------------------- from JSON Lines: `mai report`

def read_records(inputs: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The records of JSON Lines files and `--out-dir` folders (their shards in
    order); lines that are not records (a half-written last line) are skipped."""
    from scanner.shards import shard_files

    for inp in inputs:
        files = [os.path.join(inp, n) for n in shard_files(inp)] if os.path.isdir(inp) else [inp]
        for path in files:
            with open(path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("path"), str):
                        yield rec


def shipped_card(model_id: str) -> dict[str, Any]:
    """The threshold and band of a shipped model with this id (a report made from
    JSON Lines knows only the id); empty when it is no shipped model."""
    from mai.artifact import load_artifact, shipped_models

    for path in shipped_models().values():
        try:
            art = load_artifact(path)
        except Exception:  # noqa: BLE001 - a model folder being replaced: skip it
            continue
        if art.model_id == model_id:
            lo, hi = art.uncertain
            return {"threshold": art.threshold, "band": [lo, hi] if lo < hi else None}
    return {}


def report_from_jsonl(inputs: Sequence[str], target: str, *, thumbs: str = "all",
                      roots: Sequence[str] = ()) -> ReportWriter:
    """`mai report`: the page for records already written. Thumbnails are made
    from the files where they still are (paths as recorded, relative to the
    current folder); the roots default to the records' common folder."""
    for inp in inputs:
        if not os.path.exists(inp):
            raise ReportError(f"{inp}: no such file or folder")
    check_target(target)
    from collections import Counter

    ids: Counter[str] = Counter()
    paths: list[str] = []
    for rec in read_records(inputs):
        paths.append(rec["path"])
        if isinstance(rec.get("model"), str):
            ids[rec["model"]] += 1
    if not paths:
        raise ReportError(f"{', '.join(inputs)}: no mai.scan/1 records found")
    models = [{"id": m, "records": n, **shipped_card(m)} for m, n in ids.most_common()]
    roots = list(roots) or common_root(paths)
    del paths
    source = ", ".join(os.path.basename(os.path.normpath(i)) for i in inputs)
    writer = ReportWriter(target, roots=roots, thumbs=thumbs, models=models, source=source)
    try:
        for rec in read_records(inputs):
            writer.write(rec)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer
