"""What every scan engine is and shares.

An engine takes the walk's stream of files and turns each into one record:
`scanner.engine_local` (this machine: a decode process pool, the model in this
process, optionally the GPU path) and `scanner.engine_ray` (Ray Data workers,
here or on a cluster). Both follow `Engine`, and are built by `open_engine`.

Shared here: the walk thread and the routing of what it yields (`feed_walk`,
`route_walked`), the per-batch work (`describe`: infer, ask the second opinion
about uncertain files, build records; `score_batch`: the same from paths, as one
plain picklable function a distributed engine calls as is), and the options.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mai.preprocess import PreprocessSpec
from scanner.decode import DECODE_MEMORY_BYTES, DECODE_TIMEOUT_S, DEFAULT_MAX_PIXELS, Decoded, decode_chunk
from scanner.records import MODEL_STAGE, Decision, error_record, make_record
from scanner.walk import Entry, WalkError

#: emit(record, entry): entry is None for a walk problem (no file to key it by).
Emit = Callable[[dict[str, Any], "Entry | None"], None]


@runtime_checkable
class ScanModel(Protocol):
    """What a scan needs of its model: `mai.session.OnnxModel` (`mai.open_model`) is
    the one the engines open; the tests' stand-ins follow it too."""

    path: Path
    provider: str
    source: Path | None

    @property
    def spec(self) -> PreprocessSpec: ...

    @property
    def model_id(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def uncertain(self) -> tuple[float, float]: ...

    @property
    def precision(self) -> str: ...

    def describe(self) -> str: ...

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def predict_bound(self, data_ptr: int, shape: tuple[int, ...], device: str = "cuda",
                      device_id: int = 0) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Engine(Protocol):
    """A way to carry out a scan.

    `open_model()` opens the model in this process (for its id, thresholds and
    band, and, for the local engine, to score with). `run(...)` scans everything
    `source` yields: `emit(record, entry)` gets one record per file, `triage(entry)`
    runs first in the calling thread (True: already handled, e.g. resumed),
    `tick()` is called often (progress). KeyboardInterrupt stops the work and
    propagates. `close()` releases what the engine started.
    """

    name: str

    def open_model(self) -> ScanModel: ...

    def run(self, source: Iterable[Entry | WalkError], model: ScanModel, decision: Decision, emit: Emit, *,
            options: EngineOptions | None = None, triage: Callable[[Entry], bool] | None = None,
            second_opinion: SecondOpinion | None = None, tick: Callable[[], None] | None = None) -> None: ...

    def close(self) -> None: ...


def open_engine(name: str, model_path: str, device: str, threads: int | None, log: Callable[[str], None], *,
                precision: str | None = None, **ray: Any) -> Engine:
    """The engine `--engine NAME` means; Ray is imported only for `ray`. `precision`
    (local only) overrides `mai.session.precisions_for`; `ray` holds the Ray engine's
    own settings (address, workers, gpus_per_worker), which the local engine ignores."""
    if name == "ray":
        if precision is not None:
            from mai.errors import MaiError

            raise MaiError("--precision works with --engine local; Ray workers follow each machine's rule")
        from scanner.engine_ray import RayEngine

        return RayEngine(model_path, device, threads, log=log, **ray)
    from scanner.engine_local import LocalEngine

    return LocalEngine(model_path, device, threads, log, precision)


@runtime_checkable
class SecondOpinion(Protocol):
    """A second stage for files in the model's uncertainty band (a VLM).

    `score` gets the model-input-size uint8 HWC arrays of one batch's uncertain
    files and their paths, and returns P(synthetic) for each, in order. A score
    >= `threshold` makes the verdict `synthetic`, below it `authentic`; the
    record's stage becomes `vlm`, and both scores are kept.
    """

    name: str
    threshold: float

    def score(self, images: list[np.ndarray], paths: list[str]) -> list[float]: ...


def infer_host(decoded: list[Decoded], model: ScanModel, keep_arrays: bool = True) -> dict[int, float]:
    """The CPU path's inference: stack the decoded arrays, run the model; {index: P(synthetic)}."""
    ok = [i for i, d in enumerate(decoded) if d.error is None and d.array is not None]
    if not ok:
        return {}
    _, prob = model.predict(np.stack([decoded[i].array for i in ok]))
    return {i: float(p) for i, p in zip(ok, prob, strict=True)}


#: (decoded, model, keep_arrays) -> {index: P(synthetic)}. An entry left without a
#: score must have `error` or `cpu` set (the GPU path sets `cpu` on what nvJPEG
#: refuses); with `keep_arrays`, scored entries must hold their `array`.
Infer = Callable[[list[Decoded], Any, bool], dict[int, float]]


def describe(decoded: Sequence[Decoded], model: ScanModel, decision: Decision,
             second_opinion: SecondOpinion | None = None, infer: Infer = infer_host) -> list[dict[str, Any] | None]:
    """Infer one batch of decode results and build their records, in order.

    None stands for a file the GPU path's `infer` handed back to the CPU decoder
    (`Decoded.cpu` set); with the default `infer_host` every file gets a record."""
    decoded = list(decoded)
    model_scores = infer(decoded, model, second_opinion is not None)
    ok = sorted(model_scores)
    vlm: dict[int, float] = {}
    if second_opinion is not None:
        # Only what the model cannot decide, and metadata has not decided, goes on.
        todo = [i for i in ok if decision.model_verdict(model_scores[i]) == "uncertain"
                and not any(s.get("ai") is True for s in decoded[i].facts.get("provenance") or [])]
        if todo:
            got = second_opinion.score([decoded[i].array for i in todo], [decoded[i].path for i in todo])
            if len(got) != len(todo):
                raise ValueError(f"second opinion {second_opinion.name!r} returned {len(got)} scores for {len(todo)}")
            vlm = {i: float(p) for i, p in zip(todo, got, strict=True)}
    out: list[dict[str, Any] | None] = []
    for i, d in enumerate(decoded):
        if d.cpu is not None:
            out.append(None)  # the GPU refused it: the caller decodes it on the CPU
        elif d.error is not None:
            out.append(error_record(d.path, d.error[0], d.error[1], model=model.model_id, facts=d.facts))
        elif i in model_scores:
            facts = {**d.facts, "scores": {MODEL_STAGE: model_scores[i], "vlm": vlm.get(i)}}
            out.append(make_record(d.path, model=model.model_id, facts=facts, decision=decision))
        else:  # pragma: no cover - an infer hook that dropped a file is a bug, not a file's fault
            raise RuntimeError(f"no score and no error for {d.path!r}")
    return out


def default_decision(model: ScanModel) -> Decision:
    return Decision.make(model.threshold, model.uncertain)


def score_batch(paths: Sequence[str], model: ScanModel, decision: Decision | None = None,
                second_opinion: SecondOpinion | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                draft: bool = True, decode_fn: Callable[..., list[Decoded]] = decode_chunk) -> list[dict[str, Any]]:
    """Decode, preprocess, infer and describe `paths`: one record each, in order.

    `model` is an opened `mai.session.OnnxModel` (an engine's actor opens it
    once with `open_model` and calls this per batch). `decode_fn` is the
    per-chunk decoder, as `PipelineOptions.decode_fn`.
    """
    decoded = decode_fn(list(paths), model.spec, max_pixels, draft)
    return [r for r in describe(decoded, model, decision or default_decision(model), second_opinion)
            if r is not None]


def default_workers(roots: Sequence[str]) -> int:
    """Decode processes when --workers is not given: one per CPU, but none for a
    few named files, which decode faster in the scan's own process than a pool starts."""
    few_files = len(roots) <= 4 and all(os.path.isfile(r) for r in roots)
    return 0 if few_files else os.cpu_count() or 1


@dataclass
class EngineOptions:
    """How an engine decodes and batches (each engine uses what applies to it)."""

    workers: int = os.cpu_count() or 1  # 0: decode in this process (tests, debugging)
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True  # JPEG DCT scaling where the model's first step shrinks anyway
    latency_s: float = 0.25  # longest a decoded file waits for its batch to fill
    chunk_size: int = 4  # files per task sent to a worker
    inflight_per_worker: int = 4  # tasks queued per worker: keeps workers busy while the model runs
    queue_size: int = 4096  # walked entries waiting for decode
    # Per file in a decode worker process (local engine): stopped after this long,
    # and at most this much memory (see scanner.decode); None: no limit.
    decode_timeout_s: float | None = DECODE_TIMEOUT_S
    decode_memory_bytes: int | None = DECODE_MEMORY_BYTES
    # The per-chunk decode function, (paths, spec, max_pixels, draft) -> list[Decoded]:
    # a module-level function, so workers can unpickle it (another decoder plugs in here).
    decode_fn: Callable[..., list[Decoded]] = decode_chunk
    # The GPU path (scanner.gpu.GpuStage): reader threads hand JPEG bytes to it;
    # the worker processes (started when first needed) decode everything else.
    gpu: Any = None
    # Reader threads on the GPU path. Each holds whole JPEG files in memory, so
    # host memory is bounded by (batch_size + readers * inflight_per_worker *
    # chunk_size) files: about 1 GB of camera JPEGs at the defaults, whatever the scan's size.
    readers: int = min(16, 2 * (os.cpu_count() or 1))


WALK_END = object()  # the last item `feed_walk` puts on the queue


class _WalkFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def route_walked(item: Any, model: ScanModel, emit: Any, triage: Callable[[Entry], bool] | None) -> Entry | None:
    """What every engine does with one item from the walk queue (other than the
    end marker): re-raise a failed walk, turn a walk error into its record, let
    `triage` settle a file (resume, unchanged), and hand back the rest to score."""
    if isinstance(item, _WalkFailed):
        raise item.exc
    if isinstance(item, WalkError):
        emit(error_record(item.path, item.kind, item.message, model=model.model_id), None)
        return None
    if triage is not None and triage(item):
        return None
    return item


def feed_walk(source: Iterable[Entry | WalkError], q: queue.Queue, stop: threading.Event) -> None:
    """The walk thread of every engine: put each walked item on the bounded queue
    (blocking while it is full, unless `stop` is set), a failed walk as an item for
    `route_walked` to re-raise, then WALK_END."""
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put(item):
                return
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
        put(_WalkFailed(e))
    put(WALK_END)
