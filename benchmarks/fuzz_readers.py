"""Fuzz the code that reads untrusted bytes: the scanner's decode worker and the provenance readers.

    nice -n 10 python benchmarks/fuzz_readers.py --inputs 20000 --seed 0 --out fuzz-out --workers 2

A seed corpus is built in code (JPEG with EXIF orientation, XMP and a C2PA JUMBF
APP11 segment; PNG with tEXt/iTXt `parameters`, stealth pnginfo in the alpha or
RGB LSBs and a caBX JUMBF chunk; WebP with XMP, EXIF and a C2PA RIFF chunk;
ISO-BMFF (AVIF, HEIC when pillow-heif is installed, and a bare `ftyp`/`meta` box tree); GIF, TIFF, BMP; 10,000-deep
box nesting). Input `i` is a seed run through 1-3 mutators drawn from
`random.Random(f"{seed}:{i}")`, so any input is reproducible on its own: bit
flips, byte insert/delete, truncation, length fields (PNG chunks, JPEG segments,
RIFF chunks, ISO-BMFF/JUMBF boxes) set to 0 / 0xFFFFFFFF / small, duplicated
chunks, deep box nesting, huge declared sizes (PNG IHDR, JPEG SOF, GIF, BMP, WebP
VP8X), splices of two seeds.

Every input goes through every reader in forked worker processes, each held to
an address-space limit (RLIMIT_AS, 512 MB) and watched by the parent with a
per-input time limit (2 s; the worker is killed and replaced on a hang):

- `decode`: `scanner.decode.decode_file` (the CPU worker's per-file decode: sniff,
  header, pixel limit, EXIF orientation, preprocessing, provenance on the loaded image).
- `decode_gpu`: the same with `gpu=True` (the GPU path's header reader).
- `provenance`: `mai.provenance.read_provenance(im, path)` on an image opened but
  not loaded, as a library caller holds it (stealth pnginfo then decodes pixels;
  C2PA goes to c2pa-python when the container has a manifest store). Like the
  scanner, it is only called on an image that Pillow opens and that passes the
  scanner's pixel limit; otherwise the input counts as a handled error.

Outcomes: `ok`; `error` (handled: an error record from decode_file, an image that
Pillow refuses to open before the provenance reader); `crash` (an exception escaping
the reader, a result of the wrong shape, or the worker dying); `hang` (over the time
limit); `memory` (MemoryError escaping, or the worker killed by SIGKILL). Every
input that is not ok/error is written to `--out` with a line in `failures.jsonl`.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

READERS = ("decode", "decode_gpu", "provenance")
OUTCOMES = ("ok", "error", "crash", "hang", "memory")
TIME_LIMIT_S = 2.0
MEMORY_LIMIT = 512 << 20
RECYCLE_TASKS = 500  # like Pool(maxtasksperchild=...): a fresh worker now and then
DEEP = 10_000  # nesting depth of the deep-box seeds and mutator

A1111 = ("a cat on a sofa, best quality\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
         "Seed: 42, Size: 512x512, Model: sd15, Version: v1.10.1")
DST = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    'xmlns:dcterms="http://purl.org/dc/terms/">'
    f'<rdf:Description rdf:about="" xmp:CreatorTool="ComfyUI" Iptc4xmpExt:DigitalSourceType="{DST}" '
    'dcterms:provenance="https://example.com/manifest.c2pa"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
).encode()


# ----------------------------------------------------------------------------- seed corpus

def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _jumbf(depth: int = 1) -> bytes:
    """A C2PA manifest-store superbox (jumb > jumd 'c2pa'), wrapped `depth - 1` more times."""
    desc = _box(b"jumd", b"c2pa\x00\x11\x00\x10\x80\x00\xaa\x00\x38\x9b\x71" + b"\x03c2pa\x00")
    body = _box(b"jumb", desc + _box(b"json", b'{"a":1}'))
    if depth > 1:
        # Build from the inside out with one join: 8-byte headers around the body.
        sizes = [len(body) + 8 * k for k in range(1, depth)]
        body = b"".join(struct.pack(">I", s) + b"jumb" for s in reversed(sizes)) + body
    return body


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _insert_png_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    at = 8 + 8 + 13 + 4  # right after IHDR
    return png[:at] + _png_chunk(kind, data) + png[at:]


def _insert_jpeg_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def _riff_add(webp: bytes, fourcc: bytes, data: bytes) -> bytes:
    chunk = fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")
    body = webp[12:] + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _photo(w: int, h: int, seed: int, mode: str = "RGB") -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR).convert(mode)


def _encode(im: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _stealth(signature: str, text: str, size: tuple[int, int] = (48, 40)) -> Any:
    """sd-webui-stealth-pnginfo: signature, 32-bit length in bits, payload, column by column."""
    import gzip

    import numpy as np
    from PIL import Image

    payload = text.encode()
    if signature.endswith("comp"):
        payload = gzip.compress(payload, mtime=0)
    bits = np.unpackbits(np.frombuffer(signature.encode() + struct.pack(">I", 8 * len(payload)) + payload, np.uint8))
    w, h = size
    px = np.random.default_rng(1).integers(0, 256, (h, w, 4), dtype=np.uint8)
    px[:, :, 3] = 255
    bands = [3] if "png" in signature else [0, 1, 2]
    stream = px[:, :, bands].transpose(1, 0, 2).reshape(-1)
    stream[: len(bits)] = (stream[: len(bits)] & 0xFE) | bits
    px[:, :, bands] = stream.reshape(w, h, len(bands)).transpose(1, 0, 2)
    return Image.fromarray(px, "RGBA")


def seeds() -> dict[str, bytes]:
    """The seed corpus, built in code (deterministic)."""
    from PIL import Image, PngImagePlugin, features

    from scanner.formats import heif_available

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0131] = "ComfyUI"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode("utf-16-be")
    exif_bytes = exif.tobytes()
    out: dict[str, bytes] = {}
    jpeg = _encode(_photo(40, 24, 1), "JPEG", quality=80, exif=exif_bytes, xmp=XMP, comment=A1111)
    out["jpeg_exif_xmp"] = jpeg
    out["jpeg_c2pa"] = _insert_jpeg_segment(_encode(_photo(24, 16, 2), "JPEG"), 0xEB,
                                            b"JP\x00\x01\x00\x00\x00\x01" + _jumbf())
    # One APP11 segment holds at most 65,533 bytes: 8,000 levels of 8-byte headers fit.
    out["jpeg_c2pa_deep"] = _insert_jpeg_segment(_encode(_photo(16, 16, 3), "JPEG"), 0xEB,
                                                 b"JP\x00\x01\x00\x00\x00\x01" + _jumbf(8000))
    out["jpeg_progressive_cmyk"] = _encode(_photo(32, 32, 4, "CMYK"), "JPEG", progressive=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    info.add_itxt("parameters", A1111.replace("v1.10.1", "f2.0.1v1.10.1"))
    info.add_text("Software", "NovelAI")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    out["png_text"] = _encode(_photo(32, 24, 5), "PNG", pnginfo=info, exif=exif_bytes)
    out["png_stealth_alpha"] = _encode(_stealth("stealth_pnginfo", A1111), "PNG")
    out["png_stealth_rgbcomp"] = _encode(_stealth("stealth_rgbcomp", '{"Software": "NovelAI", "steps": 28}'), "PNG")
    out["png_palette_interlaced"] = _encode(_photo(24, 24, 6, "P"), "PNG", interlace=1)
    small = _encode(_photo(16, 16, 7), "PNG")
    out["png_cabx"] = _insert_png_chunk(small, b"caBX", _jumbf())
    out["png_cabx_deep"] = _insert_png_chunk(small, b"caBX", _jumbf(DEEP))
    if features.check("webp"):
        webp = _encode(_stealth("stealth_pnginfo", A1111, (48, 40)), "WEBP", lossless=True, exif=exif_bytes, xmp=XMP)
        out["webp_xmp"] = webp
        out["webp_c2pa"] = _riff_add(_encode(_photo(16, 16, 8), "WEBP", quality=50), b"C2PA", _jumbf())
    if features.check("avif"):
        try:
            out["avif"] = _encode(_photo(16, 16, 9), "AVIF", quality=30, xmp=XMP)
        except Exception:  # an AVIF plugin that reads but cannot write: the synthetic tree below stays
            pass
    if heif_available():
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            out["heic"] = _encode(_photo(16, 16, 13), "HEIF", quality=30, exif=exif_bytes, xmp=XMP)
        except Exception:  # no HEVC encoder in this libheif: the synthetic trees below stay
            pass
    ftyp = _box(b"ftyp", b"avif\x00\x00\x00\x00avifmif1miaf")
    meta = _box(b"meta", b"\x00\x00\x00\x00" + _box(b"hdlr", b"\x00" * 8 + b"pict" + b"\x00" * 13)
                + _box(b"pitm", b"\x00\x00\x00\x00\x00\x01")
                + _box(b"iprp", _box(b"ipco", _box(b"ispe", b"\x00" * 4 + struct.pack(">II", 16, 16))))
                + _box(b"uuid", b"\xd8\xfe\xc3\xd6\x1b\x0e\x48\x3c\x92\x97\x58\x28\x87\x7e\xc4\x81" + _jumbf()))
    out["bmff_tree"] = ftyp + meta + _box(b"mdat", b"\x00" * 32)
    nested = b"".join(struct.pack(">I", 8 * (DEEP - k)) + b"meta" for k in range(DEEP))
    out["bmff_deep"] = _box(b"ftyp", b"heic\x00\x00\x00\x00mif1heic") + nested
    out["gif_comment"] = _encode(_photo(16, 16, 10, "P"), "GIF", comment=b"made with Midjourney")
    out["tiff_xmp"] = _encode(_photo(16, 16, 11), "TIFF", tiffinfo={700: XMP, 305: "DreamStudio"})
    out["bmp"] = _encode(_photo(16, 8, 12), "BMP")
    return out


# ----------------------------------------------------------------------------- structure

def units(data: bytes) -> list[tuple[int, int, int, int, str]]:
    """The length-prefixed units of `data`: (start, end, length offset, length size, byte order).

    PNG chunks, JPEG segments before the scan, RIFF chunks, and ISO-BMFF/JUMBF
    boxes (nested ones too, up to 200). Best effort on a mutated file.
    """
    found: list[tuple[int, int, int, int, str]] = []
    n = len(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 12 <= n and len(found) < 200:
            length = struct.unpack_from(">I", data, i)[0]
            end = min(n, i + 12 + length)
            found.append((i, end, i, 4, ">"))
            i = end
    elif data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= n and data[i] == 0xFF and len(found) < 200:
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack_from(">H", data, i + 2)[0]
            end = min(n, i + 2 + length)
            found.append((i, end, i + 2, 2, ">"))
            if marker in (0xDA, 0xD9):
                break
            i = max(end, i + 4)
    elif data[:4] == b"RIFF":
        found.append((0, n, 4, 4, "<"))
        i = 12
        while i + 8 <= n and len(found) < 200:
            size = struct.unpack_from("<I", data, i + 4)[0]
            end = min(n, i + 8 + size + (size & 1))
            found.append((i, end, i + 4, 4, "<"))
            i = end
    # Boxes anywhere (ISO-BMFF top level, JUMBF inside APP11/caBX/C2PA): look for known four-CCs.
    for kind in (b"ftyp", b"meta", b"mdat", b"iprp", b"ipco", b"ispe", b"jumb", b"jumd", b"json", b"uuid", b"hdlr"):
        start = 0
        while len(found) < 400 and (at := data.find(kind, start)) != -1:
            start = at + 4
            if at >= 4:
                size = struct.unpack_from(">I", data, at - 4)[0]
                found.append((at - 4, min(n, at - 4 + max(size, 8)), at - 4, 4, ">"))
    return found


def _put_uint(data: bytearray, off: int, size: int, endian: str, value: int) -> None:
    value &= (1 << (8 * size)) - 1
    data[off:off + size] = value.to_bytes(size, "big" if endian == ">" else "little")


# ----------------------------------------------------------------------------- mutators

def m_bitflip(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    for _i in range(r.choice((1, 1, 2, 4, 8, 32))):
        if d:
            d[r.randrange(len(d))] ^= 1 << r.randrange(8)
    return d


def m_insert(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    at = r.randrange(len(d) + 1)
    blob = r.choice((bytes(r.randrange(256) for _ in range(r.randint(1, 16))), b"\xff" * r.randint(1, 64),
                     b"\x00" * r.randint(1, 4096)))
    d[at:at] = blob
    return d


def m_delete(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    if d:
        at = r.randrange(len(d))
        del d[at:at + r.choice((1, 2, 4, 16, 256))]
    return d


def m_truncate(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    return d[: r.randrange(len(d) + 1)] if d else d


def m_length(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    """A chunk/segment/box length field set to 0, all ones, a small or a random value."""
    found = units(bytes(d))
    if not found:
        return m_bitflip(r, d, _)
    for _i in range(r.choice((1, 1, 2, 3))):
        _s, _e, off, size, endian = r.choice(found)
        value = r.choice((0, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 1, 2, 7, 8, 9, 16, r.getrandbits(8 * size)))
        _put_uint(d, off, size, endian, value)
    return d


def m_duplicate(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    found = units(bytes(d))
    if not found:
        return m_insert(r, d, _)
    start, end, *_rest = r.choice(found)
    unit = bytes(d[start:end])
    for _i in range(r.choice((1, 1, 2, 50))):
        d[end:end] = unit
    return d


def m_deep(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    """Deeply nested boxes where this format keeps them (caBX, APP11, a BMFF box, RIFF C2PA)."""
    depth = r.choice((100, 1000, DEEP))
    data = bytes(d)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 33:
        return bytearray(_insert_png_chunk(data, b"caBX", _jumbf(depth)))
    if data[:2] == b"\xff\xd8":
        return bytearray(_insert_jpeg_segment(data, 0xEB, b"JP\x00\x01\x00\x00\x00\x01" + _jumbf(min(depth, 8000))))
    if data[:4] == b"RIFF":
        return bytearray(_riff_add(data, b"C2PA", _jumbf(depth)))
    kinds = (b"meta", b"iprp", b"jumb")
    nested = b"".join(struct.pack(">I", 8 * (depth - k) + 8) + r.choice(kinds) for k in range(depth))
    at = r.randrange(len(d) + 1)
    d[at:at] = nested + b"\x00" * 8
    return d


def m_huge_size(r: random.Random, d: bytearray, _: dict[str, bytes]) -> bytearray:
    """Huge (or zero) declared image sizes: PNG IHDR, JPEG SOF, GIF, BMP, WebP VP8X, BMFF ispe."""
    big = r.choice((0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 100_000, 1 << 20, (1 << 20) + 1))
    data = bytes(d)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(d) >= 24:
        _put_uint(d, 16 + 4 * r.randrange(2), 4, ">", big)
        if r.random() < 0.5:
            _put_uint(d, 16 + 4 * r.randrange(2), 4, ">", big)
    elif data[:2] == b"\xff\xd8":
        sofs = [i for i in range(len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2)]
        if sofs:
            at = r.choice(sofs)
            _put_uint(d, at + 5 + 2 * r.randrange(2), 2, ">", big)
    elif data[:3] == b"GIF" and len(d) >= 10:
        _put_uint(d, 6 + 2 * r.randrange(2), 2, "<", big)
    elif data[:2] == b"BM" and len(d) >= 26:
        _put_uint(d, 18 + 4 * r.randrange(2), 4, "<", big if r.random() < 0.8 else -big)
    elif data[:4] == b"RIFF" and (at := data.find(b"VP8X")) != -1 and at + 18 <= len(d):
        _put_uint(d, at + 12 + 3 * r.randrange(2), 3, "<", big)
    elif (at := data.find(b"ispe")) != -1 and at + 16 <= len(d):
        _put_uint(d, at + 8 + 4 * r.randrange(2), 4, ">", big)
    else:
        return m_length(r, d, _)
    return d


def m_splice(r: random.Random, d: bytearray, corpus: dict[str, bytes]) -> bytearray:
    other = corpus[r.choice(sorted(corpus))]
    return d[: r.randrange(len(d) + 1)] + bytearray(other[r.randrange(len(other) + 1):])


MUTATORS: dict[str, Callable[[random.Random, bytearray, dict[str, bytes]], bytearray]] = {
    "bitflip": m_bitflip, "insert": m_insert, "delete": m_delete, "truncate": m_truncate,
    "length": m_length, "duplicate": m_duplicate, "deep": m_deep, "huge_size": m_huge_size, "splice": m_splice,
}
_WEIGHTS = {"bitflip": 4, "insert": 2, "delete": 2, "truncate": 2, "length": 4, "duplicate": 2, "deep": 1,
            "huge_size": 3, "splice": 1}


def fix_png_crcs(d: bytearray) -> bytearray:
    """Recompute every PNG chunk CRC that still fits, so that a mutation reaches the
    chunk parsers instead of stopping at Pillow's CRC check."""
    if d[:8] != b"\x89PNG\r\n\x1a\n":
        return d
    i = 8
    while i + 12 <= len(d):
        length = struct.unpack_from(">I", d, i)[0]
        end = i + 8 + length
        if end + 4 > len(d):
            break
        d[end:end + 4] = struct.pack(">I", zlib.crc32(d[i + 4:end]) & 0xFFFFFFFF)
        i = end + 4
    return d


def make_input(corpus: dict[str, bytes], seed: int, i: int) -> tuple[str, bytes]:
    """Input `i` of campaign `seed`: (its recipe, its bytes). Reproducible on its own."""
    r = random.Random(f"{seed}:{i}")
    names = sorted(corpus)
    name = names[i % len(names)]  # every seed gets its share
    d = bytearray(corpus[name])
    steps = r.choices(sorted(_WEIGHTS), [_WEIGHTS[k] for k in sorted(_WEIGHTS)], k=r.choice((1, 1, 2, 3)))
    for step in steps:
        d = MUTATORS[step](r, d, corpus)
        if len(d) > 2 << 20:
            del d[2 << 20:]
    if r.random() < 0.85:  # most inputs get valid CRCs, a few keep the broken ones
        d = fix_png_crcs(d)
    return f"{name}+{'+'.join(steps)}", bytes(d)


# ----------------------------------------------------------------------------- readers (in the worker)

def _read_decode(path: str, gpu: bool) -> tuple[str, str]:
    import numpy as np

    from mai.preprocess import CIFAKE_SPEC
    from scanner.decode import Decoded, decode_file

    d = decode_file(path, CIFAKE_SPEC, gpu=gpu)
    if not isinstance(d, Decoded):
        return "crash", f"decode_file returned {type(d).__name__}"
    if d.error is not None:
        kind, message = d.error
        if not (isinstance(kind, str) and isinstance(message, str) and message):
            return "crash", f"malformed error record {d.error!r}"
        head = message.split(":", 1)[0]
        # The exception type behind a `decode` record ("ValueError: ..."), so that the
        # summary shows what the broad handler in decode_file absorbed.
        return "error", f"{kind}/{head}" if head.isidentifier() and head[:1].isupper() else kind
    if gpu:
        if d.jpeg is None and d.cpu is None:
            return "crash", "gpu result with neither JPEG bytes nor a CPU reason"
        json.dumps(d.facts.get("provenance", []))
        return "ok", "jpeg" if d.jpeg is not None else "cpu"
    a = d.array
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3):
        return "crash", f"bad array {getattr(a, 'shape', a)!r}"
    json.dumps(d.facts.get("provenance", []))
    return "ok", d.facts.get("format", "")


def _read_provenance(path: str) -> tuple[str, str]:
    from PIL import Image

    from mai.provenance import read_provenance
    from scanner.decode import DEFAULT_MAX_PIXELS, MAX_SIDE
    from scanner.formats import sniff

    with open(path, "rb") as f:
        fmt = sniff(f.read(32))
    try:
        im = Image.open(path, formats=[fmt] if fmt else None)
        w, h = im.size
    except Exception as e:  # Pillow refused it: the scanner's decode error, before any provenance read
        return "error", f"open: {type(e).__name__}"
    with im:
        if w <= 0 or h <= 0 or max(w, h) > MAX_SIDE or w * h > DEFAULT_MAX_PIXELS:
            return "error", "too_large"
        signals = read_provenance(im, path)
    if not isinstance(signals, list) or not all(isinstance(s, dict) and "signal" in s for s in signals):
        return "crash", f"read_provenance returned {signals!r:.200}"
    json.dumps(signals)
    return "ok", ",".join(sorted({s["signal"] for s in signals}))


def run_reader(reader: str, path: str) -> tuple[str, str]:
    """One reader on one file, classified (in the calling process: the worker)."""
    try:
        if reader == "provenance":
            return _read_provenance(path)
        return _read_decode(path, gpu=reader == "decode_gpu")
    except MemoryError:
        return "memory", "MemoryError escaped"
    except BaseException as e:  # noqa: BLE001 - anything escaping a reader is the finding
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
        return "crash", f"{type(e).__name__}: {str(e)[:200]} at {where}"


_SWALLOWED: list[str] = []  # exceptions a reader's own handler absorbed during the current task


def _watch(module: Any, name: str) -> None:
    """Wrap `module.name` so that an exception passing through it is noted (and re-raised):
    read_provenance and decode_file turn every exception into "no signal" or an error
    record, which is right for a hostile file but would also hide a bug of ours."""
    inner = getattr(module, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
            _SWALLOWED.append(f"{name}: {type(e).__name__} at {where}")
            raise

    setattr(module, name, watched)


def _watch_readers() -> None:
    import mai.provenance as prov
    import scanner.decode as dec

    for name in ("_png_text", "_exif", "_xmp", "_iptc", "_comment", "_stealth", "_c2pa_remote"):
        _watch(prov, name)
    _watch(dec, "_decode_open")


def _worker(conn: Connection, tmp: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")  # Pillow's warnings about broken tags: the outcome is what counts
    resource_limit()
    from scanner.decode import configure_pillow

    configure_pillow()
    _watch_readers()
    parent = os.getppid()
    path = os.path.join(tmp, f"input-{os.getpid()}")
    conn.send(("ready",))
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:  # the parent died without a word (a sibling holds our pipe open)
                    return
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        idx, reader, data = task
        with open(path, "wb") as f:
            f.write(data)
        _SWALLOWED.clear()
        outcome, detail = run_reader(reader, path)
        conn.send((idx, reader, outcome, detail, sorted(set(_SWALLOWED))))


def resource_limit() -> None:
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass


# ----------------------------------------------------------------------------- the pool (in the parent)

class _Slot:
    def __init__(self, ctx: Any, tmp: str) -> None:
        self.ctx, self.tmp = ctx, tmp
        self.task: tuple[int, str, bytes] | None = None
        self.last: tuple[int, str, bytes] | None = None
        self.deadline = 0.0
        self.done = 0
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.tmp), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(60) or self.conn.recv() != ("ready",):
            raise RuntimeError("a fuzz worker failed to start")
        self.done = 0

    def restart(self) -> None:
        self.kill()
        self._start()

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join()
        self.conn.close()

    def send(self, task: tuple[int, str, bytes], limit: float) -> None:
        self.task = task
        self.conn.send(task)
        self.deadline = time.monotonic() + limit


def run_tasks(tasks: Iterator[tuple[int, str, bytes]], workers: int,
              limit: float = TIME_LIMIT_S) -> Iterator[tuple[int, str, str, str, float]]:
    """Run (index, reader, bytes) tasks; yield (index, reader, outcome, detail, seconds, swallowed) as they
    finish; `swallowed` lists the exceptions the reader's own handlers absorbed."""
    # Fork: the workers inherit the imported modules (a replacement starts in milliseconds).
    import mai.provenance
    import scanner.decode  # noqa: F401

    mai.provenance._import_c2pa()
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="mai-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        slots = [_Slot(ctx, tmp) for _ in range(max(1, workers))]
        pending = iter(tasks)
        exhausted = False
        try:
            while True:
                for s in slots:
                    if s.task is None and not exhausted:
                        nxt = next(pending, None)
                        if nxt is None:
                            exhausted = True
                        else:
                            if s.done >= RECYCLE_TASKS:
                                s.restart()
                            try:
                                s.send(nxt, limit)
                            except OSError:  # the worker died after its last answer (exit hooks, a thread)
                                s.proc.join()
                                code = s.proc.exitcode
                                if s.last is not None:
                                    yield (s.last[0], s.last[1], "memory" if code == -signal.SIGKILL else "crash",
                                           f"worker died after answering (exit {code})", 0.0, [])
                                s.restart()
                                s.send(nxt, limit)
                busy = [s for s in slots if s.task is not None]
                if not busy:
                    return
                now = time.monotonic()
                timeout = max(0.0, min(s.deadline for s in busy) - now)
                ready = wait([s.conn for s in busy], timeout)
                now = time.monotonic()
                for s in busy:
                    assert s.task is not None
                    idx, reader, _data = s.task
                    spent = limit - (s.deadline - now)
                    if s.conn in ready:
                        try:
                            _i, _r, outcome, detail, swallowed = s.conn.recv()
                        except (EOFError, OSError):
                            s.proc.join()
                            code = s.proc.exitcode
                            outcome = "memory" if code == -signal.SIGKILL else "crash"
                            detail, swallowed = f"worker died (exit {code})", []
                            s.restart()
                        s.last, s.task = s.task, None
                        s.done += 1
                        yield idx, reader, outcome, detail, spent, swallowed
                    elif now >= s.deadline:
                        s.restart()
                        s.task = None
                        yield idx, reader, "hang", f"over {limit:g} s", spent, []
        finally:
            for s in slots:
                s.kill()


def campaign(n: int, seed: int, workers: int, out: Path | None = None, extra: dict[str, bytes] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Run `n` generated inputs (plus `extra`, named regression inputs) through every reader."""
    from scanner.decode import configure_pillow

    configure_pillow()
    corpus = seeds()
    fixed: list[tuple[str, bytes]] = [(f"seed:{k}", v) for k, v in sorted(corpus.items())]
    fixed += [(f"extra:{k}", v) for k, v in sorted((extra or {}).items())]
    base = len(fixed)

    def get_input(i: int) -> tuple[str, bytes]:
        # Generated on the fly and again for a failure: the parent holds no corpus of
        # mutants, which its forked workers would inherit into their address-space limit.
        return fixed[i] if i < base else make_input(corpus, seed, i - base)

    counts: dict[str, Counter[str]] = {r: Counter() for r in READERS}
    details: dict[str, Counter[str]] = {r: Counter() for r in READERS}
    swallowed_all: dict[str, Counter[str]] = {r: Counter() for r in READERS}
    failures: list[dict[str, Any]] = []
    slowest: dict[str, Any] = {"seconds": 0.0}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    total = base + n
    tasks = ((i, reader, data) for i in range(total) for data in (get_input(i)[1],) for reader in READERS)
    for k, (i, reader, outcome, detail, spent, swallowed) in enumerate(run_tasks(tasks, workers), 1):
        counts[reader][outcome] += 1
        swallowed_all[reader].update(swallowed)
        if outcome in ("ok", "error"):
            if spent > slowest["seconds"]:
                slowest = {"seconds": spent, "input": i, "reader": reader, "recipe": get_input(i)[0]}
            details[reader][f"{outcome}:{detail.split(',')[0] if outcome == 'ok' else detail}"] += 1
        else:
            name, data = get_input(i)
            rec = {"input": i, "recipe": name, "reader": reader, "outcome": outcome, "detail": detail,
                   "seed": seed, "generated": i >= base}
            failures.append(rec)
            if out is not None:
                fname = f"{reader}-{outcome}-{i:07d}.bin"
                (out / fname).write_bytes(data)
                with open(out / "failures.jsonl", "a") as f:
                    f.write(json.dumps({**rec, "file": fname}) + "\n")
        if progress and k % 3000 == 0:
            el = time.monotonic() - t0
            print(f"  {k // len(READERS)} inputs, {el:.0f} s, {len(failures)} failures", file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    return {"inputs": total, "generated": n, "seed": seed, "workers": workers, "wall_s": wall,
            "inputs_per_s": total / wall if wall else 0.0, "slowest_handled": slowest,
            "counts": {r: dict(c) for r, c in counts.items()}, "details": {r: dict(c) for r, c in details.items()},
            "swallowed": {r: dict(c) for r, c in swallowed_all.items()},
            "failures": failures}


def table(result: dict[str, Any]) -> str:
    rows = [f"| reader | {' | '.join(OUTCOMES)} |", "|---|" + "---:|" * len(OUTCOMES)]
    for r in READERS:
        c = result["counts"][r]
        rows.append(f"| {r} | {' | '.join(str(c.get(o, 0)) for o in OUTCOMES)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=2000, help="generated inputs (the seeds are run too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"), help="folder for failing inputs")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--json", type=Path, help="also write the full result here")
    args = ap.parse_args(argv)
    result = campaign(args.inputs, args.seed, args.workers, args.out, progress=True)
    print(f"{result['inputs']} inputs ({result['generated']} generated, seed {args.seed}) x {len(READERS)} readers, "
          f"{args.workers} workers: {result['wall_s']:.1f} s, {result['inputs_per_s']:.1f} inputs/s, "
          f"slowest handled input {result['slowest_handled']['seconds']:.2f} s ({result['slowest_handled']})")
    print(table(result))
    for r in READERS:
        top = sorted(result["details"][r].items(), key=lambda kv: -kv[1])[:8]
        print(f"{r}: " + ", ".join(f"{k} {v}" for k, v in top))
    for r in READERS:
        for where, count in sorted(result["swallowed"][r].items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {r} absorbed {count}x {where}")
    for f in result["failures"][:30]:
        print(f"FAIL {f['reader']} {f['outcome']} input {f['input']} ({f['recipe']}): {f['detail']}")
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items()}, indent=1))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
