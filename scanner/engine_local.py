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

One scan is a `LocalScan`, a loop of four steps: `pull` (walked files into
chunks for the decoders), `collect` (finished decode work into the ready list; a
broken pool makes its files suspects), `isolate` (one suspect at a time, alone in a
fresh pool) and `batch` (ready files through the model into records). Where the
files are decoded and scored is a strategy: `CpuPath` (the worker pool, the model
in this thread) or `GpuPath` (reader threads, nvJPEG and the model in a thread of
their own; what the GPU refuses goes to the pool). The pool is
`scanner.decode_pool`'s; the per-batch work (`describe`) and the walk thread are
`scanner.engine`'s, shared with the Ray engine.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, runtime_checkable

from scanner.decode import Decoded, read_chunk
from scanner.decode_pool import DecodePool, death_reason
from scanner.engine import (
    WALK_END,
    Emit,
    EngineOptions,
    ScanModel,
    SecondOpinion,
    describe,
    feed_walk,
    infer_host,
    route_walked,
)
from scanner.records import Decision, error_record
from scanner.walk import Entry, WalkError

#: A batch on its way to the model: (entry, decode result) pairs, in order.
Batch = list[tuple[Entry, Decoded]]


class LocalEngine:
    """This machine: decode worker processes, the model in this process (`run`)."""

    name = "local"

    def __init__(self, model_path: str, device: str, threads: int | None, log: Callable[[str], None],
                 precision: str | None = None) -> None:
        self.model_path, self.device, self.threads, self.log = model_path, device, threads, log
        self.precision = precision  # None: mai.session's rule

    def open_model(self) -> ScanModel:
        from mai.session import open_model

        return open_model(self.model_path, self.device, self.threads or os.cpu_count(), self.log,
                          precision=self.precision)

    def run(self, source: Iterable[Entry | WalkError], model: ScanModel, decision: Decision, emit: Emit,
            **kw: Any) -> None:
        run(source, model, decision, emit, **kw)

    def close(self) -> None:
        pass


def run(source: Iterable[Entry | WalkError], model: ScanModel, decision: Decision, emit: Emit, *,
        options: EngineOptions | None = None, triage: Callable[[Entry], bool] | None = None,
        second_opinion: SecondOpinion | None = None, tick: Callable[[], None] | None = None) -> None:
    """Scan everything `source` yields, as `scanner.engine.Engine.run` says."""
    scan = LocalScan(model, decision, emit, options or EngineOptions(), triage=triage, second_opinion=second_opinion)
    scan.run(source, tick)


@runtime_checkable
class ScanPath(Protocol):
    """Where a `LocalScan`'s files are decoded and its batches scored: the strategy
    that keeps the GPU path's threads out of the scan's loop."""

    max_inflight: int  # decode tasks in flight at most

    def submit(self, entries: list[Entry]) -> None: ...  # start decoding a chunk
    def owns(self, fut: Future) -> bool: ...  # a future of this path's own (not the pool's)
    def release(self, fut: Future) -> None: ...  # forget a future collected
    def has_room(self) -> bool: ...  # can take another batch to score
    def score(self, batch: Batch, decoded: list[Decoded]) -> None: ...  # records now, or later via poll
    def poll(self, idle: bool) -> None: ...  # deliver what finished scoring
    def pending(self) -> bool: ...  # batches still being scored
    def close(self, clean: bool) -> None: ...


class CpuPath:
    """Files decode in the worker pool (or inline) and batches score in this thread."""

    def __init__(self, scan: LocalScan) -> None:
        self.scan = scan
        self.max_inflight = max(1, scan.opts.workers) * scan.opts.inflight_per_worker

    def submit(self, entries: list[Entry]) -> None:
        self.scan.decode_on_cpu(entries)

    def owns(self, fut: Future) -> bool:
        return False

    def release(self, fut: Future) -> None:
        pass

    def has_room(self) -> bool:
        return True

    def score(self, batch: Batch, decoded: list[Decoded]) -> None:
        s = self.scan
        s.deliver(batch, describe(decoded, s.model, s.decision, s.second_opinion, infer_host))

    def poll(self, idle: bool) -> None:
        pass

    def pending(self) -> bool:
        return False

    def close(self, clean: bool) -> None:
        pass


class GpuPath:
    """nvJPEG: reader threads read files (`read_chunk`), a thread of its own decodes
    and scores batches (so the scan thread keeps collecting reads and writing
    records meanwhile), and what the GPU cannot take goes to the worker pool."""

    def __init__(self, scan: LocalScan) -> None:
        self.scan, self.gpu = scan, scan.opts.gpu
        opts = scan.opts
        self.max_inflight = max(1, opts.readers) * opts.inflight_per_worker
        self.readers = ThreadPoolExecutor(max(1, opts.readers), thread_name_prefix="mai-scan-read")
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="mai-scan-gpu")
        self.reading: set[Future] = set()  # the reader threads' futures; the rest in flight are the pool's
        self.scoring: deque[tuple[Future, Batch]] = deque()  # batches the GPU thread holds, in order

    def submit(self, entries: list[Entry]) -> None:
        fut = self.readers.submit(read_chunk, [e.path for e in entries], self.scan.pool.spec,
                                  self.scan.opts.max_pixels, False)
        self.reading.add(fut)
        self.scan.inflight[fut] = entries

    def owns(self, fut: Future) -> bool:
        return fut in self.reading

    def release(self, fut: Future) -> None:
        self.reading.discard(fut)

    def has_room(self) -> bool:
        return len(self.scoring) < 2

    def score(self, batch: Batch, decoded: list[Decoded]) -> None:
        s = self.scan
        fut = self.scorer.submit(describe, decoded, s.model, s.decision, s.second_opinion, self.gpu.infer)
        self.scoring.append((fut, batch))

    def poll(self, idle: bool) -> None:
        """Hand finished batches back in order; with nothing else to do, wait for the GPU a moment."""
        if not self.scoring:
            return
        if idle:
            wait([self.scoring[0][0]], timeout=0.05)
        while self.scoring and self.scoring[0][0].done():
            fut, batch = self.scoring.popleft()
            self.scan.deliver(batch, fut.result())

    def pending(self) -> bool:
        return bool(self.scoring)

    def close(self, clean: bool) -> None:
        self.scorer.shutdown(wait=clean, cancel_futures=not clean)
        self.readers.shutdown(wait=clean, cancel_futures=not clean)


class LocalScan:
    """One scan on this machine: its state and the four steps of its loop."""

    def __init__(self, model: ScanModel, decision: Decision, emit: Emit, opts: EngineOptions, *,
                 triage: Callable[[Entry], bool] | None = None, second_opinion: SecondOpinion | None = None) -> None:
        self.model, self.decision, self.emit, self.opts = model, decision, emit, opts
        self.triage, self.second_opinion = triage, second_opinion
        self.pool = DecodePool(opts.workers, model.spec, opts, start=opts.gpu is None)
        self.path: ScanPath = GpuPath(self) if opts.gpu is not None else CpuPath(self)
        self.inflight: dict[Future, list[Entry]] = {}  # decode work in flight: the pool's and the readers'
        self.ready: Batch = []  # decoded, waiting for a batch
        self.ready_since = 0.0
        self.chunk: list[Entry] = []  # walked, not yet sent to a decoder
        self.suspects: deque[Entry] = deque()  # files held by a worker that died, retried one by one
        # Chunks a broken pool refused at submit: a worker died and the pool is marked
        # broken before the collect step has seen the dead future. They never ran (so
        # they are not suspects) and are resubmitted once the pool has restarted.
        self.deferred: deque[list[Entry]] = deque()
        self.isolating: Future | None = None  # a suspect decoding alone
        self.isolating_since = 0.0
        self.pool_works = False  # a worker has returned something: the pool itself can run
        self.walk_done = False

    def run(self, source: Iterable[Entry | WalkError], tick: Callable[[], None] | None = None) -> None:
        q: queue.Queue = queue.Queue(maxsize=self.opts.queue_size)
        stop = threading.Event()
        walker = threading.Thread(target=feed_walk, args=(source, q, stop), name="mai-scan-walk", daemon=True)
        walker.start()
        clean = False
        try:
            while not (self.decoded_all() and not self.ready and not self.path.pending()):
                self.pull(q)
                self.collect()
                self.isolate()
                self.batch()
                if tick is not None:
                    tick()
            clean = True
        finally:
            stop.set()
            self.path.close(clean)
            self.pool.close(abort=not clean)
            walker.join(timeout=1.0)

    # -- state ---------------------------------------------------------------

    def decoded_all(self) -> bool:
        """The walk is over and every file has left the decoders."""
        return self.walk_done and not self.inflight and not self.chunk and not self.suspects and not self.deferred

    def pool_futures(self) -> list[Future]:
        return [f for f in self.inflight if not self.path.owns(f)]

    def _room_to_pull(self) -> bool:
        return (not self.walk_done and not self.suspects and not self.deferred
                and len(self.inflight) < self.path.max_inflight and len(self.ready) < self.opts.batch_size)

    # -- 1. pull: walked files into chunks, while there is room for decode work ---

    def pull(self, q: queue.Queue) -> None:
        while self.deferred and not self.suspects and len(self.inflight) < self.path.max_inflight:
            if not self.decode_on_cpu(self.deferred.popleft()):
                break  # refused again: the collect step restarts the pool first
        starved = False
        while self._room_to_pull():
            idle = not self.inflight and not self.ready and not self.chunk
            try:
                item = q.get(timeout=0.1) if idle else q.get_nowait()
            except queue.Empty:
                starved = True
                break
            if item is WALK_END:
                self.walk_done = True
            elif (entry := route_walked(item, self.model, self.emit, self.triage)) is not None:
                self.chunk.append(entry)
                if len(self.chunk) >= self.opts.chunk_size:
                    self._send_chunk()
        if self.chunk and (starved or self.walk_done):  # a slow walk must not hold a partial chunk back
            self._send_chunk()

    def _send_chunk(self) -> None:
        chunk, self.chunk = self.chunk, []
        self.path.submit(chunk)

    def decode_on_cpu(self, entries: list[Entry]) -> bool:
        """Decode `entries` (inline or in the pool); False when a broken pool refused them."""
        paths = [e.path for e in entries]
        if not self.pool.workers:
            self.take(self.pool.inline(paths), entries)
            return True
        try:
            self.inflight[self.pool.submit(paths)] = entries
            return True
        except BrokenProcessPool:
            self.deferred.append(entries)
            if not self.pool_futures():  # no dead future left to reveal it: restart now
                self.restart()
            return False

    # -- 2. collect: finished decode work into the ready list ------------------

    def collect(self) -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=0.05, return_when=FIRST_COMPLETED)
        broken = False
        for fut in done:
            broken |= self._collect_one(fut, self.inflight.pop(fut))
        if broken:  # everything else the dead pool held is suspect too
            for fut in self.pool_futures():
                entries = self.inflight.pop(fut)
                if fut is not self.isolating:
                    self.suspects.extend(entries)
            self.restart()

    def _collect_one(self, fut: Future, entries: list[Entry]) -> bool:
        """Take one finished future's results; True when it found the pool broken."""
        if self.path.owns(fut):
            self.path.release(fut)
            self.take(fut.result(), entries)  # read_chunk returns a result for every file
            return False
        broken = False
        try:
            self.take(fut.result(), entries)
            self.pool_works = True
        except BrokenProcessPool:
            broken = True
            if fut is self.isolating:  # it died again, alone: this file kills the decoder
                e = entries[0]
                why = death_reason(time.monotonic() - self.isolating_since, self.opts)
                self.emit(error_record(e.path, "decode", why, model=self.model.model_id, facts={"bytes": e.size}), e)
            else:
                self.suspects.extend(entries)
        if fut is self.isolating:
            self.isolating = None
        return broken

    def take(self, results: list[Decoded], entries: list[Entry]) -> None:
        """Decode results in: errors out at once, GPU refusals to the CPU decoder, the rest ready."""
        to_cpu: list[Entry] = []
        for entry, d in zip(entries, results, strict=True):
            if d.error is not None:  # needs no model: out at once
                self.emit(error_record(entry.path, d.error[0], d.error[1], model=self.model.model_id,
                                       facts=d.facts), entry)
            elif d.cpu is not None:  # a reader found something the GPU cannot take
                self.opts.gpu.stats.cpu[d.cpu] += 1
                to_cpu.append(entry)
            else:
                if not self.ready:
                    self.ready_since = time.monotonic()
                self.ready.append((entry, d))
        for i in range(0, len(to_cpu), self.opts.chunk_size):
            self.decode_on_cpu(to_cpu[i:i + self.opts.chunk_size])

    def restart(self) -> None:
        self.isolating = None
        self.pool.restart()
        if not self.pool_works:
            self.pool_works = self.pool.alive()

    # -- 3. isolate: one suspect at a time, alone in the pool -----------------

    def isolate(self) -> None:
        if not (self.suspects and not self.pool_futures() and self.pool.workers):
            return
        e = self.suspects.popleft()
        try:
            self.isolating, self.isolating_since = self.pool.submit([e.path]), time.monotonic()
            self.inflight[self.isolating] = [e]
        except BrokenProcessPool:  # broken with nothing of ours in it: restart, then retry it
            self.suspects.appendleft(e)
            self.restart()

    # -- 4. batch: full batches, or a partial one that waited long enough -----

    def batch(self) -> None:
        size, finished = self.opts.batch_size, self.decoded_all()
        while self.ready and self.path.has_room() and (
                len(self.ready) >= size or finished or time.monotonic() - self.ready_since >= self.opts.latency_s):
            batch, self.ready = self.ready[:size], self.ready[size:]
            self.path.score(batch, [d for _, d in batch])
            self.ready_since = time.monotonic()
        self.path.poll(idle=not (self.inflight or self.ready or self.chunk or self.suspects or self.deferred))

    def deliver(self, batch: Batch, records: list[dict[str, Any] | None]) -> None:
        """Emit a scored batch's records; files the GPU refused (None) go back to the CPU decoder."""
        refused: Batch = []
        for (entry, d), rec in zip(batch, records, strict=True):
            if rec is None:
                refused.append((entry, d))
            else:
                self.emit(rec, entry)
        if refused:
            self.take([d for _, d in refused], [e for e, _ in refused])
