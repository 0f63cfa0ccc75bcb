"""A short, seeded slice of the reader fuzzing campaign (benchmarks/fuzz_readers.py):
every mutated input is ok or a handled error for the scanner's decode path and the
provenance readers -- no exception escapes, no worker dies, nothing hangs."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_readers.py"
_spec = importlib.util.spec_from_file_location("fuzz_readers", _PATH)
assert _spec is not None and _spec.loader is not None
fz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_readers"] = fz
_spec.loader.exec_module(fz)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the campaign forks workers")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(w: int, h: int, extra: bytes = b"") -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)) + extra
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


# Hostile shapes kept as fixed inputs, whatever the random slice draws.
REGRESSIONS = {
    "png_ihdr_max": _png(0xFFFFFFFF, 0xFFFFFFFF),
    "png_ihdr_over_side": _png(1 << 20 | 1, 1),
    "png_ihdr_zero": _png(0, 16),
    "png_cabx_length_max": _png(4, 4, struct.pack(">I", 0xFFFFFFFF) + b"caBX" + b"\x00" * 16),
    "png_cabx_deep_zero_sizes": _png(4, 4, _chunk(b"caBX", b"\x00\x00\x00\x00jumb" * 10_000)),
    "riff_c2pa_size_max": b"RIFF\xff\xff\xff\xffWEBPC2PA\xff\xff\xff\xff" + b"\x00" * 32,
    "bmff_deep_10000": struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic"
    + b"".join(struct.pack(">I", 8 * (10_000 - k)) + b"meta" for k in range(10_000)),
    "jpeg_soi_only": b"\xff\xd8\xff",
}


def test_fuzz_slice_has_no_crash_or_hang(tmp_path: Path) -> None:
    t0 = time.monotonic()
    result = fz.campaign(300, seed=0, workers=2, out=tmp_path, extra=REGRESSIONS)
    assert result["failures"] == [], fz.table(result)
    for reader in fz.READERS:
        counts = result["counts"][reader]
        assert sum(counts.values()) == result["inputs"]
        assert counts.get("ok", 0) > 0 and counts.get("error", 0) > 0, (reader, counts)  # both paths exercised
    assert time.monotonic() - t0 < 60


def test_inputs_are_reproducible() -> None:
    corpus = fz.seeds()
    assert fz.make_input(corpus, 7, 123) == fz.make_input(corpus, 7, 123)
    assert fz.make_input(corpus, 7, 123) != fz.make_input(corpus, 7, 124)


def test_harness_reports_crash_hang_death_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The campaign would be worthless if a crash or a hang went unseen: a reader that
    misbehaves on cue (the forked workers inherit the patch) is classified as such."""

    def hostile(path: str, gpu: bool) -> tuple[str, str]:
        data = Path(path).read_bytes()
        if data == b"raise":
            raise KeyError("boom")
        if data == b"sleep":
            time.sleep(30)
        if data == b"die":
            os._exit(3)
        if data == b"memory":
            raise MemoryError
        return "ok", ""

    monkeypatch.setattr(fz, "_read_decode", hostile)
    tasks = [(i, "decode", d) for i, d in enumerate([b"fine", b"raise", b"sleep", b"die", b"memory", b"fine"])]
    got = {i: outcome for i, _r, outcome, *_rest in fz.run_tasks(iter(tasks), workers=2, limit=1.0)}
    assert got == {0: "ok", 1: "crash", 2: "hang", 3: "crash", 4: "memory", 5: "ok"}
