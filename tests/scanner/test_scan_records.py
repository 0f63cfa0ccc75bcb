"""Records: the mai.scan/1 schema, the verdict rule, and lines every parser accepts."""

from __future__ import annotations

import json

import pytest

from mai.errors import MaiError
from scanner.records import (
    ERROR_KINDS,
    FIELDS,
    SCHEMA,
    Decision,
    display_path,
    error_record,
    make_record,
    to_line,
)
from scanner.walk import _glob_re

FACTS = {"scores": {"cnn": 0.7, "vlm": None}, "provenance": [], "width": 40, "height": 30, "format": "PNG",
         "bytes": 123}


def rec(p: float, decision: Decision, **kw: object) -> dict:
    facts = {**FACTS, "scores": {"cnn": p, "vlm": kw.pop("vlm", None)}, **kw}
    return make_record("a.png", model="m@1", facts=facts, decision=decision)


def test_fields_and_schema() -> None:
    r = rec(0.7, Decision(0.5))
    assert tuple(r) == FIELDS and r["schema"] == SCHEMA == "mai.scan/1"
    assert r == {"schema": SCHEMA, "path": "a.png", "verdict": "synthetic", "score": 0.7, "stage": "cnn",
                 "scores": {"cnn": 0.7, "vlm": None}, "provenance": [], "model": "m@1", "width": 40,
                 "height": 30, "format": "PNG", "bytes": 123, "error": None}
    e = error_record("b.jpg", "decode", "empty file", model="m@1", facts={"bytes": 0})
    assert tuple(e) == FIELDS
    assert e["verdict"] == "error" and e["stage"] is None and e["score"] is None
    assert e["error"] == {"kind": "decode", "message": "empty file"} and e["bytes"] == 0 and e["width"] is None
    with pytest.raises(ValueError):
        error_record("b.jpg", "nonsense", "x", model=None)
    assert set(ERROR_KINDS) == {"decode", "io", "too_large", "unsupported", "vanished"}


def test_verdict_rule() -> None:
    d = Decision(0.5, (0.4, 0.6))
    assert rec(0.39, d)["verdict"] == "authentic"
    assert rec(0.4, d)["verdict"] == "authentic"  # the band is open: lo < score < hi
    assert rec(0.45, d)["verdict"] == "uncertain" and rec(0.45, d)["stage"] == "cnn"
    assert rec(0.6, d)["verdict"] == "synthetic"
    no_band = Decision(0.5)
    assert rec(0.5, no_band)["verdict"] == "synthetic" and rec(0.4999, no_band)["verdict"] == "authentic"
    # A positive metadata signal decides; the CNN score is kept.
    sig = [{"signal": "png:parameters", "where": "PNG tEXt", "generator": "AUTOMATIC1111", "ai": True}]
    r = rec(0.1, d, provenance=sig)
    assert (r["verdict"], r["stage"], r["score"], r["scores"]["cnn"]) == ("synthetic", "metadata", 1.0, 0.1)
    # A signal that is not an AI claim (a C2PA manifest of a camera) decides nothing.
    r = rec(0.1, d, provenance=[{**sig[0], "ai": False}])
    assert (r["verdict"], r["stage"]) == ("authentic", "cnn")
    # The second opinion decides what the CNN could not; both scores are kept.
    r = rec(0.5, d, vlm=0.9)
    assert (r["verdict"], r["stage"], r["score"], r["scores"]) == ("synthetic", "vlm", 0.9, {"cnn": 0.5, "vlm": 0.9})
    assert rec(0.5, d, vlm=0.2)["verdict"] == "authentic"


def test_decision_make() -> None:
    assert Decision.make(0.5, (0.4, 0.6)) == Decision(0.5, (0.4, 0.6))
    # --threshold drops the stored band (calibrated for the stored threshold).
    assert Decision.make(0.5, (0.4, 0.6), threshold=0.8) == Decision(0.8, None)
    assert Decision.make(0.5, (0.4, 0.6), threshold=0.8, band=(0.7, 0.9)) == Decision(0.8, (0.7, 0.9))
    assert Decision.make(0.5, (0.4, 0.6), uncertain=False) == Decision(0.5, None)
    assert Decision.make(0.5, (0.5, 0.5)) == Decision(0.5, None)  # degenerate: no band
    with pytest.raises(MaiError, match="must contain the threshold"):
        Decision.make(0.5, None, band=(0.1, 0.3))


def test_lines_are_whole_ascii_json() -> None:
    names = ["with space.png", "new\nline.png", "tab\there.png", "ünïcødé 猫.png", "line\u2028sep.png"]
    for name in names:
        line = to_line(make_record(name, model="m", facts=FACTS, decision=Decision(0.5)))
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        line.decode("ascii")  # pure ASCII: no tool can split it
        assert json.loads(line)["path"] == name


def test_paths_that_are_not_utf8() -> None:
    raw = b"photos/caf\xe9 \xff.jpg"
    s = raw.decode("utf-8", "surrogateescape")  # what os.fsdecode gives
    assert display_path(s) == "photos/caf\\xe9 \\xff.jpg"
    line = to_line(make_record(s, model="m", facts=FACTS, decision=Decision(0.5)))
    assert json.loads(line)["path"] == "photos/caf\\xe9 \\xff.jpg"
    assert b"\\ud" not in line  # no lone surrogate escapes: strict parsers accept it
    # Lone surrogates anywhere else (an odd metadata field) are made valid too.
    e = error_record("x.jpg", "decode", "bad \udcff byte", model="m")
    assert json.loads(to_line(e))["error"]["message"] == "bad \\xff byte"
    # A real non-BMP character survives.
    assert json.loads(to_line(error_record("\U0001F600.png", "io", "x", model="m")))["path"] == "\U0001F600.png"


def test_glob_semantics() -> None:
    assert _glob_re("*.png").match("a.png") and not _glob_re("*.png").match("a/b.png")
    assert _glob_re("**/cache/**").match("x/cache/y/z.png") and _glob_re("**/cache/**").match("cache/z.png")
    assert _glob_re("[!a]*.png").match("b.png") and not _glob_re("[!a]*.png").match("a.png")
    assert _glob_re("a[.png").match("a[.png")
