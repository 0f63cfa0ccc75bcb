"""The engines' shared work: score_batch as a plain function, streaming while the walk goes
on, the process pool (same results as in-process), the second-opinion stage,
and a worker that dies on a file."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.scan import (
    a1111_png,
    crashing_decode_chunk,
    encode,
    failing_init,
    hanging_decode_chunk,
    make_library,
    photo,
    tiny_pngs,
)

from scanner.engine import EngineOptions, SecondOpinion, score_batch
from scanner.engine_local import run
from scanner.records import Decision
from scanner.walk import Entry, walk


@pytest.fixture(scope="module")
def model(onnx_model_dir: Path) -> Any:
    from mai.session import open_model

    return open_model(onnx_model_dir, "cpu", 1)


def _collect(source: Any, model: Any, decision: Decision, **kw: Any) -> list[dict]:
    out: list[dict] = []
    run(source, model, decision, lambda r, e: out.append(r), **kw)
    return out


def test_score_batch_is_a_plain_function(model: Any, tmp_path: Path) -> None:
    assert pickle.loads(pickle.dumps(score_batch)) is score_batch
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(encode(photo(), "PNG"))
    b.write_bytes(encode(photo(80, 60), "JPEG"))
    recs = score_batch([str(a), str(tmp_path / "gone.png"), str(b)], model)
    assert [r["path"] for r in recs] == [str(a), str(tmp_path / "gone.png"), str(b)]
    assert [r["verdict"] for r in recs][1] == "error" and recs[1]["error"]["kind"] == "vanished"
    assert recs[0]["model"] == model.model_id and 0 <= recs[0]["scores"]["cnn"] <= 1
    assert (recs[2]["width"], recs[2]["height"], recs[2]["format"]) == (80, 60, "JPEG")


def test_pool_and_in_process_agree(model: Any, tmp_path: Path) -> None:
    expect = make_library(tmp_path / "lib")
    d = Decision(0.5)
    inline = _collect(walk([str(tmp_path / "lib")]), model, d, options=EngineOptions(workers=0, batch_size=4))
    pooled = _collect(walk([str(tmp_path / "lib")]), model, d, options=EngineOptions(workers=2, batch_size=4))
    assert len(inline) == len(pooled) == len(expect)

    def key(rs: list[dict]) -> dict:
        return {r["path"]: (r["verdict"], r["scores"]["cnn"], r["error"] and r["error"]["kind"]) for r in rs}

    a, b = key(inline), key(pooled)
    assert a.keys() == b.keys()
    for p in a:
        assert a[p][0] == b[p][0] and a[p][2] == b[p][2]
        assert a[p][1] == pytest.approx(b[p][1], abs=1e-6) if a[p][1] is not None else b[p][1] is None


def test_results_stream_while_the_walk_goes_on(model: Any, tmp_path: Path) -> None:
    files = tiny_pngs(tmp_path, 12)
    first_record = threading.Event()
    waited: list[bool] = []

    def slow_walk():
        for p in files[:6]:
            st = p.stat()
            yield Entry(str(p), str(p), st.st_size, st.st_mtime_ns)
        # The walk stalls (a slow network share) until records come out.
        waited.append(first_record.wait(timeout=20))
        for p in files[6:]:
            st = p.stat()
            yield Entry(str(p), str(p), st.st_size, st.st_mtime_ns)

    out: list[dict] = []

    def emit(r: dict, e: Any) -> None:
        out.append(r)
        first_record.set()

    for workers in (0, 2):
        out.clear()
        first_record.clear()
        run(slow_walk(), model, Decision(0.5), emit,
            options=EngineOptions(workers=workers, batch_size=32, latency_s=0.05))
        assert waited.pop() is True, f"no record before the walk finished (workers={workers})"
        assert len(out) == 12


class FakeVLM:
    name = "fake"
    threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def score(self, images: list[np.ndarray], paths: list[str]) -> list[float]:
        assert all(a.dtype == np.uint8 and a.shape == (200, 200, 3) for a in images)
        self.calls.append((len(images), paths))
        return [0.9] * len(images)


def test_second_opinion_gets_only_the_uncertain(model: Any, tmp_path: Path) -> None:
    tiny_pngs(tmp_path / "lib", 6)
    (tmp_path / "lib" / "gen.png").write_bytes(a1111_png())
    vlm = FakeVLM()
    assert isinstance(vlm, SecondOpinion)
    everything_uncertain = Decision(0.5, (0.0, 1.0))
    recs = _collect(walk([str(tmp_path / "lib")]), model, everything_uncertain,
                    options=EngineOptions(workers=0, batch_size=16), second_opinion=vlm)
    assert len(vlm.calls) == 1 and vlm.calls[0][0] == 6  # batched; the metadata-decided file is not sent
    by = {os.path.basename(r["path"]): r for r in recs}
    assert by["gen.png"]["stage"] == "metadata" and by["gen.png"]["scores"]["vlm"] is None
    r = by["img_0000.png"]
    assert (r["verdict"], r["stage"], r["score"]) == ("synthetic", "vlm", 0.9)
    assert r["scores"]["cnn"] is not None
    # Without a second opinion they stay uncertain.
    recs = _collect(walk([str(tmp_path / "lib")]), model, everything_uncertain, options=EngineOptions(workers=0))
    assert sorted(r["verdict"] for r in recs) == ["synthetic"] + ["uncertain"] * 6


def test_a_file_that_kills_its_worker_is_an_error_record(model: Any, tmp_path: Path) -> None:
    tiny_pngs(tmp_path / "lib", 10)
    for name in ("crash-1.png", "crash-2.png"):  # walked first: before the pool has done anything
        (tmp_path / "lib" / name).write_bytes(encode(photo(), "PNG"))
    opts = EngineOptions(workers=2, batch_size=4, chunk_size=3, decode_fn=crashing_decode_chunk)
    recs = _collect(walk([str(tmp_path / "lib")]), model, Decision(0.5), options=opts)
    assert len(recs) == 12 and len({r["path"] for r in recs}) == 12
    bad = [r for r in recs if r["verdict"] == "error"]
    assert sorted(os.path.basename(r["path"]) for r in bad) == ["crash-1.png", "crash-2.png"]
    assert bad[0]["error"]["kind"] == "decode" and "crashed" in bad[0]["error"]["message"]


def test_a_decode_that_hangs_is_stopped_and_becomes_an_error_record(model: Any, tmp_path: Path) -> None:
    tiny_pngs(tmp_path / "lib", 6)
    (tmp_path / "lib" / "hang-0.png").write_bytes(encode(photo(), "PNG"))
    opts = EngineOptions(workers=2, batch_size=4, chunk_size=2, decode_fn=hanging_decode_chunk,
                         decode_timeout_s=1.0)
    started = time.monotonic()
    recs = _collect(walk([str(tmp_path / "lib")]), model, Decision(0.5), options=opts)
    assert time.monotonic() - started < 30  # twice the timeout (in its chunk, then alone), plus restarts
    assert len(recs) == 7 and len({r["path"] for r in recs}) == 7
    bad = [r for r in recs if r["verdict"] == "error"]
    assert [os.path.basename(r["path"]) for r in bad] == ["hang-0.png"]
    assert bad[0]["error"]["kind"] == "decode" and "longer than 1 s" in bad[0]["error"]["message"]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="the memory bound is Linux's RLIMIT_AS")
def test_a_decode_over_the_memory_bound_is_too_large_and_the_worker_goes_on(model: Any, tmp_path: Path) -> None:
    from PIL import Image

    tiny_pngs(tmp_path / "lib", 3)
    Image.new("RGB", (5000, 5000), (90, 120, 30)).save(tmp_path / "lib" / "big.png")  # 100 MB to decode
    opts = EngineOptions(workers=1, batch_size=4, chunk_size=1, decode_memory_bytes=48 << 20)
    recs = _collect(walk([str(tmp_path / "lib")]), model, Decision(0.5), options=opts)
    by_name = {os.path.basename(r["path"]): r for r in recs}
    assert len(by_name) == 4
    assert by_name["big.png"]["error"]["kind"] == "too_large"
    assert "bound of 0.046875 GiB" in by_name["big.png"]["error"]["message"]
    assert all(r["verdict"] != "error" for name, r in by_name.items() if name != "big.png")
    # Without the bound the same file decodes.
    recs = _collect(walk([str(tmp_path / "lib")]), model, Decision(0.5), options=EngineOptions(workers=1))
    assert all(r["verdict"] != "error" for r in recs)


@pytest.mark.parametrize("attempt", range(int(os.environ.get("MAI_RACE_RUNS", "5"))))  # 1000 for the campaign
def test_a_pool_broken_before_the_collect_step_loses_nothing(model: Any, tmp_path: Path, monkeypatch,
                                                             attempt: int) -> None:
    """The race made certain: every submit after the first waits until the first
    chunk's worker has died, so the pool is already broken when the next chunks are
    submitted (before the collect step has seen the dead future). The refused chunks
    wait for the restart; the culprit becomes one error record; nothing is lost."""
    from concurrent.futures import wait as wait_all

    from scanner import decode_pool

    tiny_pngs(tmp_path / "lib", 9)
    (tmp_path / "lib" / "crash-0.png").write_bytes(encode(photo(), "PNG"))  # walked first
    first: list[Any] = []
    submit = decode_pool.DecodePool.submit

    def submit_after_the_death(self: Any, paths: list[str]) -> Any:
        if first:
            wait_all(first)
        fut = submit(self, paths)
        if not first:
            first.append(fut)
        return fut

    monkeypatch.setattr(decode_pool.DecodePool, "submit", submit_after_the_death)
    opts = EngineOptions(workers=2, batch_size=4, chunk_size=2, decode_fn=crashing_decode_chunk)
    recs = _collect(walk([str(tmp_path / "lib")]), model, Decision(0.5), options=opts)
    assert len(recs) == 10 and len({r["path"] for r in recs}) == 10
    bad = [os.path.basename(r["path"]) for r in recs if r["verdict"] == "error"]
    assert bad == ["crash-0.png"]


def test_interrupt_stops_cleanly(model: Any, tmp_path: Path) -> None:
    tiny_pngs(tmp_path / "lib", 40)
    seen: list[dict] = []

    def emit(r: dict, e: Any) -> None:
        seen.append(r)
        if len(seen) == 5:
            raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(walk([str(tmp_path / "lib")]), model, Decision(0.5), emit,
            options=EngineOptions(workers=2, batch_size=2))
    assert len(seen) == 5 and time.monotonic() - t0 < 30
    assert not [t for t in threading.enumerate() if t.name == "mai-scan-walk" and t.is_alive()]
    # Nothing is left to hold the interpreter's exit: the decode pool's manager thread ends
    # once its workers have finished the chunks they held (at stop 31 one was killed while
    # sending a result, and the manager read half a message forever).
    managers = [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]
    for t in managers:
        t.join(timeout=30)
    assert not [t.name for t in managers if t.is_alive()]


def test_workers_that_cannot_start_are_a_clear_error(model: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from mai.errors import MaiError
    from scanner import decode_pool

    tiny_pngs(tmp_path, 4)
    monkeypatch.setattr(decode_pool.DecodePool, "_start", lambda self: ProcessPoolExecutor(
        1, mp_context=get_context("spawn"), initializer=failing_init))
    with pytest.raises(MaiError, match="--workers 0"):
        _collect(walk([str(tmp_path)]), model, Decision(0.5), options=EngineOptions(workers=1))


def test_both_decode_paths_follow_the_strategy_protocol(model: Any) -> None:
    from scanner.engine_local import CpuPath, GpuPath, LocalScan, ScanPath

    class StandInGpu:
        def infer(self, *a: Any) -> dict:
            return {}

    for gpu, kind in ((None, CpuPath), (StandInGpu(), GpuPath)):
        scan = LocalScan(model, Decision(0.5), lambda rec, entry: None, EngineOptions(workers=0, gpu=gpu))
        try:
            assert isinstance(scan.path, kind) and isinstance(scan.path, ScanPath)
        finally:
            scan.path.close(clean=True)
            scan.pool.close()
