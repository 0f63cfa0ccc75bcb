"""Decode: one file in, a small result out (runs in the worker processes).

Read -> sniff the content -> open the header -> pixel limit -> JPEG DCT scaling
when the model's first step shrinks the image anyway -> `mai.preprocess.prepare`
(EXIF orientation, every colour mode, the model's resize steps) -> provenance.
The result carries the uint8 array at the model's input size, never the
full-size image, so what crosses the process boundary is small and bounded.

Every failure is a result with an error kind, never an exception: `vanished`
(gone before it was opened), `io` (the OS refused or failed to read it),
`decode` (empty, not an image, corrupt, truncated), `too_large` (over the
pixel limit, from the header, before any pixel is decoded), `unsupported` (a
format with no decoder here, or not a regular file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mai.preprocess import PreprocessSpec, draft_size, prepare
from mai.provenance import read_provenance
from scanner.formats import HEAD_BYTES, heif_available, missing_codec, sniff

#: Default pixel limit: 180 MP, twice Pillow's own warning level. A 150 MP
#: medium-format frame passes; a decompression bomb (a small file whose header
#: promises gigapixels) does not.
DEFAULT_MAX_PIXELS = 180_000_000
MAX_SIDE = 1 << 20  # a side over a million pixels is absurd whatever the area
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
GPU_MAX_BYTES = 64 << 20  # the GPU path's readers hold whole files; a bigger one goes to the CPU decoder
#: In a decode worker process, one file's decode is stopped after this long: the
#: kernel ends the worker (SIGALRM at its default action works even inside a C
#: decoder loop that never returns to Python), and the engine's crash isolation
#: gives the file an error record. A 180 MP PNG decodes in about 10 s on one core.
DECODE_TIMEOUT_S = 60.0
#: ... and may grow the worker's address space by at most this much (RLIMIT_AS,
#: Linux): an allocation past it is a MemoryError, which is a `too_large` record.
#: A 180 MP image at the pixel limit needs about 1.3 GB (RGBA while decoding, RGB after).
DECODE_MEMORY_BYTES = 3 << 30

_watch_s: float | None = None  # the per-file timeout, armed by `init_worker` (worker processes only)
_memory_bound: int | None = None


@dataclass(slots=True)
class Decoded:
    """What a worker sends back for one file."""

    path: str
    array: np.ndarray | None  # uint8 (H, W, 3) at the model's input size, or None on error
    facts: dict[str, Any] = field(default_factory=dict)  # width, height, format, bytes, provenance
    error: tuple[str, str] | None = None  # (kind, message)
    # The GPU path's reader (gpu=True) decodes no pixels: a JPEG the GPU can take
    # comes back as its bytes and EXIF orientation, anything else with `cpu` set
    # to why it needs the CPU decoder (the worker processes then decode it).
    jpeg: bytearray | None = None
    orientation: int = 1
    cpu: str | None = None


def init_worker(timeout_s: float | None = DECODE_TIMEOUT_S, memory_bytes: int | None = DECODE_MEMORY_BYTES) -> None:
    """Once per worker process: our own pixel limit replaces Pillow's warning,
    Ctrl-C is the parent's to handle, HEIF registers when installed, and the
    per-file timeout and memory bound are set (None: none)."""
    global _watch_s, _memory_bound
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_pillow()
    if timeout_s and hasattr(signal, "setitimer"):  # POSIX only
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm ends the process, not a Python handler
        _watch_s = timeout_s
    if memory_bytes:
        _memory_bound = _limit_address_space(memory_bytes)


def _limit_address_space(extra: int) -> int | None:
    """RLIMIT_AS = what the worker maps now + `extra`; None where it cannot be set."""
    try:
        import resource  # POSIX only

        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = now + extra if hard == resource.RLIM_INFINITY else min(now + extra, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return extra
    except (ImportError, OSError, ValueError, AttributeError):  # not Linux, or a stricter limit already: leave it
        return None


@contextlib.contextmanager
def watched() -> Iterator[None]:
    """Arm the per-file timeout around one decode (a no-op outside worker processes)."""
    if _watch_s is None:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, _watch_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def configure_pillow() -> None:
    Image.MAX_IMAGE_PIXELS = None  # the header check below is the limit; Pillow's would only warn
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if heif_available():
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except Exception:  # noqa: BLE001 - a broken optional plugin leaves HEIF unsupported, no more
            pass


def _err(path: str, kind: str, message: str, facts: dict[str, Any] | None = None) -> Decoded:
    return Decoded(path, None, facts or {}, (kind, message))


def _oserror(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _exc(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "upright"
        return 1


def decode_file(path: str, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
                draft: bool = True, gpu: bool = False) -> Decoded:
    """Decode and preprocess one file; never raises for a bad file.

    `gpu=True` is the GPU path's reader: the same checks, but no pixel is decoded
    (see `Decoded.jpeg` and `Decoded.cpu`)."""
    try:
        # O_NONBLOCK: if a FIFO took the file's place since the walk, opening it
        # must not block the worker forever (it has no effect on regular files).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        f = os.fdopen(fd, "rb")
    except FileNotFoundError:
        return _err(path, "vanished", "the file vanished before it could be read")
    except IsADirectoryError:
        return _err(path, "unsupported", "a folder, not a file")
    except OSError as e:
        return _err(path, "io", f"cannot open: {_oserror(e)}")
    with f:
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return _err(path, "unsupported", "not a regular file")
            facts: dict[str, Any] = {"bytes": st.st_size}
            head = f.read(HEAD_BYTES)
            f.seek(0)
        except OSError as e:
            return _err(path, "io", f"cannot read: {_oserror(e)}")
        if not head:
            return _err(path, "decode", "empty file", facts)
        fmt = sniff(head)
        if fmt is None:
            return _err(path, "decode", f"not an image: the content is no format mai-scan reads (starts {head[:8]!r})",
                        facts)
        facts["format"] = fmt
        if gpu and fmt != "JPEG":
            return Decoded(path, None, facts, cpu=fmt)
        if (why := missing_codec(fmt)) is not None:
            return _err(path, "unsupported", why, facts)
        try:
            return _decode_open(path, f, fmt, spec, max_pixels, draft, facts, gpu)
        except MemoryError:
            bound = f" (over the bound of {_memory_bound / (1 << 30):g} GiB per decode)" if _memory_bound else ""
            return _err(path, "too_large", f"out of memory while decoding{bound}", facts)
        except Image.DecompressionBombError as e:
            return _err(path, "too_large", str(e), facts)
        except Image.UnidentifiedImageError:
            return _err(path, "decode", f"corrupt {fmt}: its header cannot be read", facts)
        except OSError as e:
            if e.errno is not None:  # the OS failed a read (EIO, ESTALE): not the file's content
                return _err(path, "io", f"read failed: {_oserror(e)}", facts)
            return _err(path, "decode", _exc(e), facts)
        except Exception as e:  # noqa: BLE001 - hostile files raise anything (SyntaxError, struct.error, ...)
            return _err(path, "decode", _exc(e), facts)


def _decode_open(path: str, f: Any, fmt: str, spec: PreprocessSpec, max_pixels: int, draft: bool,
                 facts: dict[str, Any], gpu: bool = False) -> Decoded:
    # Only the sniffed format's plugin may read it: a file that fails to be a
    # JPEG is never handed to Pillow's long tail of exotic readers.
    with Image.open(f, formats=[fmt]) as im:
        facts["format"] = im.format or fmt
        w, h = im.size
        if w <= 0 or h <= 0:
            return _err(path, "decode", f"impossible dimensions {w}x{h}", facts)
        facts["width"], facts["height"] = w, h
        # Size checks come before anything else touches the image: for a PNG,
        # reading EXIF (orientation) makes Pillow load the whole image.
        if max(w, h) > MAX_SIDE:
            return _err(path, "too_large", f"{w}x{h}: a side over {MAX_SIDE} pixels is not a real image", facts)
        if w * h > max_pixels:
            return _err(path, "too_large",
                        f"{w}x{h} is {w * h / 1e6:.1f} megapixels, over the limit of {max_pixels / 1e6:g} "
                        "megapixels (raise it with --max-pixels if the file is trusted)", facts)
        orientation = _orientation(im)
        swap = orientation in _SWAPPING_ORIENTATIONS
        facts["width"], facts["height"] = (h, w) if swap else (w, h)
        if gpu:
            return _gpu_ready(path, f, im, orientation, facts)
        if getattr(im, "is_animated", False):
            im.seek(0)  # the first frame stands for the animation
        if draft and im.format == "JPEG":
            # DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8 directly, never below
            # the size asked for. Ask in stored orientation: EXIF turns it later.
            upright = (h, w) if swap and spec.exif_transpose else (w, h)
            want = draft_size(spec, upright)
            if want is not None:
                im.draft(None, (want[1], want[0]) if swap and spec.exif_transpose else want)
        array = prepare(im, spec)
        facts["provenance"] = read_provenance(im, path)
    return Decoded(path, array, facts, None)


def _gpu_ready(path: str, f: Any, im: Image.Image, orientation: int, facts: dict[str, Any]) -> Decoded:
    """The GPU reader's result for a JPEG whose header passed every check."""
    facts["provenance"] = read_provenance(im, path)
    if im.mode not in ("RGB", "L"):  # CMYK/YCCK: nvJPEG's colour output would not be Pillow's
        return Decoded(path, None, facts, cpu=f"{im.mode} JPEG")
    if facts["bytes"] > GPU_MAX_BYTES:  # e.g. a video appended to a photo: not worth holding in memory
        return Decoded(path, None, facts, cpu=f"JPEG file over {GPU_MAX_BYTES >> 20} MB")
    # Read into a bytearray: torch wraps it without a copy (bytes are read-only).
    f.seek(0)
    data = bytearray(facts["bytes"])
    view, got = memoryview(data), 0
    while got < len(data) and (n := f.readinto(view[got:])):
        got += n
    del view
    if got < len(data):
        del data[got:]  # the file shrank since fstat
    # A truncated JPEG is an error record on the CPU path; nvJPEG might fill in the
    # missing rows silently, so a file without its end marker goes to Pillow.
    if not bytes(data[-64:]).rstrip(b"\0").endswith(b"\xff\xd9"):
        return Decoded(path, None, facts, cpu="JPEG without an end marker")
    return Decoded(path, None, facts, jpeg=data, orientation=orientation if 1 <= orientation <= 8 else 1)


def read_chunk(paths: list[str], spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft: bool = True) -> list[Decoded]:
    """The GPU path's reader (a thread): JPEG bytes for the GPU, or why not."""
    return [decode_file(p, spec, max_pixels, draft, gpu=True) for p in paths]


def decode_chunk(paths: list[str], spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: bool = True) -> list[Decoded]:
    """The unit of work sent to a worker process: a few files, one result each,
    each under the per-file timeout."""
    out = []
    for p in paths:
        with watched():
            out.append(decode_file(p, spec, max_pixels, draft))
    return out
