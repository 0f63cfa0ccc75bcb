"""`mai-scan` end to end: JSON Lines schema, one record per file whatever the
input, exit codes, Rich and plain output, metadata verdicts, the bundled
examples, --resume (a half-written line, SIGKILL,
Ctrl-C), and no torch on the scanning path."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.scan import a1111_png, encode, make_library, photo, read_jsonl, run_cli, tiny_pngs
from support.scan import scan_env as _env

from scanner.records import FIELDS, SCHEMA

ROOT = Path(__file__).resolve().parents[2]


# A wrapper that runs mai-scan with every written record followed by a short
# sleep, so a test can interrupt it mid-scan deterministically.
SLOW = """
import signal, sys, time
# A test run started in the background by a non-interactive shell inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: restore it, as a
# terminal would have it.
signal.signal(signal.SIGINT, signal.default_int_handler)
import scanner.sinks as s
def slow(f):
    def write(self, r):
        f(self, r)
        time.sleep(0.05)
    return write
s.JsonlWriter.write = slow(s.JsonlWriter.write)
s.PlainView.write = slow(s.PlainView.write)
from scanner.cli import main
sys.argv = ["mai-scan", *sys.argv[1:]]
main()
"""


def test_help_imports_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import scanner.cli"], capture_output=True,
                         text=True, env=_env(), check=True)
    mods = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not mods & {"torch", "numpy", "onnxruntime", "PIL", "rich", "sqlite3"}, mods
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "scanner.cli", "--help"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and time.monotonic() - t0 < 5
    for needed in ("Examples:", "Exit status:", "--jsonl", "--resume", "--threshold", "130", "--examples"):
        assert needed in r.stdout


def test_no_torch_on_the_scanning_path(tmp_path: Path, onnx_model_dir: Path) -> None:
    tiny_pngs(tmp_path / "lib", 3)
    code = (
        "import sys\n"
        "from scanner.cli import main\n"
        f"sys.argv = ['mai-scan', {str(tmp_path / 'lib')!r}, '--model', {str(onnx_model_dir)!r}, '--workers', '2',"
        " '--jsonl', '-', '-q']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert "NO-TORCH 0" in r.stderr, r.stderr
    assert len(r.stdout.splitlines()) == 3
    # What the decode workers import (the forkserver preloads scanner.decode):
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import scanner.decode, scanner.engine_local"],
                       capture_output=True, text=True, env=_env(), check=True)
    assert not re.search(r"\|\s+torch\b", r.stderr)


def test_jsonl_one_record_per_file_whatever_the_input(tmp_path: Path, model_args: list[str], capsys) -> None:
    expect = make_library(tmp_path / "lib")
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli([str(tmp_path / "lib"), "--jsonl", str(out), "--workers", "0", *model_args], capsys)
    assert code == 3, err  # finished, with error records
    assert stdout == ""  # --jsonl FILE: nothing on stdout
    recs = read_jsonl(out)
    names = [os.path.relpath(r["path"], tmp_path / "lib") for r in recs]
    assert sorted(names) == sorted(expect) and len(names) == len(set(names))
    for r, name in zip(recs, names, strict=True):
        assert tuple(r) == FIELDS and r["schema"] == SCHEMA
        want = expect[name]
        if "kind" in want:
            assert r["verdict"] == "error" and r["error"]["kind"] == want["kind"], (name, r)
        else:
            assert r["verdict"] in ("synthetic", "authentic", "uncertain") and r["error"] is None, (name, r)
            assert (r["width"], r["height"]) == want["size"] and r["format"] == want["format"], name
            assert r["stage"] == "cnn" and r["scores"]["cnn"] is not None and r["model"].startswith("test-cnn@")
    kinds = Counter(v["kind"] for v in expect.values() if "kind" in v)
    assert f"errors: {kinds['decode']} decode, {kinds['too_large']} too_large" in err
    assert "images/s" in err and "model: test-cnn@" in err


def test_plain_output_when_not_a_terminal(tmp_path: Path, model_args: list[str], capsys) -> None:
    lib = tmp_path / "lib"
    tiny_pngs(lib, 3)
    (lib / "new\nline.png").write_bytes(encode(photo(), "PNG"))
    (lib / "empty.jpg").write_bytes(b"")
    code, stdout, err = run_cli([str(lib), "--workers", "0", *model_args], capsys)
    assert code == 3
    lines = stdout.splitlines()
    assert len(lines) == 5 and all(len(line.split("\t")) == 5 for line in lines)
    rows = {line.split("\t")[4]: line.split("\t") for line in lines}
    assert rows[f"{lib}/new\\nline.png"][0] in ("synthetic", "authentic", "uncertain")
    assert rows[f"{lib}/empty.jpg"][:3] == ["error", "-", "-"]
    assert rows[f"{lib}/empty.jpg"][3] == "decode: empty file"
    assert "\x1b[" not in stdout and "mai-scan:" in err  # summary on stderr


def test_rich_table_and_no_color(tmp_path: Path, model_args: list[str], capsys,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_pngs(tmp_path / "lib", 2)
    (tmp_path / "lib" / "gen.png").write_bytes(a1111_png())
    args = [str(tmp_path / "lib"), "--format", "table", "--workers", "0", *model_args]
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
    assert plain.splitlines()[0].split() == ["verdict", "score", "stage", "size", "path"]
    assert re.search(r"\x1b\[[0-9;]*3[1-7]m", stdout)  # coloured verdicts
    assert "metadata: AUTOMATIC1111" in stdout and "32x32" in stdout
    monkeypatch.setenv("NO_COLOR", "1")
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and not re.search(r"\x1b\[[0-9;]*3[1-7]m", stdout) and "gen.png" in stdout


def test_metadata_signal_decides(tmp_path: Path, model_args: list[str], capsys) -> None:
    (tmp_path / "gen.png").write_bytes(a1111_png())
    code, stdout, _ = run_cli([str(tmp_path / "gen.png"), "--jsonl", "-", "-q", *model_args], capsys)
    assert code == 0
    [r] = [json.loads(line) for line in stdout.splitlines()]
    assert (r["verdict"], r["stage"], r["score"]) == ("synthetic", "metadata", 1.0)
    assert r["scores"]["cnn"] is not None  # the CNN still ran
    assert r["provenance"][0]["signal"] == "png:parameters" and r["provenance"][0]["generator"]


def test_bundled_examples(model_args: list[str], capsys) -> None:
    code, stdout, err = run_cli(["--examples", "--jsonl", "-", *model_args], capsys)
    assert code == 0, err
    recs = {os.path.basename(r["path"]): r for r in map(json.loads, stdout.splitlines())}
    assert len(recs) == 5
    assert recs["ai-flux-schnell-comfyui.png"]["stage"] == "metadata"
    assert all(r["error"] is None for r in recs.values())


def test_threshold_and_band_options(tmp_path: Path, model_args: list[str], capsys) -> None:
    tiny_pngs(tmp_path / "lib", 4)

    def verdicts(*extra: str) -> Counter:
        code, stdout, _ = run_cli([str(tmp_path / "lib"), "--jsonl", "-", "-q", "--workers", "0", "--no-state",
                                   *model_args, *extra], capsys)
        assert code in (0, 4)
        return Counter(json.loads(line)["verdict"] for line in stdout.splitlines())

    assert verdicts("--threshold", "0") == {"synthetic": 4}  # the stored band is dropped
    assert verdicts("--threshold", "1") == {"authentic": 4}
    assert verdicts("--uncertain", "0,1") == {"uncertain": 4}
    assert "uncertain" not in verdicts("--no-uncertain")


def test_exit_codes(tmp_path: Path, model_args: list[str], onnx_model_dir: Path, capsys) -> None:
    lib = tmp_path / "lib"
    tiny_pngs(lib, 2)
    assert run_cli([str(lib), "-q", *model_args], capsys)[0] == 0
    code, _, err = run_cli([str(tmp_path / "missing"), *model_args], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "no such file or folder" in err
    code, _, err = run_cli([str(lib), "--model", str(tmp_path)], capsys)
    assert code == 2 and "model.fp32.onnx" in err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    code, _, err = run_cli([str(lib), "--model", str(tmp_path / "junk.onnx")], capsys)
    assert code == 2 and "cannot open" in err
    code, _, err = run_cli([str(lib), "--resume", *model_args], capsys)
    assert code == 2 and "--resume needs --jsonl FILE" in err
    code, _, err = run_cli([str(lib), "--uncertain", "0.1,0.2", *model_args], capsys)
    assert code == 2 and "must contain the threshold" in err
    code, _, err = run_cli([str(lib), "--uncertain", "nonsense", *model_args], capsys)
    assert code == 2
    code, _, err = run_cli([], capsys)
    assert code == 2 and "--examples" in err
    assert run_cli([str(lib), "-q", "--threshold", "0", "--fail-on", "synthetic", *model_args], capsys)[0] == 4
    assert run_cli([str(lib), "-q", "--threshold", "1", "--fail-on", "synthetic", *model_args], capsys)[0] == 0
    (lib / "bad.jpg").write_bytes(b"text")
    assert run_cli([str(lib), "-q", *model_args], capsys)[0] == 3
    # --fail-on wins over error records.
    assert run_cli([str(lib), "-q", "--threshold", "0", "--fail-on", "synthetic", *model_args], capsys)[0] == 4


def test_default_model_missing_is_one_clear_line(tmp_path: Path, capsys) -> None:
    from mai.artifact import default_model_dir

    if any(default_model_dir().glob("model.*.onnx")):
        pytest.skip("the default model is installed")
    tiny_pngs(tmp_path, 1)
    code, _, err = run_cli([str(tmp_path)], capsys)
    assert code == 2 and "--model PATH" in err and err.strip().count("\n") == 0


def test_decode_workers_that_cannot_start_are_one_clear_line(tmp_path: Path, model_args: list[str], capsys,
                                                             monkeypatch) -> None:
    # As seen in CI: multiprocessing fails inside the pool's constructor when the
    # interpreter and its standard library disagree.
    import scanner.decode_pool as dp

    def broken(*a: object, **k: object) -> None:
        raise AttributeError("'_thread.RLock' object has no attribute '_recursion_count'")

    monkeypatch.setattr(dp, "ProcessPoolExecutor", broken)
    tiny_pngs(tmp_path, 2)
    code, _, err = run_cli([str(tmp_path), "--workers", "2", "--no-state", *model_args], capsys)
    assert code == 2 and "--workers 0" in err and "_recursion_count" in err
    assert "Traceback" not in err
    assert run_cli([str(tmp_path), "--workers", "0", "--no-state", "-q", *model_args], capsys)[0] == 0


def _paths(path: Path) -> list[str]:
    return [r["path"] for r in read_jsonl(path)]


def test_resume_after_a_half_written_line(tmp_path: Path, model_args: list[str], capsys) -> None:
    lib = tmp_path / "lib"
    tiny_pngs(lib, 12)
    full = tmp_path / "full.jsonl"
    assert run_cli([str(lib), "--jsonl", str(full), "--workers", "0", *model_args], capsys)[0] == 0
    lines = full.read_bytes().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])  # killed mid-write
    code, _, err = run_cli([str(lib), "--jsonl", str(part), "--resume", "--workers", "0", *model_args], capsys)
    assert code == 0, err
    got = _paths(part)
    assert sorted(got) == sorted(_paths(full)) and len(got) == len(set(got)) == 12
    assert part.read_bytes().startswith(b"".join(lines[:5]))  # what was whole is kept as it was
    assert "cut" in err and "resumed: 5 records" in err


def test_resume_matches_paths_however_spelt_and_checks_the_model(tmp_path: Path, model_args: list[str], capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tiny_pngs(tmp_path / "lib", 4)
    out = tmp_path / "out.jsonl"
    assert run_cli(["lib", "--jsonl", str(out), "--workers", "0", *model_args], capsys)[0] == 0
    code, _, err = run_cli(["./lib/", "--jsonl", str(out), "--resume", "--workers", "0", *model_args], capsys)
    assert code == 0 and len(_paths(out)) == 4 and "resumed: 4 records" in err
    lines = out.read_text().splitlines()
    out.write_text("\n".join([*lines[:2], lines[2].replace("test-cnn@", "other@")]) + "\n")
    code, _, err = run_cli(["lib", "--jsonl", str(out), "--resume", *model_args], capsys)
    assert code == 2 and "other@" in err and "same --model" in err


def _slow_scan(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the scan ended early: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no records appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupt_then_resume_gives_each_file_exactly_once(tmp_path: Path, model_args: list[str], capsys,
                                                            sig: int) -> None:
    lib = tmp_path / "lib"
    # 200 files at 0.05 s a record: the scan outlasts the signal even when a loaded
    # CI machine starves this test's polling for seconds.
    tiny_pngs(lib, 200)
    (lib / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out.jsonl"
    args = [str(lib), "--jsonl", str(out), "--workers", "0" if sig == signal.SIGKILL else "2", "--batch-size", "2",
            *model_args]
    proc = _slow_scan(args)
    _wait_for_lines(out, 8, proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    if sig == signal.SIGINT:
        assert rc == 130 and "--resume" in err, err
    else:
        assert rc == -signal.SIGKILL
    done = len(_paths(out))
    assert 8 <= done < 201
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 3, err  # bad.jpg is an error record, whichever run wrote it
    assert "201 records" in err and "1 error" in err
    got = _paths(out)
    assert len(got) == len(set(got)) == 201, Counter(got).most_common(3)


def test_stdout_closed_early(tmp_path: Path, model_args: list[str]) -> None:
    tiny_pngs(tmp_path / "lib", 40)
    proc = _slow_scan([str(tmp_path / "lib"), "--format", "plain", "--workers", "0", *model_args])
    first = proc.stdout.readline()
    assert first.count(b"\t") == 4
    proc.stdout.close()
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert rc == 141 and "Traceback" not in err, err


def test_scan_flags_are_exactly_the_commands_parameters() -> None:
    import dataclasses

    from scanner.cli import ScanFlags, cli

    assert {f.name for f in dataclasses.fields(ScanFlags)} == {p.name for p in cli.params if p.expose_value}
