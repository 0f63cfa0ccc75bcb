"""The local engine: walk -> decode pool -> batches -> ONNX Runtime -> records, on this machine.

    walk (a thread) --bounded queue--> triage (main) --chunks--> decode workers
        --bounded in-flight futures--> ready list --full batches--> model --> emit

Memory stays flat in the number of files: the walk queue, the decode work in
flight and the ready list are all bounded, and workers return arrays at the
model's input size, never full images. Results stream while the walk is still
going; the model runs in the parent (ONNX Runtime has its own threads).

Batches are full, except the last one and one that waited longer than
`latency_s` (a slow disk or a small folder must not hold records back).
Records are emitted in completion order, not walk order.

A worker that dies (a decoder crash on a hostile file, the OOM killer, or a
decode stopped by the per-file timeout) breaks the whole process pool; the
files it held are then retried one at a time in a fresh pool, so the one that
kills it again gets an error record and the scan goes on.

The per-batch work (`describe`) and the walk thread are `scanner.engine`'s,
shared with the Ray engine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mai.errors import MaiError
from mai.preprocess import PreprocessSpec
from scanner.decode import Decoded, init_worker, read_chunk
from scanner.engine import WALK_END, Emit, EngineOptions, SecondOpinion, describe, feed_walk, infer_host, route_walked
from scanner.records import Decision, error_record
from scanner.walk import Entry, WalkError


class LocalEngine:
    """This machine: decode worker processes, the model in this process (`run`)."""

    name = "local"

    def __init__(self, model_path: str, device: str, threads: int | None, log: Callable[[str], None],
                 precision: str | None = None) -> None:
        self.model_path, self.device, self.threads, self.log = model_path, device, threads, log
        self.precision = precision  # None: mai.session's rule

    def open_model(self) -> Any:
        from mai.session import open_model

        return open_model(self.model_path, self.device, self.threads or os.cpu_count(), self.log,
                          precision=self.precision)

    def run(self, source: Iterable[Entry | WalkError], model: Any, decision: Decision, emit: Emit,
            **kw: Any) -> None:
        run(source, model, decision, emit, **kw)

    def close(self) -> None:
        pass


class _Pool:
    """The decode workers: a process pool, or this process when workers == 0;
    on the GPU path also the reader threads, and the pool starts when first needed."""

    def __init__(self, workers: int, spec: PreprocessSpec, opts: EngineOptions) -> None:
        self.workers, self.spec, self.opts = workers, spec, opts
        self.ex: ProcessPoolExecutor | None = None
        self.readers: ThreadPoolExecutor | None = None
        if opts.gpu is not None:
            self.readers = ThreadPoolExecutor(max(1, opts.readers), thread_name_prefix="mai-scan-read")
        elif workers:
            self.ex = self._start()

    def read(self, paths: list[str]) -> Future:
        assert self.readers is not None
        return self.readers.submit(read_chunk, paths, self.spec, self.opts.max_pixels, False)

    def _start(self) -> ProcessPoolExecutor:
        # forkserver/spawn, never fork: the parent has threads (the walk, ONNX
        # Runtime), and forking a threaded process can deadlock the child.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["scanner.decode"])  # workers fork with Pillow and NumPy loaded
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(self.opts.decode_timeout_s, self.opts.decode_memory_bytes))

    def submit(self, paths: list[str]) -> Future:
        """Raises BrokenProcessPool when the pool cannot take work: besides the
        executor's own BrokenProcessPool, a submit that races its teardown can fail
        while spawning a replacement worker on a pipe already closed (OSError,
        EOFError; seen about once in 200 runs of the race test), or find it shut
        down (RuntimeError). All mean the same here: restart, resubmit."""
        if self.ex is None:
            self.ex = self._start()
        try:
            return self.ex.submit(self.opts.decode_fn, paths, self.spec, self.opts.max_pixels, self.opts.draft)
        except (OSError, EOFError, RuntimeError) as e:
            raise BrokenProcessPool(f"the decode pool is going down: {type(e).__name__}: {e}") from e

    def inline(self, paths: list[str]) -> list[Decoded]:
        return self.opts.decode_fn(paths, self.spec, self.opts.max_pixels, self.opts.draft)

    def alive(self) -> bool:
        """Whether a worker can run at all (no file involved); raises if not."""
        assert self.ex is not None
        try:
            self.ex.submit(os.getpid).result(timeout=120)
            return True
        except BrokenProcessPool:
            raise MaiError("the decode worker processes die on start (a broken install, or a script "
                           "without an `if __name__ == '__main__':` guard); run with --workers 0 to "
                           "decode in this process") from None

    def restart(self) -> None:
        self.close(abort=True)
        self.ex = self._start()

    def close(self, abort: bool = False) -> None:
        if self.readers is not None:
            self.readers.shutdown(wait=not abort, cancel_futures=abort)
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if not abort:
            ex.shutdown(wait=True)
            return
        ex.shutdown(wait=False, cancel_futures=True)
        # Interrupted or broken: do not wait for a worker stuck in a huge decode.
        for p in list((getattr(ex, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                p.terminate()


def _death(seconds: float, opts: EngineOptions) -> str:
    """Why a worker decoding one file alone died: the timeout stopped it, or it crashed."""
    if opts.decode_timeout_s and seconds >= 0.95 * opts.decode_timeout_s:
        return (f"decoding took longer than {opts.decode_timeout_s:g} s and was stopped "
                "(a hostile or broken file; the worker was ended)")
    return "the decoder crashed on this file (worker died)"


def run(source: Iterable[Entry | WalkError], model: Any, decision: Decision, emit: Emit, *,
        options: EngineOptions | None = None, triage: Callable[[Entry], bool] | None = None,
        second_opinion: SecondOpinion | None = None, tick: Callable[[], None] | None = None) -> None:
    """Scan everything `source` yields, as `scanner.engine.Engine.run` says."""
    opts = options or EngineOptions()
    spec = model.spec
    pool = _Pool(opts.workers, spec, opts)
    q: queue.Queue = queue.Queue(maxsize=opts.queue_size)
    stop = threading.Event()
    walker = threading.Thread(target=feed_walk, args=(source, q, stop), name="mai-scan-walk", daemon=True)
    walker.start()
    inflight: dict[Future, list[Entry]] = {}
    ready: list[tuple[Entry, Decoded]] = []
    ready_since = 0.0
    chunk: list[Entry] = []
    suspects: deque[Entry] = deque()  # files held by a worker that died, retried one by one
    # Chunks a broken pool refused at submit: a worker died and the pool is marked
    # broken before the collect step has seen the dead future. They never ran (so
    # they are not suspects) and are resubmitted once the pool has restarted.
    deferred: deque[list[Entry]] = deque()
    isolating: Future | None = None
    isolating_since = 0.0
    pool_works = False  # a worker has returned something: the pool itself can run
    walk_done = False
    gpu = opts.gpu
    reading: set[Future] = set()  # the reader threads' futures (GPU path); the rest are the pool's
    max_inflight = max(1, opts.readers if gpu is not None else opts.workers) * opts.inflight_per_worker
    infer = gpu.infer if gpu is not None else infer_host
    scorer = ThreadPoolExecutor(1, thread_name_prefix="mai-scan-gpu") if gpu is not None else None
    scoring: deque[tuple[Future, list[tuple[Entry, Decoded]]]] = deque()  # batches the GPU thread holds, in order
    clean = False

    def take(results: list[Decoded], entries: list[Entry]) -> None:
        nonlocal ready_since
        to_cpu: list[Entry] = []
        for entry, d in zip(entries, results, strict=True):
            if d.error is not None:  # needs no model: out at once
                emit(error_record(entry.path, d.error[0], d.error[1], model=model.model_id, facts=d.facts), entry)
            elif d.cpu is not None:  # a reader found something the GPU cannot take
                gpu.stats.cpu[d.cpu] += 1
                to_cpu.append(entry)
            else:
                if not ready:
                    ready_since = time.monotonic()
                ready.append((entry, d))
        for i in range(0, len(to_cpu), opts.chunk_size):
            decode_on_cpu(to_cpu[i:i + opts.chunk_size])

    def decode_on_cpu(entries: list[Entry]) -> bool:
        """Decode `entries` (inline or in the pool); False when a broken pool refused them."""
        paths = [e.path for e in entries]
        if not pool.workers:
            take(pool.inline(paths), entries)
            return True
        try:
            inflight[pool.submit(paths)] = entries
            return True
        except BrokenProcessPool:
            deferred.append(entries)
            if not any(f not in reading for f in inflight):  # no dead future left to reveal it: restart now
                restart()
            return False

    def restart() -> None:
        nonlocal pool_works, isolating
        isolating = None
        pool.restart()
        if not pool_works:
            pool_works = pool.alive()

    def deliver(batch: list[tuple[Entry, Decoded]], records: list[dict[str, Any] | None]) -> None:
        refused: list[tuple[Entry, Decoded]] = []
        for (entry, d), rec in zip(batch, records, strict=True):
            if rec is None:  # the GPU refused it: back to the CPU decoder
                refused.append((entry, d))
            else:
                emit(rec, entry)
        if refused:
            take([d for _, d in refused], [e for e, _ in refused])

    def submit(entries: list[Entry]) -> None:
        if gpu is None:
            decode_on_cpu(entries)
        else:
            fut = pool.read([e.path for e in entries])
            reading.add(fut)
            inflight[fut] = entries

    try:
        while True:
            # 1. Pull walked files while there is room for more decode work.
            starved = False
            while deferred and not suspects and len(inflight) < max_inflight:
                if not decode_on_cpu(deferred.popleft()):
                    break  # refused again: the collect step restarts the pool first
            while not walk_done and not suspects and not deferred and len(inflight) < max_inflight \
                    and len(ready) < opts.batch_size:
                idle = not inflight and not ready and not chunk
                try:
                    item = q.get(timeout=0.1) if idle else q.get_nowait()
                except queue.Empty:
                    starved = True
                    break
                if item is WALK_END:
                    walk_done = True
                elif (entry := route_walked(item, model, emit, triage)) is not None:
                    chunk.append(entry)
                    if len(chunk) >= opts.chunk_size:
                        submit(chunk)
                        chunk = []
            if chunk and (starved or walk_done):  # a slow walk must not hold a partial chunk back
                submit(chunk)
                chunk = []

            # 2. Collect finished decode work.
            if inflight:
                done, _ = wait(list(inflight), timeout=0.05, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    entries = inflight.pop(fut)
                    if fut in reading:
                        reading.discard(fut)
                        take(fut.result(), entries)  # read_chunk returns a result for every file
                        continue
                    try:
                        take(fut.result(), entries)
                        pool_works = True
                    except BrokenProcessPool:
                        broken = True
                        if fut is isolating:  # it died again, alone: this file kills the decoder
                            e = entries[0]
                            emit(error_record(e.path, "decode", _death(time.monotonic() - isolating_since, opts),
                                              model=model.model_id, facts={"bytes": e.size}), e)
                        else:
                            suspects.extend(entries)
                    if fut is isolating:
                        isolating = None
                if broken:
                    for fut in [f for f in inflight if f not in reading]:
                        entries = inflight.pop(fut)
                        if fut is not isolating:
                            suspects.extend(entries)
                    restart()
            if suspects and len(inflight) == len(reading) and pool.workers:
                e = suspects.popleft()
                try:
                    isolating, isolating_since = pool.submit([e.path]), time.monotonic()
                    inflight[isolating] = [e]
                except BrokenProcessPool:  # broken with nothing of ours in it: restart, then retry it
                    suspects.appendleft(e)
                    restart()

            # 3. Infer full batches, or a partial one that waited long enough. On the
            # GPU path a thread of its own decodes and scores them, so this thread
            # keeps collecting reads and writing records meanwhile.
            finished = walk_done and not inflight and not chunk and not suspects and not deferred
            while ready and len(scoring) < 2 and (len(ready) >= opts.batch_size or finished
                                                  or time.monotonic() - ready_since >= opts.latency_s):
                batch, ready = ready[:opts.batch_size], ready[opts.batch_size:]
                args = ([d for _, d in batch], model, decision, second_opinion, infer)
                if scorer is None:
                    deliver(batch, describe(*args))
                else:
                    scoring.append((scorer.submit(describe, *args), batch))
                ready_since = time.monotonic()
            if scoring:
                if not (inflight or ready or chunk or suspects or deferred):  # nothing else to do: wait for the GPU
                    wait([scoring[0][0]], timeout=0.05)
                while scoring and scoring[0][0].done():
                    fut, batch = scoring.popleft()
                    deliver(batch, fut.result())
            if tick is not None:
                tick()
            if walk_done and not inflight and not chunk and not suspects and not deferred and not ready \
                    and not scoring:
                break
        clean = True
    finally:
        stop.set()
        if scorer is not None:
            scorer.shutdown(wait=clean, cancel_futures=not clean)
        pool.close(abort=not clean)
        walker.join(timeout=1.0)
