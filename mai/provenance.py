"""Provenance: what an image's metadata says about where it came from.

`read_provenance(im, path)` lists the AI-related signals found in an image that
Pillow has already opened, plus any C2PA manifest. Each signal is a small
JSON-serialisable dict::

    {"signal": "png:parameters", "where": "PNG tEXt", "generator": "AUTOMATIC1111", "ai": True}

Sources, cheapest first; only stealth PNG info looks at pixels:

- PNG text chunks (`im.info`): generator keys (AUTOMATIC1111/Forge/SD.Next/SwarmUI
  `parameters`, ComfyUI `prompt`/`workflow`, InvokeAI `invokeai_metadata`/
  `invokeai_graph`/`sd-metadata`/`Dream`, Fooocus `fooocus_scheme`), NovelAI's
  `Software` + JSON `Comment`, and AI words in `Software`/`Source`/`Description`/
  `Title`/`Author`. Pillow puts the chunks that precede the image data in
  `im.info` at open time (where every generator writes them); chunks after the
  image data only appear once the image has been loaded. `im.text` is not used
  because it forces a pixel decode.
- EXIF (`Software`, `ImageDescription`, `Artist`, `Make`, `Model`, `UserComment`):
  AUTOMATIC1111 parameters (as A1111 writes them into JPEG/WebP UserComment) or a
  known AI generator's name.
- XMP: `DigitalSourceType` (attribute, element or rdf:resource form) with one of
  IPTC's AI values; the generator is taken from `xmp:CreatorTool` when present.
- IPTC-IIM (JPEG APP13, TIFF tag 33723): a digital-source-type newscode URI.
- The JPEG/GIF/WebP comment: AUTOMATIC1111 parameters or an AI generator's name.
- Stealth PNG info (AUTOMATIC1111/Forge's sd-webui-stealth-pnginfo, NovelAI): the
  generation parameters hidden in the least significant bits of the alpha channel
  (signature `stealth_pnginfo`, or `stealth_pngcomp` for gzip) or of R, G, B
  (`stealth_rgbinfo`/`stealth_rgbcomp`), read column by column, then a 32-bit
  length in bits and the payload. It survives a step that strips PNG text chunks.
  The one source that reads pixels, so PNG and WebP only (lossless formats; a
  JPEG never pays for it), alpha modes for the alpha form, RGB/RGBA for the RGB
  form. The pixels of the first column that hold the signature (120 with alpha,
  40 in RGB) are read first, and nothing more unless it matches. `mai-scan` calls
  this after decoding the image, so that costs microseconds; a caller holding an
  image that is not yet loaded pays for Pillow's decode of it (a PNG decodes
  whole). A length past the image, bad gzip, bad UTF-8 or control characters in
  the text mean garbage: no signal. Reported as
  ``{"signal": "png:stealth_pnginfo", "where": "PNG alpha LSB", ...}`` (the format,
  then the signature); the generator is NovelAI for its JSON, else read from the
  text like a `parameters` chunk.
- C2PA, only when `c2pa-python` is importable (the import is tried once per
  process) and a cheap look at the container
  (JPEG APP11 segments already held by Pillow, TIFF tag 52545, the PNG chunks
  before the image data, the WebP RIFF chunks) finds a manifest store. A manifest
  is always listed; `ai` is true when an action carries an AI `digitalSourceType`
  (in the active manifest or an ingredient's).
- Remote C2PA manifest: XMP `dcterms:provenance` (attribute, element or
  rdf:resource form) holding an http(s) URL, in a file with no embedded manifest
  store (`self#jumbf=...` references are the embedded kind). It is never fetched
  (a scan makes no network request); the signal says a manifest is referenced::

      {"signal": "c2pa:remote", "where": "XMP dcterms:provenance", "generator": None,
       "ai": False, "url": "https://..."}

  `ai` is false, so it never decides a verdict; `url` (printable characters only,
  at most 2048) is the one extra key any signal has.

Plain camera or editor metadata ("GIMP 2.10", "Adobe Photoshop 25.0") gives no
signal: a missing signal means nothing (metadata is easily stripped). The function
never raises: a broken or hostile field is skipped, and every value read is capped.
"""

from __future__ import annotations

import codecs
import html
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image, PngImagePlugin

__all__ = ["read_provenance"]

_CAP = 64 * 1024  # most of a text value we ever look at: generators put their markers up front
_XMP_CAP = 1024 * 1024  # XMP packets carry long edit histories; the regex scan is C-speed
_NAME_MAX = 80

# PNG text keys whose mere presence is a generator's claim, and who writes them.
_PNG_KEYS: dict[str, str] = {
    "parameters": "AUTOMATIC1111",  # refined below: Forge, SD.Next, Fooocus, SwarmUI
    "prompt": "ComfyUI",
    "workflow": "ComfyUI",
    "invokeai_metadata": "InvokeAI",
    "invokeai_graph": "InvokeAI",
    "sd-metadata": "InvokeAI",
    "Dream": "InvokeAI",
    "fooocus_scheme": "Fooocus",
}
# PNG text keys that are ordinary metadata, flagged only when they name an AI generator.
_PNG_FREE_TEXT = ("Software", "Source", "Description", "Title", "Author")

# Lower-case needles -> generator, most specific first. Only words that do not occur
# in ordinary photo captions (no "dalle", "imagen", "flux", "kandinsky": real words).
_AI_WORDS: tuple[tuple[str, str], ...] = (
    ("novelai", "NovelAI"),
    ("midjourney", "Midjourney"),
    ("dall-e", "DALL-E/OpenAI"),
    ("dall\u00b7e", "DALL-E/OpenAI"),
    ("openai", "DALL-E/OpenAI"),
    ("chatgpt", "DALL-E/OpenAI"),
    ("gpt-image", "DALL-E/OpenAI"),
    ("gpt-4o", "DALL-E/OpenAI"),
    ("automatic1111", "AUTOMATIC1111"),
    ("stable-diffusion-webui", "AUTOMATIC1111"),
    ("comfyui", "ComfyUI"),
    ("invokeai", "InvokeAI"),
    ("fooocus", "Fooocus"),
    ("adobe firefly", "Firefly"),
    ("firefly image", "Firefly"),
    ("dreamstudio", "DreamStudio"),
    ("stability ai", "Stable Diffusion"),
    ("stability.ai", "Stable Diffusion"),
    ("stable diffusion", "Stable Diffusion"),
    ("stablediffusion", "Stable Diffusion"),
    ("sdxl", "Stable Diffusion"),
    ("black forest labs", "FLUX"),
    ("flux.1", "FLUX"),
    ("leonardo.ai", "Leonardo.Ai"),
    ("ideogram.ai", "Ideogram"),
    ("bing image creator", "Bing Image Creator"),
    ("google imagen", "Imagen"),
    ("made with google ai", "Google AI"),
    ("craiyon", "Craiyon"),
    ("nightcafe", "NightCafe"),
    ("runwayml", "Runway"),
    ("diffusionbee", "DiffusionBee"),
)

# IPTC digital source types that claim generation by an algorithm.
_AI_SOURCE_TYPES = frozenset(
    {"trainedalgorithmicmedia", "compositewithtrainedalgorithmicmedia", "algorithmicmedia", "compositesynthetic"}
)

# EXIF tags read, by id. UserComment normally sits in the Exif sub-IFD; some writers
# put it in IFD0, so both are looked at.
_EXIF_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x013B: "Artist"}
_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769

# A1111-style parameters: "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: ..., Version: v1.10.1"
_A1111_RE = re.compile(r"Steps: \d+, (?:Sampler|CFG scale|Seed|Schedule type): ")
_VERSION_RE = re.compile(r"Version: ([^,\n]{0,100})")
# Tolerant XMP matches, on bytes: attribute, element, or rdf:resource form.
_DST_RE = re.compile(rb"""igitalSourceType(?:\s*=\s*["']|\s*>\s*|\s+rdf:resource\s*=\s*["'])([^"'<>\s]{1,300})""")
_CREATOR_TOOL_RE = re.compile(rb"""CreatorTool(?:\s*=\s*["']([^"']{1,300})|\s*>\s*([^<]{1,300})<)""")
_IIM_DST_RE = re.compile(rb"digitalsourcetype/(\w{1,60})", re.IGNORECASE)
# C2PA's reference to its manifest (c2pa-rs writes and reads dcterms:provenance).
_PROVENANCE_RE = re.compile(
    rb"""dcterms:provenance(?:\s*=\s*["']([^"'<>]{1,8192})|\s*>\s*([^<]{1,8192})<|\s+rdf:resource\s*=\s*["']([^"'<>]{1,8192}))"""
)
_URL_MAX = 2048

# Stealth PNG info: signature -> (bands read, gzip?). Each band of each pixel gives one bit.
_STEALTH: dict[str, tuple[str, bool]] = {
    "stealth_pnginfo": ("A", False),
    "stealth_pngcomp": ("A", True),
    "stealth_rgbinfo": ("RGB", False),
    "stealth_rgbcomp": ("RGB", True),
}
_STEALTH_SIG_BITS = 15 * 8  # every signature is 15 ASCII characters
_STEALTH_HEAD_BITS = _STEALTH_SIG_BITS + 32  # then the payload's length in bits
_LSB = bytes(0x30 | (i & 1) for i in range(256))  # a sample byte -> its least significant bit as "0"/"1"
_STEALTH_BY_BITS = {
    (band, "".join(f"{b:08b}" for b in sig.encode("ascii")).encode("ascii")): sig
    for sig, (band, _) in _STEALTH.items()
}
_STEALTH_GZIP_READ = _CAP + 4096  # compressed bytes enough for _CAP of text (stored blocks add 5 per 64 KiB)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

Signal = dict[str, Any]


def read_provenance(im: Image.Image, path: str | os.PathLike[str] | None = None) -> list[Signal]:
    """Return the AI-related provenance signals of `im` (see the module docstring).

    `path` is only used to look for a C2PA manifest; without it C2PA is skipped (and
    a PNG/WebP's remote manifest reference is listed unchecked for an embedded one).
    Never raises. Decodes pixels only for a PNG or WebP not already loaded (stealth
    PNG info), and then reads no more than the signature's pixels unless they match.
    """
    signals: list[Signal] = []
    readers: tuple[Callable[[Image.Image, list[Signal]], None], ...] = (
        _png_text, _exif, _xmp, _iptc, _comment, _stealth,
    )
    for read in readers:
        try:
            read(im, signals)
        except Exception:  # a broken field is simply skipped: provenance is advice, never a crash
            pass
    if path is not None:
        try:
            c2pa = _import_c2pa()  # first: without the reader there is no point looking for a manifest
            if c2pa is not None and _may_have_c2pa(im, os.fspath(path)):
                sig = _c2pa(c2pa, os.fspath(path))
                if sig is not None:
                    signals.append(sig)
        except Exception:
            pass
    if not any(s["signal"] == "c2pa:manifest" for s in signals):
        try:
            _c2pa_remote(im, path, signals)
        except Exception:
            pass
    return signals


# ----------------------------------------------------------------------------- helpers

def _signal(signal: str, where: str, generator: str | None, ai: bool) -> Signal:
    return {"signal": signal, "where": where, "generator": generator, "ai": ai}


def _text(value: object, cap: int = _CAP) -> str | None:
    """A capped str from a metadata value (str, or bytes as UTF-8), else None."""
    if isinstance(value, str):
        return value[:cap]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:cap]).decode("utf-8", "replace")
    return None


def _shorten(raw: str | None) -> str | None:
    """A raw value as a generator name: printable, single-spaced, at most 80 chars."""
    if not raw:
        return None
    s = " ".join("".join(c if c.isprintable() else " " for c in raw[: _NAME_MAX * 4]).split())
    return s[:_NAME_MAX] or None


def _ai_word(text: str) -> str | None:
    """The AI generator named in free text, if any."""
    low = text.lower()
    for needle, name in _AI_WORDS:
        if needle in low:
            return name
    return None


def _a1111(text: str) -> str | None:
    """The generator behind A1111-style parameters text, or None if it is not that."""
    if not _A1111_RE.search(text):
        return None
    return _a1111_flavour(text)


def _a1111_flavour(text: str) -> str:
    """Which A1111-compatible UI wrote `parameters`: forks name themselves in `Version:`."""
    if "sui_image_params" in text:
        return "SwarmUI"
    if "App: SD.Next" in text:
        return "SD.Next"
    m = _VERSION_RE.search(text)
    version = m.group(1).strip().lower() if m else ""
    # Forge writes e.g. "Version: f2.0.1v1.10.1-previous-..." (reForge: "...reForge...").
    if "forge" in version or re.match(r"f\d", version):
        return "Forge"
    if "fooocus" in version:
        return "Fooocus"
    return "AUTOMATIC1111"


def _novelai_settings(text: str) -> bool:
    """NovelAI's `Comment`: a JSON object of generation settings ("steps", "sampler", "uc", ...)."""
    return '"steps"' in text and ('"sampler"' in text or '"uc"' in text)


def _classify(text: str) -> str | None:
    """Generator named by a free-text field: A1111 parameters or an AI word."""
    return _a1111(text) or _ai_word(text)


def _source_type_code(value: object) -> str:
    """'http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia' -> 'trainedalgorithmicmedia'."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return ""
    return re.split(r"[/:#]", value.strip())[-1].lower()


# ----------------------------------------------------------------------------- readers

def _png_text(im: Image.Image, out: list[Signal]) -> None:
    if im.format != "PNG":
        return
    info = im.info
    keys = [k for k, v in info.items() if isinstance(k, str) and isinstance(v, str)]
    software = (_text(info.get("Software")) or "")[:1000]
    novelai = "novelai" in software.lower()
    for key in keys:
        value = info[key]
        # iTXt values arrive as PngImagePlugin.iTXt (a str subclass); tEXt and zTXt as plain
        # str, indistinguishable, so both are reported as "PNG tEXt".
        where = "PNG iTXt" if isinstance(value, PngImagePlugin.iTXt) else "PNG tEXt"
        text = value[:_CAP]
        generator: str | None
        if key in _PNG_KEYS:
            generator = _PNG_KEYS[key]
            if key == "parameters":
                generator = "Fooocus" if "fooocus_scheme" in info else _a1111_flavour(text)
            out.append(_signal(f"png:{key}", where, generator, True))
        elif key == "Comment":
            # NovelAI: a JSON object of generation settings ("steps", "sampler", "uc", ...).
            if novelai or _novelai_settings(text):
                out.append(_signal("png:Comment", where, "NovelAI" if novelai else None, True))
        elif key in _PNG_FREE_TEXT:
            generator = _classify(text)
            if generator:
                out.append(_signal(f"png:{key}", where, generator, True))


def _exif(im: Image.Image, out: list[Signal]) -> None:
    # PngImageFile.getexif() loads the image when there is no eXIf chunk: don't let it.
    if im.format == "PNG" and "exif" not in im.info:
        return
    exif = im.getexif()
    for tag, name in _EXIF_TAGS.items():
        text = _text(exif.get(tag))
        generator = _classify(text) if text else None
        if generator:
            out.append(_signal(f"exif:{name}", "EXIF", generator, True))
    try:
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a corrupt Exif sub-IFD must not hide what IFD0 said
        comment = None
    if comment is None:
        comment = exif.get(_USER_COMMENT)
    text = _user_comment(comment)
    generator = _classify(text) if text else None
    if generator:
        out.append(_signal("exif:UserComment", "EXIF", generator, True))


def _user_comment(value: object) -> str | None:
    """Decode EXIF UserComment: an 8-byte charset header, then the text.

    A1111 (through piexif) writes b"UNICODE\\0" + UTF-16-BE; other writers use the
    file's byte order, so the order is detected from where the zero bytes fall.
    """
    if isinstance(value, str):
        return value[:_CAP]
    if not isinstance(value, (bytes, bytearray)):
        return None
    head, body = bytes(value[:8]), bytes(value[8 : 8 + 2 * _CAP])
    if head.startswith(b"UNICODE"):
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", "replace")
        sample = body[:512]
        big = sample[0::2].count(0) >= sample[1::2].count(0)
        return body[: len(body) // 2 * 2].decode("utf-16-be" if big else "utf-16-le", "replace")
    if head.startswith((b"ASCII", b"JIS", b"\0")):
        return body.rstrip(b"\0").decode("utf-8", "replace")
    return bytes(value[: 2 * _CAP]).decode("utf-8", "replace")  # no header: best effort


def _xmp_packet(im: Image.Image) -> bytes | None:
    # Pillow >= 11 exposes XMP as info["xmp"] (bytes) for JPEG, PNG, WebP and TIFF;
    # older PNG readers only had the iTXt key.
    raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(raw, str):
        raw = raw[:_XMP_CAP].encode("utf-8", "replace")
    if not isinstance(raw, (bytes, bytearray)):
        return None
    return bytes(raw[:_XMP_CAP])


def _xmp(im: Image.Image, out: list[Signal]) -> None:
    raw = _xmp_packet(im)
    if raw is None or b"igitalSourceType" not in raw:  # cheap exit for nearly every file
        return
    for m in _DST_RE.finditer(raw):
        if _source_type_code(m.group(1)) in _AI_SOURCE_TYPES:
            tool = _CREATOR_TOOL_RE.search(raw)
            name = None
            if tool:
                tool_text = (tool.group(1) or tool.group(2)).decode("utf-8", "replace")
                name = _ai_word(tool_text) or _shorten(tool_text)
            out.append(_signal("xmp:DigitalSourceType", "XMP", name, True))
            return


def _iptc(im: Image.Image, out: list[Signal]) -> None:
    # IPTC-IIM has no DigitalSourceType dataset, but some tools put the newscode URI in one.
    blobs: list[object] = []
    photoshop = im.info.get("photoshop")
    if isinstance(photoshop, dict):
        blobs.append(photoshop.get(0x0404))
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        blobs.append(tags.get(33723))
    for blob in blobs:
        if isinstance(blob, (bytes, bytearray)):
            for m in _IIM_DST_RE.finditer(bytes(blob[:_CAP])):
                if m.group(1).decode("ascii").lower() in _AI_SOURCE_TYPES:
                    out.append(_signal("iptc:DigitalSourceType", "IPTC-IIM", None, True))
                    return


def _comment(im: Image.Image, out: list[Signal]) -> None:
    # JPEG COM / GIF / WebP comment: some UIs write generation parameters there.
    if im.format == "PNG":
        return
    text = _text(im.info.get("comment"))
    generator = _classify(text) if text else None
    if generator:
        fmt = (im.format or "image").lower()
        out.append(_signal(f"{fmt}:comment", f"{im.format or 'image'} comment", generator, True))


# ----------------------------------------------------------------------------- stealth PNG info

def _stealth(im: Image.Image, out: list[Signal]) -> None:
    """Stealth PNG info: parameters hidden in pixel LSBs (see the module docstring)."""
    if im.format not in ("PNG", "WEBP"):
        return
    w, h = im.size
    forms = []
    if "A" in im.getbands():
        forms.append("A")
    if im.mode in ("RGB", "RGBA"):
        forms.append("RGB")
    for band in forms:
        if w * h * len(band) < _STEALTH_HEAD_BITS:
            continue  # too small to hold even the header
        sig = _STEALTH_BY_BITS.get((band, _lsb_bits(im, band, 0, _STEALTH_SIG_BITS)))
        if sig is None:
            continue
        text = _stealth_payload(im, band, _STEALTH[sig][1])
        if text is not None:
            where = f"{im.format} {'alpha' if band == 'A' else 'RGB'} LSB"
            out.append(_signal(f"{im.format.lower()}:{sig}", where, _stealth_generator(text), True))
            return


def _lsb_bits(im: Image.Image, band: str, first: int, count: int) -> bytes:
    """Bits `first` .. `first + count` of the LSB stream, as b"0"/b"1" characters.

    The stream runs column by column (x, then y), each pixel giving one bit per
    band; only the columns holding the asked bits are copied out of the image,
    and only the rows needed when they lie in one column (the signature, mostly).
    """
    k, h = len(band), im.height
    p0, p1 = first // k, -(-(first + count) // k)  # pixels holding the bits
    x0, x1 = p0 // h, -(-p1 // h)
    y0, y1 = (p0 - x0 * h, p1 - x0 * h) if x1 - x0 == 1 else (0, h)
    region = im.crop((x0, y0, x1, y1))
    region = region.getchannel("A") if band == "A" else region.convert("RGB")
    samples = region.transpose(Image.Transpose.TRANSPOSE).tobytes()  # now column-major
    start = first - (x0 * h + y0) * k
    return samples[start : start + count].translate(_LSB)


def _bits_to_bytes(bits: bytes) -> bytes:
    n = len(bits) // 8
    return int(bits[: n * 8], 2).to_bytes(n, "big") if n else b""


def _stealth_payload(im: Image.Image, band: str, compressed: bool) -> str | None:
    """The payload text after a matched signature, or None when it is garbage."""
    available = im.width * im.height * len(band) - _STEALTH_HEAD_BITS
    length = int(_lsb_bits(im, band, _STEALTH_SIG_BITS, 32), 2)
    if not 8 <= length <= available:
        return None  # empty, or a length past the image: truncated or not stealth data
    want = min(length, 8 * (_STEALTH_GZIP_READ if compressed else _CAP))
    data = _bits_to_bytes(_lsb_bits(im, band, _STEALTH_HEAD_BITS, want))
    complete = want == length
    if compressed:
        unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = unzip.decompress(data, _CAP)
        except zlib.error:
            return None
        if not unzip.eof and len(data) < _CAP:
            return None  # the stream ends early: cut, or not gzip (past the cap the rest goes unread)
        complete = unzip.eof
    try:  # strict UTF-8, though a character may be cut at the cap
        text = codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=complete)
    except UnicodeDecodeError:
        return None
    if not text.strip() or _CONTROL_RE.search(text):
        return None
    return text


def _stealth_generator(text: str) -> str | None:
    """NovelAI writes its PNG text chunks as one JSON object; A1111 its `parameters`."""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:  # JSON cut at the cap, or not JSON: the text checks below still apply
            obj = None
        if isinstance(obj, dict):
            software = _text(obj.get("Software")) or ""
            comment = _text(obj.get("Comment")) or ""
            if "novelai" in software.lower() or _novelai_settings(comment):
                return "NovelAI"
        if _novelai_settings(text):
            return "NovelAI"
    return _classify(text)


# ----------------------------------------------------------------------------- C2PA

def _may_have_c2pa(im: Image.Image, path: str | None) -> bool:
    """A near-free look for an embedded C2PA manifest store, so the C2PA reader
    (which parses and hashes the whole file) runs only where there is one. A PNG
    or WebP without its path cannot be looked at: False."""
    fmt = im.format
    if fmt in ("JPEG", "MPO"):
        # Pillow keeps every APPn segment; C2PA lives in APP11 JUMBF boxes labelled "c2pa".
        return any(m == "APP11" and b"c2pa" in d for m, d in getattr(im, "applist", ()))
    if fmt == "TIFF":
        tags = getattr(im, "tag_v2", None)
        return tags is not None and 52545 in tags
    if fmt == "PNG" and path is not None:
        return _png_has_chunk(path, b"caBX")
    if fmt == "WEBP" and path is not None:
        return _riff_has_chunk(path, b"C2PA")
    return False


def _png_has_chunk(path: str, ctype: bytes) -> bool:
    # C2PA puts caBX before the image data: walk the chunk headers up to the first IDAT.
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
        for _ in range(1000):
            head = f.read(8)
            if len(head) < 8:
                return False
            length, kind = struct.unpack(">I4s", head)
            if kind == ctype:
                return True
            if kind in (b"IDAT", b"IEND"):
                return False
            f.seek(length + 4, os.SEEK_CUR)
    return False


def _riff_has_chunk(path: str, fourcc: bytes) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            return False
        for _ in range(64):
            chunk = f.read(8)
            if len(chunk) < 8:
                return False
            kind, size = struct.unpack("<4sI", chunk)
            if kind == fourcc:
                return True
            f.seek(size + (size & 1), os.SEEK_CUR)
    return False


_c2pa_missing = False  # remembered so that a failed import is not retried on every file


def _import_c2pa() -> Any:
    """c2pa-python (an optional extra), or None when it is not installed."""
    global _c2pa_missing
    module = sys.modules.get("c2pa")
    if module is not None or _c2pa_missing:
        return module
    try:
        import c2pa
    except Exception:  # not installed, or a broken native library: C2PA is simply unavailable
        _c2pa_missing = True
        return None
    return c2pa


def _c2pa(c2pa: Any, path: str) -> Signal | None:
    """Read the manifest store with c2pa-python."""
    try:
        reader_cls = c2pa.Reader
        reader = reader_cls.try_create(path) if hasattr(reader_cls, "try_create") else reader_cls(path)
        if reader is None:
            return None
        try:
            store = json.loads(reader.json())
        finally:
            close = getattr(reader, "close", None)
            if callable(close):
                close()
    except Exception:  # no manifest, a broken one, or a reader failure: not our problem to raise
        return None
    return _c2pa_signal(store) if isinstance(store, dict) else None


def _c2pa_signal(store: dict[str, Any]) -> Signal | None:
    manifests = store.get("manifests")
    if not isinstance(manifests, dict) or not manifests:
        return None
    active = manifests.get(store.get("active_manifest"))
    if not isinstance(active, dict):
        active = next((m for m in manifests.values() if isinstance(m, dict)), {})
    # An ingredient generated by AI makes the result AI-derived too, so look at every manifest.
    agent: str | None = None
    ai = False
    for manifest in [active, *(m for m in manifests.values() if m is not active)]:
        if not isinstance(manifest, dict):
            continue
        for assertion in manifest.get("assertions") or ():
            if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
                continue
            data = assertion.get("data")
            for action in (data.get("actions") if isinstance(data, dict) else None) or ():
                if isinstance(action, dict) and _source_type_code(action.get("digitalSourceType")) in _AI_SOURCE_TYPES:
                    ai = True
                    agent = agent or _agent_name(action.get("softwareAgent"))
        if ai:
            break
    claim = _claim_generator(active)
    raw = agent or claim
    generator = (_ai_word(raw) or _shorten(raw)) if raw else None
    return _signal("c2pa:manifest", "C2PA manifest", generator, ai)


def _agent_name(agent: object) -> str | None:
    """softwareAgent is a string (v1 actions) or {"name": ..., "version": ...} (v2)."""
    if isinstance(agent, str):
        return agent
    if isinstance(agent, dict) and isinstance(agent.get("name"), str):
        return " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k))
    return None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info:
        name = _agent_name(info[0])
        if name:
            return name
    gen = manifest.get("claim_generator")
    return gen if isinstance(gen, str) else None


def _c2pa_remote(im: Image.Image, path: str | os.PathLike[str] | None, out: list[Signal]) -> None:
    """A remote manifest: XMP dcterms:provenance with a URL, no manifest store in the file."""
    raw = _xmp_packet(im)
    if raw is None or b"dcterms:provenance" not in raw:
        return
    for m in _PROVENANCE_RE.finditer(raw):
        url = _url(next(g for g in m.groups() if g is not None))
        if url is None:
            continue
        if _may_have_c2pa(im, None if path is None else os.fspath(path)):
            return  # an embedded manifest is what counts (c2pa-python read it, or it is not installed)
        out.append({**_signal("c2pa:remote", "XMP dcterms:provenance", None, False), "url": url})
        return


def _url(value: bytes) -> str | None:
    """An http(s) URL from an XMP value: entities decoded, printable, capped."""
    text = html.unescape(value[: 4 * _URL_MAX].decode("utf-8", "replace"))
    url = "".join(c for c in text if c.isprintable()).strip()[:_URL_MAX]
    return url if re.match(r"(?i)https?://[^\s/]", url) else None
