"""`mai-scan --engine ray` (scanner.engine_ray) and `--out-dir` shards (scanner.shards).

On CPU, without network: one local Ray session (2 CPUs) shared by the module.
Ray workers import this module (for the crashing decoder) through PYTHONPATH,
set before Ray starts. Skipped where Ray is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.scan import crash_decode_chunk, make_library, read_jsonl, run_cli, tiny_pngs
from support.scan import scan_env as _env

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mai-detect[ray]')")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_session():
    old_path, old_term = os.environ.get("PYTHONPATH"), signal.getsignal(signal.SIGTERM)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), old_path or ""])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    yield
    ray.shutdown()


def _by_path(records: list[dict]) -> dict[str, dict]:
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), Counter(paths).most_common(3)
    return dict(zip(paths, records, strict=True))


def test_help_and_local_scans_never_import_ray(tmp_path: Path, onnx_model_dir: Path) -> None:
    tiny_pngs(tmp_path / "lib", 3)
    code = (
        "import sys\n"
        "from scanner.cli import main\n"
        "def go(*args):\n"
        "    sys.argv = ['mai-scan', *args]\n"
        "    try:\n        main()\n    except SystemExit as e:\n        return e.code\n"
        "rc_help = go('--help')\n"
        "ray = lambda: any(m == 'ray' or m.startswith('ray.') for m in sys.modules)\n"
        "after_help = ray()\n"
        f"rc = go({str(tmp_path / 'lib')!r}, '--model', {str(onnx_model_dir)!r}, '--workers', '0',"
        " '--jsonl', '-', '-q')\n"
        "print('RAY' if after_help or ray() else 'NO-RAY', rc_help or 0, rc, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert "NO-RAY 0 0" in r.stderr, r.stderr
    assert "--engine [local|ray]" in r.stdout and "--ray-address" in r.stdout and "--out-dir" in r.stdout
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == 3


def test_local_and_ray_give_the_same_records(tmp_path: Path, model_args: list[str], ray_session, capfd) -> None:
    lib = tmp_path / "lib"
    expect = make_library(lib)  # every colour mode, odd names, bad files
    tiny_pngs(lib, 12, "sub")
    out = tmp_path / "shards"
    code, stdout, err = run_cli([str(lib), "--engine", "ray", "--workers", "2", "--batch-size", "8",
                                 "--jsonl", "-", "--out-dir", str(out), *model_args], capfd)
    assert code == 3, err  # finished, with error records
    ray_lines = stdout.splitlines()
    ray_recs = _by_path([json.loads(line) for line in ray_lines])  # nothing on stdout but records
    assert len(ray_recs) == len(expect) + 12
    assert "Ray worker" in err and "ray: running (2 CPUs" in err

    # --out-dir: the same records in shards, all complete, and the manifest says so.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] is True and manifest["records"] == len(ray_recs)
    assert all(s["complete"] for s in manifest["shards"])
    sharded = [r for s in manifest["shards"] for r in read_jsonl(out / s["file"])]
    assert _by_path(sharded) == ray_recs

    code, _, err = run_cli([str(lib), "--jsonl", str(tmp_path / "local.jsonl"), "--workers", "0", "--rescan",
                            *model_args], capfd)
    assert code == 3, err
    local = _by_path(read_jsonl(tmp_path / "local.jsonl"))
    assert local.keys() == ray_recs.keys()
    for path, a in local.items():
        b = ray_recs[path]
        assert a["verdict"] == b["verdict"] and a["error"] == b["error"], path
        if a["score"] is not None:
            assert abs(a["score"] - b["score"]) <= 1e-6 and abs(a["scores"]["cnn"] - b["scores"]["cnn"]) <= 1e-6
        for k in ("schema", "stage", "provenance", "model", "width", "height", "format", "bytes"):
            assert a[k] == b[k], (path, k)
    kinds = Counter(r["error"]["kind"] for r in ray_recs.values() if r["error"])
    assert kinds == Counter(v["kind"] for v in expect.values() if "kind" in v)  # bad input: records on workers

    # The Ray scan wrote the scan state: a rescan of unchanged files rebuilds their
    # records from it and never starts Ray (the local scan rewrote the same rows).
    code, stdout, err = run_cli([str(lib / "sub"), "--engine", "ray", "--jsonl", "-", *model_args], capfd)
    assert code == 0 and "ray:" not in err and "unchanged: 12 files" in err, err
    again = _by_path([json.loads(line) for line in stdout.splitlines()])
    assert again == {p: r for p, r in ray_recs.items() if p.startswith(str(lib / "sub"))}


def test_a_dying_worker_loses_no_file_and_writes_none_twice(tmp_path: Path, onnx_model_dir: Path, ray_session,
                                                            capfd) -> None:
    from scanner.engine import EngineOptions
    from scanner.engine_ray import RayEngine
    from scanner.records import Decision
    from scanner.walk import walk

    lib = tmp_path / "lib"
    tiny_pngs(lib, 16)
    (lib / "crash.png").write_bytes((lib / "img_0000.png").read_bytes())
    heard: list[str] = []
    engine = RayEngine(str(onnx_model_dir), "cpu", 1, workers=2, log=heard.append)
    engine.task_retries, engine.isolated_retries = 1, 0  # fewer deaths of the crashing file: a faster test
    model = engine.open_model()
    got: list[tuple[dict, object]] = []
    engine.run(walk([str(lib)]), model, Decision.make(model.threshold, model.uncertain),
               lambda rec, entry: got.append((rec, entry)),
               options=EngineOptions(batch_size=4, decode_fn=crash_decode_chunk))
    recs = _by_path([r for r, _ in got])  # each file exactly once
    assert len(recs) == 17 and all(entry is not None for _, entry in got)
    assert (lib / ".died-once").exists()  # the worker really died on img_0007.png ...
    assert recs[str(lib / "img_0007.png")]["error"] is None  # ... and Ray's retry scored it
    crash = recs[str(lib / "crash.png")]
    assert crash["verdict"] == "error" and crash["error"]["kind"] == "decode" and "died" in crash["error"]["message"]
    assert sum(r["error"] is None for r in recs.values()) == 16
    assert engine.retried >= 1 and any("one by one" in h for h in heard)
    assert capfd.readouterr().out == ""  # Ray's notes about dead workers never reach stdout


def test_resume_after_an_interrupted_ray_scan(tmp_path: Path, model_args: list[str], ray_session, capfd,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import scanner.sinks as sinks

    lib = tmp_path / "lib"
    tiny_pngs(lib, 30)
    (lib / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out.jsonl"
    args = [str(lib), "--jsonl", str(out), "--engine", "ray", "--workers", "2", "--batch-size", "4", *model_args]
    write, calls = sinks.JsonlWriter.write, [0]

    def interrupted(self, record):  # Ctrl-C in the driver while records stream back
        calls[0] += 1
        if calls[0] == 10:
            raise KeyboardInterrupt
        write(self, record)

    monkeypatch.setattr(sinks.JsonlWriter, "write", interrupted)
    code, _, err = run_cli(args, capfd)
    assert code == 130 and "--resume" in err, err
    monkeypatch.setattr(sinks.JsonlWriter, "write", write)
    with open(out, "ab") as f:
        f.write(b'{"schema": "mai.scan/1", "path": "half a li')  # and a kill in the middle of a line
    assert len(read_jsonl_lenient(out)) == 9

    code, _, err = run_cli([*args, "--resume"], capfd)
    assert code == 3, err  # bad.jpg is an error record
    assert "resumed: 9 records" in err and "31 records" in err and "1 error" in err
    got = [r["path"] for r in read_jsonl(out)]
    assert len(got) == len(set(got)) == 31, Counter(got).most_common(3)


def read_jsonl_lenient(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def test_out_dir_shards_manifest_and_resume(tmp_path: Path, model_args: list[str], capsys,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import scanner.shards as shards

    monkeypatch.setattr(shards, "RECORDS_PER_SHARD", 5)
    lib = tmp_path / "lib"
    tiny_pngs(lib, 12)
    out = tmp_path / "out"
    args = [str(lib), "--out-dir", str(out), "--workers", "0", "--no-state", *model_args]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and stdout == "", err  # --out-dir, like --jsonl FILE: nothing on stdout
    m = json.loads((out / "manifest.json").read_text())
    assert [(s["file"], s["records"], s["complete"]) for s in m["shards"]] == [
        ("part-00000.jsonl", 5, True), ("part-00001.jsonl", 5, True), ("part-00002.jsonl", 2, True)]
    assert m["finished"] is True and m["records"] == 12 and m["record_schema"] == "mai.scan/1"
    full = sorted(r["path"] for s in m["shards"] for r in read_jsonl(out / s["file"]))
    assert len(set(full)) == 12

    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds a scan" in err  # nothing is overwritten
    code, _, err = run_cli([*args, "--jsonl", str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and "choose one" in err

    # What a killed scan leaves: the last shard open, ending in half a line.
    (out / "part-00002.jsonl").unlink()
    lines = (out / "part-00001.jsonl").read_bytes().splitlines(keepends=True)
    (out / "part-00001.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:20])
    m["finished"], m["shards"] = False, [m["shards"][0], {**m["shards"][1], "records": None, "complete": False}]
    (out / "manifest.json").write_text(json.dumps(m))
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "resumed: 7 records" in err and "cut 20 bytes" in err, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["finished"] is True and all(s["complete"] for s in m["shards"]) and m["records"] == 12
    assert [s["records"] for s in m["shards"]] == [5, 2, 5]
    got = sorted(r["path"] for s in m["shards"] for r in read_jsonl(out / s["file"]))
    assert got == full
