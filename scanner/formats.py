"""The image formats mai-scan reads, as the decode side knows them: the
extensions, the content signatures (`sniff`), and which codecs this machine has.

The walk asks it which files are candidates; the decoder, what a file really is
and whether it can be decoded here. One rule for both, so a HEIC without
pillow-heif is neither walked as an image by extension-less sniffing nor
decoded.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

BASE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".dib",
})
AVIF_EXTENSIONS = frozenset({".avif", ".avifs"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HEAD_BYTES = 32  # enough for every signature below


@lru_cache(maxsize=1)
def heif_available() -> bool:
    # find_spec, not import: pillow-heif takes a while to import and is only needed to decode.
    return importlib.util.find_spec("pillow_heif") is not None


@lru_cache(maxsize=1)
def avif_available() -> bool:
    from PIL import features

    return bool(features.check("avif"))


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """The extensions scanned by default, given the decoders installed here."""
    exts = set(BASE_EXTENSIONS)
    if avif_available():
        exts |= AVIF_EXTENSIONS
    if heif_available():
        exts |= HEIF_EXTENSIONS
    return frozenset(exts)


_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def sniff(head: bytes) -> str | None:
    """The Pillow format name the first bytes of a file announce, or None.

    Only formats the scanner reads are recognised, so Pillow never gets to try its
    long tail of exotic plugins on a file that merely fails to be a JPEG.
    """
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head[4:8] == b"ftyp":
        brands = [head[i:i + 4] for i in range(8, min(len(head), 32) - 3, 4)]
        if any(b in _AVIF_BRANDS for b in brands):
            return "AVIF"
        if any(b in _HEIF_BRANDS for b in brands):
            return "HEIF"
    return None


def missing_codec(fmt: str) -> str | None:
    """Why a sniffed format cannot be decoded on this machine (the error record's
    message), or None when it can."""
    if fmt == "AVIF" and not avif_available():
        return "AVIF image: this Pillow has no AVIF codec (upgrade Pillow)"
    if fmt == "HEIF" and not heif_available():
        return "HEIF/HEIC image: install pillow-heif to scan it"
    return None
