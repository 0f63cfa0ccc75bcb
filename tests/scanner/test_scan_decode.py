"""Decode: every bad-input class is a result with an error kind, never a crash;
every colour mode, animation, EXIF rotation and mislabelled file scans."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.scan import bad_files, encode, good_files, photo, png_header_only

from mai.preprocess import CIFAKE_SPEC, PreprocessSpec, Step, prepare
from scanner import decode, formats
from scanner.decode import configure_pillow, decode_file
from scanner.formats import sniff


@pytest.fixture(autouse=True)
def _pillow() -> None:
    configure_pillow()


@pytest.mark.parametrize("name", sorted(good_files()))
def test_good_files_scan(tmp_path: Path, name: str) -> None:
    data, fmt, size = good_files()[name]
    p = tmp_path / name
    p.write_bytes(data)
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error is None, d.error
    assert d.array is not None and d.array.shape == (200, 200, 3) and d.array.dtype == np.uint8
    assert d.facts["format"] == fmt
    assert (d.facts["width"], d.facts["height"]) == size
    assert d.facts["bytes"] == len(data)
    assert d.facts["provenance"] == []


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_files_are_error_results(tmp_path: Path, name: str) -> None:
    data, kind = bad_files()[name]
    p = tmp_path / name
    p.write_bytes(data)
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.array is None
    assert d.error is not None and d.error[0] == kind, d.error
    assert d.error[1]


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(png_header_only(20_000, 20_000))
    monkeypatch.setattr(decode, "prepare", lambda *a, **k: pytest.fail("decoded a bomb"))
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error[0] == "too_large" and "400.0 megapixels" in d.error[1]
    assert (d.facts["width"], d.facts["height"]) == (20_000, 20_000)
    monkeypatch.undo()
    # The limit is a parameter (--max-pixels).
    q = tmp_path / "ok.png"
    q.write_bytes(encode(photo(100, 100), "PNG"))
    assert decode_file(str(q), CIFAKE_SPEC, max_pixels=9_999).error[0] == "too_large"
    assert decode_file(str(q), CIFAKE_SPEC, max_pixels=10_000).error is None


def test_vanished_io_and_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_file(str(tmp_path / "gone.jpg"), CIFAKE_SPEC).error[0] == "vanished"
    assert decode_file(str(tmp_path), CIFAKE_SPEC).error[0] == "unsupported"  # a folder
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert decode_file(str(fifo), CIFAKE_SPEC).error == ("unsupported", "not a regular file")  # and no hang
    p = tmp_path / "locked.jpg"
    p.write_bytes(encode(photo(), "JPEG"))

    real_open = os.open

    def deny(path: object, *a: object, **k: object) -> int:
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(decode.os, "open", deny)
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error == ("io", "cannot open: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root reads anything")
def test_unreadable_file_for_real(tmp_path: Path) -> None:
    p = tmp_path / "locked.jpg"
    p.write_bytes(encode(photo(), "JPEG"))
    p.chmod(0)
    try:
        assert decode_file(str(p), CIFAKE_SPEC).error[0] == "io"
    finally:
        p.chmod(0o644)


def test_heif_without_decoder_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "heif_available", lambda: False)  # as where pillow-heif is missing
    p = tmp_path / "x.heic"
    p.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error[0] == "unsupported" and "pillow-heif" in d.error[1]


def test_heic_decodes_with_pillow_heif(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")
    configure_pillow()  # registers the HEIF opener, as every worker does
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    p = tmp_path / "phone.heic"
    im.save(p, "HEIF", quality=95)
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error is None, d.error
    assert (d.facts["format"], d.facts["width"], d.facts["height"]) == ("HEIF", 64, 48)
    # The same pixels pillow-heif gives, through the one preprocessing implementation.
    assert np.array_equal(d.array, prepare(pillow_heif.open_heif(p).to_pillow(), CIFAKE_SPEC))
    # A turned photo is turned once: pillow-heif applies the container's rotation and
    # resets the EXIF orientation, so prepare() does not turn it again.
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.heic", "HEIF", exif=exif.tobytes(), quality=95)
    t = decode_file(str(tmp_path / "turned.heic"), CIFAKE_SPEC)
    assert t.error is None and (t.facts["width"], t.facts["height"]) == (48, 64)


def test_sniff() -> None:
    assert sniff(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff(b"GIF89a") == "GIF"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff(b"II*\x00") == "TIFF" and sniff(b"MM\x00*") == "TIFF"
    assert sniff(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") == "AVIF"
    assert sniff(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "HEIF"
    assert sniff(b"hello world") is None and sniff(b"") is None


def test_draft_matches_full_decode_closely(tmp_path: Path) -> None:
    """DCT scaling changes the route to the 32x32 step, not what the model sees, much."""
    p = tmp_path / "big.jpg"
    p.write_bytes(encode(photo(1600, 1200, seed=3), "JPEG", quality=90))
    fast = decode_file(str(p), CIFAKE_SPEC, draft=True).array
    with Image.open(p) as im:
        exact = prepare(im, CIFAKE_SPEC)
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 2.0
    assert np.array_equal(decode_file(str(p), CIFAKE_SPEC, draft=False).array, exact)


def test_draft_respects_exif_rotation_and_crop(tmp_path: Path) -> None:
    """A sideways-stored JPEG with a non-square first step: the drafted image must
    still be at least the first step's size once upright."""
    spec = PreprocessSpec(steps=(Step((64, 16), "box"),), fit="center_crop")
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "side.jpg"
    p.write_bytes(encode(photo(800, 1600, seed=1), "JPEG", exif=exif.tobytes()))
    d = decode_file(str(p), spec)
    assert d.error is None and d.array.shape == (16, 64, 3)
    assert (d.facts["width"], d.facts["height"]) == (1600, 800)
    with Image.open(p) as im:
        exact = prepare(im, spec)
        wrong = prepare(im.transpose(Image.Transpose.ROTATE_180), spec)  # what a lost rotation looks like
    err = np.abs(d.array.astype(int) - exact.astype(int)).mean()
    assert err < 8.0 and err < np.abs(wrong.astype(int) - exact.astype(int)).mean() / 3


def test_provenance_in_result(tmp_path: Path) -> None:
    from support.scan import a1111_png

    p = tmp_path / "gen.png"
    p.write_bytes(a1111_png())
    d = decode_file(str(p), CIFAKE_SPEC)
    assert d.error is None
    assert any(s["signal"] == "png:parameters" and s["ai"] is True for s in d.facts["provenance"])
