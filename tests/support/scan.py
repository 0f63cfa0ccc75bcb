"""Shared helpers for the scanner tests: generated bad-input fixtures, a CLI
runner, a crashing decoder for the worker-death test. No tests here."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

A1111 = ("a photo of a cat, best quality\nNegative prompt: blurry\n"
         "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd15")


def photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """Smooth noise: photo-like enough for decoders, tiny and fast."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR promising w x h, with a tiny IDAT: a bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def a1111_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    return encode(photo(seed=7), "PNG", pnginfo=info)


def rotated_jpeg() -> bytes:
    """Stored 64x32 with EXIF orientation 6 (turn 90 degrees): upright it is 32x64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(64, 32), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [photo(40, 30, seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def good_files() -> dict[str, tuple[bytes, str, tuple[int, int]]]:
    """name -> (content, format, (width, height) upright): every one must scan."""
    rgb = photo()
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    g16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    files = {
        "rgb.png": (encode(rgb, "PNG"), "PNG", (64, 48)),
        "rgb.jpg": (encode(rgb, "JPEG", quality=90), "JPEG", (64, 48)),
        "cmyk.jpg": (encode(rgb.convert("CMYK"), "JPEG"), "JPEG", (64, 48)),
        "gray.jpg": (encode(rgb.convert("L"), "JPEG"), "JPEG", (64, 48)),
        "gray16.png": (encode(g16, "PNG"), "PNG", (64, 48)),
        "palette-alpha.png": (encode(pal, "PNG", transparency=0), "PNG", (64, 48)),
        "alpha.png": (encode(rgba, "PNG"), "PNG", (64, 48)),
        "la.png": (encode(rgba.convert("LA"), "PNG"), "PNG", (64, 48)),
        "one-bit.bmp": (encode(rgb.convert("1"), "BMP"), "BMP", (64, 48)),
        "anim.gif": (animated_gif(), "GIF", (40, 30)),
        "rotated.jpg": (rotated_jpeg(), "JPEG", (32, 64)),
        "photo.webp": (encode(rgb, "WEBP"), "WEBP", (64, 48)),
        "photo.tiff": (encode(rgb, "TIFF"), "TIFF", (64, 48)),
        "png-named.jpg": (encode(rgb, "PNG"), "PNG", (64, 48)),  # mislabelled: content decides
        "with space.png": (encode(rgb, "PNG"), "PNG", (64, 48)),
        "ünïcødé 猫.png": (encode(rgb, "PNG"), "PNG", (64, 48)),
        "new\nline.png": (encode(rgb, "PNG"), "PNG", (64, 48)),
    }
    from scanner.formats import avif_available

    if avif_available():
        files["photo.avif"] = (encode(rgb, "AVIF"), "AVIF", (64, 48))
    return files


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected error kind)."""
    jpg = encode(photo(256, 256), "JPEG", quality=95)
    return {
        "empty.jpg": (b"", "decode"),
        "text.jpg": (b"this is not an image, just text\n" * 4, "decode"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "decode"),
        "corrupt.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "decode"),
        "bomb.png": (png_header_only(100_000, 100_000), "too_large"),
        "absurd.png": (png_header_only(2_000_000, 1), "too_large"),
    }


def make_library(root: Path, with_bad: bool = True, with_odd_name: bool = True) -> dict[str, Any]:
    """Write the good (and bad) files; returns name -> expectation dict."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, Any] = {}
    for name, (data, fmt, size) in good_files().items():
        (root / name).write_bytes(data)
        expect[name] = {"format": fmt, "size": size}
    if with_bad:
        for name, (data, kind) in bad_files().items():
            (root / name).write_bytes(data)
            expect[name] = {"kind": kind}
    if with_odd_name and sys.platform != "win32":
        raw = os.fsencode(str(root)) + b"/latin1-\xe9t\xe9.png"  # not valid UTF-8
        try:
            with open(raw, "wb") as f:
                f.write(encode(photo(), "PNG"))
            expect["latin1-\\xe9t\\xe9.png"] = {"format": "PNG", "size": (64, 48)}
        except OSError:  # a file system that insists on UTF-8 names
            pass
    return expect


def tiny_pngs(root: Path, n: int, sub: str = "") -> list[Path]:
    d = root / sub if sub else root
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"img_{i:04d}.png"
        p.write_bytes(encode(photo(32, 32, seed=i), "PNG"))
        out.append(p)
    return out


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run `mai-scan` in this process, as the console script does."""
    from scanner import cli

    old_argv, old_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["mai-scan", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        signal.signal(signal.SIGTERM, old_term)
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file must end with a complete line"
    return [json.loads(line) for line in data.splitlines()]


def crashing_decode_chunk(paths: list[str], spec: Any, max_pixels: int, draft: bool) -> list[Any]:
    """A decoder that kills its worker process on files named 'crash*' (like a
    segfault in a codec would)."""
    from scanner.decode import decode_chunk

    if any(os.path.basename(p).startswith("crash") for p in paths):
        os._exit(70)
    return decode_chunk(paths, spec, max_pixels, draft)


def hanging_decode_chunk(paths: list[str], spec: Any, max_pixels: int, draft: bool) -> list[Any]:
    """The real decode_chunk, whose decode of files named 'hang*' never returns
    (like a decoder stuck in a loop): only its per-file timeout can end it."""
    from scanner import decode

    real = decode.decode_file

    def decode_or_hang(path: str, *args: Any, **kw: Any) -> Any:
        if os.path.basename(path).startswith("hang"):
            while True:
                time.sleep(0.01)
        return real(path, *args, **kw)

    decode.decode_file = decode_or_hang
    try:
        return decode.decode_chunk(paths, spec, max_pixels, draft)
    finally:
        decode.decode_file = real


def failing_init() -> None:
    """A worker initializer that fails: a pool that can never run anything."""
    raise RuntimeError("this worker cannot start")


def scan_env() -> dict[str, str]:
    """The environment for a mai-scan subprocess: this checkout importable, no
    MAI_DEBUG (its tracebacks would change what the tests read)."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.pop("MAI_DEBUG", None)
    return env


def crash_decode_chunk(paths: list[str], spec, max_pixels: int, draft: bool) -> list:
    """A decoder that kills its worker on files named 'crash*' every time, and on
    'img_0007.png' once (a marker file remembers). It runs in the Ray workers,
    which import it from here (`tests/` is on their PYTHONPATH)."""
    from scanner.decode import decode_chunk

    for p in paths:
        name = os.path.basename(p)
        if name.startswith("crash"):
            os._exit(70)
        if name == "img_0007.png":
            try:
                os.close(os.open(os.path.join(os.path.dirname(p), ".died-once"), os.O_CREAT | os.O_EXCL))
                os._exit(71)
            except FileExistsError:
                pass
    return decode_chunk(paths, spec, max_pixels, draft)
