"""The scan state (`scanner.state`, SQLite in $MAI_HOME): rescans skip unchanged
files, a new threshold re-decides stored scores, --rescan scores again, and a state
that is unavailable or fails mid-scan never stops a scan."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.scan import read_jsonl, run_cli, tiny_pngs


def test_rescan_skips_unchanged_files(tmp_path: Path, model_args: list[str], capsys,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from scanner import decode

    lib = tmp_path / "lib"
    files = tiny_pngs(lib, 5)
    (lib / "bad.jpg").write_bytes(b"text")
    base = [str(lib), "--workers", "0", *model_args]
    code, _, err = run_cli([*base, "--jsonl", str(tmp_path / "a.jsonl")], capsys)
    assert code == 3
    first = {r["path"]: r for r in read_jsonl(tmp_path / "a.jsonl")}

    decoded: list[str] = []
    real = decode.decode_file

    def counting(path: str, *a, **k):
        decoded.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(decode, "decode_file", counting)
    code, _, err = run_cli([*base, "--jsonl", str(tmp_path / "b.jsonl")], capsys)
    assert code == 3
    assert decoded == ["bad.jpg"]  # only the error record is retried
    second = {r["path"]: r for r in read_jsonl(tmp_path / "b.jsonl")}
    assert second == first  # the output is still complete, and the same
    assert "unchanged: 5 files" in err

    decoded.clear()
    os.utime(files[2], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: scored again
    run_cli([*base, "-q", "--jsonl", str(tmp_path / "c.jsonl")], capsys)
    assert sorted(decoded) == ["bad.jpg", "img_0002.png"]

    decoded.clear()
    code, _, _ = run_cli([*base, "-q", "--jsonl", str(tmp_path / "d.jsonl"), "--threshold", "0"], capsys)
    assert decoded == ["bad.jpg"]  # a new threshold re-decides stored scores, no decoding
    assert {r["verdict"] for r in read_jsonl(tmp_path / "d.jsonl")} == {"synthetic", "error"}

    decoded.clear()
    run_cli([*base, "-q", "--rescan"], capsys)
    assert len(decoded) == 6


def test_scan_state_is_sqlite_wal_in_mai_home(tmp_path: Path) -> None:
    from scanner.state import DB_NAME, ScanState

    st = ScanState(model_key="m@1|fp32")
    assert st.path == Path(os.environ["MAI_HOME"]) / DB_NAME
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st.put("/x/a.png", 10, 123, {"scores": {"cnn": 0.5, "vlm": None}})
    st.commit()
    assert st.lookup("/x/a.png", 10, 123) == {"scores": {"cnn": 0.5, "vlm": None}}
    assert st.lookup("/x/a.png", 11, 123) is None and st.lookup("/x/a.png", 10, 124) is None
    st.close()
    other = ScanState(model_key="m@2|fp32")  # another model: a miss
    assert other.lookup("/x/a.png", 10, 123) is None
    other.close()


def test_state_unavailable_is_not_fatal(tmp_path: Path, model_args: list[str], capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home").write_text("a file where the app folder should be")
    monkeypatch.setenv("MAI_HOME", str(tmp_path / "home"))
    tiny_pngs(tmp_path / "lib", 2)
    code, _, err = run_cli([str(tmp_path / "lib"), "--workers", "0", *model_args], capsys)
    assert code == 0 and "scan state unavailable" in err


def test_state_failure_mid_scan_is_not_fatal() -> None:
    from scanner.state import ScanState

    heard: list[str] = []
    st = ScanState(model_key="m", on_error=heard.append)
    st.db.close()  # as if the disk went away
    st.put("/x/a.png", 1, 1, {})
    assert st.lookup("/x/a.png", 1, 1) is None
    st.close()
    assert len(heard) == 1 and "going on without it" in heard[0]
