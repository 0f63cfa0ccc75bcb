"""`ScanJob` with any engine: resume, the scan state, the sinks and the exit
status belong to the job, so an engine that only turns files into records (here
a stand-in with no model, no decoding) gets them all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scanner.engine import Engine, EngineOptions
from scanner.exits import EXIT_ERRORS, EXIT_FAIL_ON, EXIT_INTERRUPTED, EXIT_OK
from scanner.job import JobOptions, Outputs, ScanError, ScanJob
from scanner.records import Decision, error_record, make_record
from scanner.walk import walk


class Model:
    model_id, precision, threshold, uncertain = "fake@00000000", "fp32", 0.5, (0.5, 0.5)

    def describe(self) -> str:
        return "fake"


class FakeEngine:
    """Scores a file by its size (bytes modulo 10 / 10); a file named bad* is an
    error record; stops with Ctrl-C after `stop_after` scored files."""

    name = "fake"

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.scored = stop_after, []

    def open_model(self) -> Model:
        return Model()

    def run(self, source: Any, model: Any, decision: Decision, emit: Any, *, options: Any = None,
            triage: Any = None, tick: Any = None, second_opinion: Any = None) -> None:
        for entry in source:
            if triage(entry):
                continue
            if self.stop_after is not None and len(self.scored) == self.stop_after:
                raise KeyboardInterrupt
            self.scored.append(Path(entry.path).name)
            if Path(entry.path).name.startswith("bad"):
                emit(error_record(entry.path, "decode", "not an image", model=model.model_id), entry)
            else:
                facts = {"width": 1, "height": 1, "format": "PNG", "bytes": entry.size,
                         "scores": {"cnn": entry.size % 10 / 10, "vlm": None}}
                emit(make_record(entry.path, model=model.model_id, facts=facts, decision=decision), entry)
            tick()

    def close(self) -> None:
        pass


def _lib(root: Path, sizes: dict[str, int]) -> Path:
    root.mkdir()
    for name, size in sizes.items():
        (root / name).write_bytes(b"x" * size)
    return root


def _job(outputs: Outputs, state: bool = False, **kw: Any) -> ScanJob:
    return ScanJob(Model(), Decision.make(0.5, None), outputs, JobOptions(use_state=state, **kw))


def _run(job: ScanJob, engine: FakeEngine, root: Path) -> int:
    return job.run(engine, walk([str(root)]), EngineOptions(workers=0))


def test_both_engines_and_the_stand_in_follow_the_protocol(tmp_path: Path) -> None:
    from scanner.engine import open_engine
    from scanner.engine_ray import RayEngine

    local = open_engine("local", str(tmp_path), "cpu", 1, print)
    ray = RayEngine(str(tmp_path), "cpu", 1)  # Ray itself starts only when a scan runs
    for engine in (FakeEngine(), local, ray):
        assert isinstance(engine, Engine), engine
    assert (local.name, ray.name) == ("local", "ray")
    assert not isinstance(object(), Engine)


def test_the_models_the_engines_open_follow_the_scan_model_protocol(onnx_model_dir: Path) -> None:
    from mai.session import open_model
    from scanner.engine import ScanModel
    from scanner.engine_ray import RayEngine, RayModel

    model = open_model(onnx_model_dir, device="cpu")
    for m in (model, RayModel(model, RayEngine(str(onnx_model_dir), "cpu", 1))):
        assert isinstance(m, ScanModel), m
    assert not isinstance(object(), ScanModel)


def test_exit_status_follows_the_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _lib(tmp_path / "lib", {"a.png": 3, "b.png": 7})
    out = tmp_path / "out.jsonl"
    assert _run(_job(Outputs.check(str(out), "auto", None, False, True)), FakeEngine(), root) == EXIT_OK
    assert [json.loads(line)["verdict"] for line in out.read_text().splitlines()] == ["authentic", "synthetic"]
    fail_on = _job(Outputs.check(str(out), "auto", None, False, True), fail_on=("synthetic",))
    assert _run(fail_on, FakeEngine(), root) == EXIT_FAIL_ON
    (root / "bad.png").write_bytes(b"?")
    assert _run(_job(Outputs.check(str(out), "auto", None, False, True)), FakeEngine(), root) == EXIT_ERRORS


def test_resume_and_the_scan_state_spare_the_engine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _lib(tmp_path / "lib", {f"{i}.png": i + 1 for i in range(6)})
    out = tmp_path / "out.jsonl"
    first = FakeEngine(stop_after=2)
    status = _run(_job(Outputs.check(str(out), "auto", None, False, False)), first, root)
    assert status == EXIT_INTERRUPTED and len(out.read_text().splitlines()) == 2
    assert "interrupted; run the same command with --resume" in capsys.readouterr().err
    # --resume: only the four files not in the output reach the engine; the file ends complete.
    rest = FakeEngine()
    assert _run(_job(Outputs.check(str(out), "auto", None, True, True), state=True), rest, root) == EXIT_OK
    assert sorted(rest.scored) == sorted(set(f"{i}.png" for i in range(6)) - set(first.scored))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in lines) == [f"{i}.png" for i in range(6)]
    # The scan state holds what that run scored: a rescan emits those from it and scores only the rest.
    again = FakeEngine()
    new = tmp_path / "again.jsonl"
    assert _run(_job(Outputs.check(str(new), "auto", None, False, True), state=True), again, root) == EXIT_OK
    assert sorted(again.scored) == sorted(first.scored)
    assert len(new.read_text().splitlines()) == 6
    # --rescan scores everything again.
    forced = FakeEngine()
    _run(_job(Outputs.check(str(new), "auto", None, False, True), state=True, rescan=True), forced, root)
    assert len(forced.scored) == 6


def test_resume_refuses_another_models_records(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"path": "x.png", "model": "other@11111111"}) + "\n")
    with pytest.raises(ScanError, match="holds records of other@11111111, not fake@00000000"):
        _job(Outputs.check(str(out), "auto", None, True, True))


@pytest.mark.parametrize(("args", "error"), [
    ((None, "auto", None, True, False), "--resume needs --jsonl FILE"),
    (("out.jsonl", "jsonl", None, False, False), "--format jsonl writes JSON Lines to stdout"),
    (("nowhere/out.jsonl", "auto", None, False, False), "does not exist"),
])
def test_outputs_are_checked_before_anything_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   args: tuple, error: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScanError, match=error):
        Outputs.check(*args)


def test_html_report_after_an_interrupted_scan_and_its_resume(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    # The report is a sink like the others: written after Ctrl-C (and saying so),
    # and after --resume it holds the whole scan; paths relative to the root.
    import re

    root = _lib(tmp_path / "lib", {f"{i}.png": 10 + i for i in range(6)} | {"bad.png": 3})
    out, page = tmp_path / "out.jsonl", tmp_path / "r.html"

    def summary_and_paths() -> tuple[dict, list[str]]:
        html = page.read_text()
        s = re.search(r'id="mai-summary">(.*?)</script>', html, re.S).group(1)
        d = re.search(r'id="mai-data">(.*?)</script>', html, re.S).group(1)
        return json.loads(s), sorted(x["r"]["path"] for x in json.loads(d))

    job = _job(Outputs.check(str(out), "auto", None, False, False, html=str(page)), roots=[str(root)])
    assert _run(job, FakeEngine(stop_after=2), root) == EXIT_INTERRUPTED
    summary, paths = summary_and_paths()
    assert summary["interrupted"] and len(paths) == 2 and all(p.startswith("lib/") for p in paths)
    assert f"report: {page} (2 records, no thumbnails)" in capsys.readouterr().err  # not images: none made
    job = _job(Outputs.check(str(out), "auto", None, True, True, html=str(page)), roots=[str(root)])
    assert _run(job, FakeEngine(), root) == EXIT_ERRORS
    summary, paths = summary_and_paths()
    assert not summary["interrupted"] and summary["total"] == 7 and paths == sorted(
        [f"lib/{i}.png" for i in range(6)] + ["lib/bad.png"])
    assert summary["models"][0]["threshold"] == 0.5 and summary["speed"]["resumed"] == 2
