"""`mai-scan --engine ray`: the same scan on Ray Data, one machine or a cluster.

    driver (mai-scan)                                  Ray workers (actors)
    walk (a thread) -> triage (resume, scan state) --window of paths-->
        ray.data.from_items -> map_batches(RayScorer) ----> open_model once
                                                            score_batch(paths)
    emit (sinks, scan state, summary)  <--records as JSON lines, any order--

Ray is imported only here, and only when a window is ready to score: `mai-scan
--help`, local scans and rescans where every file is unchanged never import it.

The driver does everything but decoding and inference, exactly as the local
engine does (`RayEngine` is a `scanner.engine.Engine`: its `run` is called with
the same `emit` and `triage`): it walks (scanner.walk), skips what
`--resume` or the scan state says is done, and alone writes the sinks and the
scan state. Each worker opens the model once (`mai.session.open_model`,
so a worker given a GPU runs CUDA) and calls `scanner.engine.score_batch`, the
local engine's per-batch work; records are built there, by scanner.records, and travel
back as their JSON line.

Paths go to Ray in *windows* (`window` paths, default 512 batches per worker,
at most 250,000): one Ray Data execution per window, while the walk and the
triage fill the next. The driver's memory is bounded by the window, not the
number of files; each window starts its workers afresh (seconds), so windows
are large.

Faults:
- A worker that dies (a decoder segfault, the OOM killer, a lost node) is
  restarted by Ray, and its batch retried up to MAX_TASK_RETRIES times;
  Ray Data skips a batch that keeps failing (`max_errored_blocks`) instead of
  failing the scan.
- The driver keeps each window's files until their record arrives: a record
  for a file already written (a retried batch that had partly returned) is
  dropped, so no file is written twice. Files with no record when the window
  ends are scored again one per task, one task per worker at a time (one
  retry); a file that still gets none (it kills its worker every time) gets an
  error record, kind `decode`, as in the local engine. So no file is lost.
- If a window's whole execution fails (the workers cannot start or open the
  model, the cluster goes away) the scan stops with one line: what was
  written is kept, and `--resume` finishes it.
- Bad input is a record on every worker: `score_batch` turns it into an
  error record there.

Paths and the model: every worker must read the input files and the model at
the paths the driver sees (a shared file system mounted at the same place
everywhere). Workers change to the driver's working folder when it exists
there, so relative paths work on one machine and on clusters that mount the
same tree; give absolute paths otherwise. The driver resolves the model file
once (fp16 in a model folder when workers get GPUs, fp32 otherwise) and every
worker opens that same file, so all records carry one model id and precision (a
stored int8 file, as the shipped CIFAKE model is, each machine expands into that
precision in its own app folder).

Not supported on Ray (yet): a second opinion (`--vlm`), which would need the
VLM on every worker.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from mai.errors import MaiError
from mai.session import stdout_to_stderr
from scanner.decode import DEFAULT_MAX_PIXELS, configure_pillow, decode_chunk
from scanner.engine import WALK_END, Emit, EngineOptions, ScanModel, feed_walk, route_walked, score_batch
from scanner.records import Decision, error_record, to_line
from scanner.walk import Entry, WalkError

MAX_TASK_RETRIES = 2  # retries of a batch whose worker died (Ray restarts the worker)
BATCHES_PER_WORKER = 512  # a window holds this many batches per worker ...
MAX_WINDOW = 250_000  # ... and at most this many files
FILL_WAIT_S = 10.0  # a slow walk: start scoring a partial window after this long


class RayScorer:
    """The `map_batches` callable class: one per Ray worker (an actor).

    Opens the model once, then scores each batch of paths with `score_batch`.
    Batches come as {"i": window index, "path": os.fsencode(path)} columns (bytes,
    since a file name need not be UTF-8) and go back as {"i", "record" (the
    record's JSON line), "provider"}.
    """

    def __init__(self, model_file: str, device: str, threads: int, decision: Decision,
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True,
                 decode_fn: Callable[..., list[Any]] = decode_chunk, cwd: str | None = None) -> None:
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative PATHs mean what they mean to the driver
        configure_pillow()
        from mai.session import open_model

        self.model = open_model(model_file, device, threads)
        self.decision, self.max_pixels, self.draft, self.decode_fn = decision, max_pixels, draft, decode_fn

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        records = score_batch(paths, self.model, self.decision, max_pixels=self.max_pixels, draft=self.draft,
                              decode_fn=self.decode_fn)
        return {
            "i": np.asarray(batch["i"], dtype=np.int64),
            "record": np.array([to_line(r).decode("ascii") for r in records], dtype=object),
            "provider": np.array([self.model.provider] * len(records), dtype=object),
        }


class RayModel:
    """The driver's model (ids, thresholds, band) with a `describe` that says
    where the scoring really runs."""

    def __init__(self, model: ScanModel, engine: RayEngine) -> None:
        self._model, self._engine = model, engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def describe(self) -> str:
        m, e = self._model, self._engine
        where = "Ray workers" if not e.workers_used else f"{e.workers_used} Ray worker{'s' * (e.workers_used > 1)}"
        providers = ", ".join(p.replace("ExecutionProvider", "") for p in sorted(e.providers)) or "not started"
        return f"{m.model_id} {m.precision} on {where} (ONNX Runtime {providers})"


def _quiet_ray_driver() -> None:
    """Ray's driver prints workers' failures ("(raylet) A worker died ...", a
    paragraph each) to sys.stdout, where records go. The engine says itself what
    a failure cost (files retried, error records), so they are dropped; with
    MAI_DEBUG=1 they go to stderr."""
    try:
        import ray._private.worker as rw
    except ImportError:
        return
    orig = getattr(rw, "print_to_stdstream", None)
    if orig is None or getattr(orig, "_mai_quiet", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kw: Any) -> Any:
        if os.environ.get("MAI_DEBUG"):
            return orig({**data, "is_err": True}, *args, **kw)
        return None

    to_stderr._mai_quiet = True  # type: ignore[attr-defined]
    rw.print_to_stdstream = to_stderr


def _one_line(e: BaseException) -> str:
    cause = e
    for _ in range(4):  # RayTaskError(cause=...) and friends: the root says most
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    text = str(cause).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]


class RayEngine:
    """Scores with Ray Data. `address` None starts Ray on this machine (all its
    CPUs, its GPUs); otherwise joins that cluster ("auto", "HOST:6379",
    "ray://HOST:10001"). `workers` Ray workers (default: one per CPU, or per
    `gpus_per_worker` share of the GPUs), each reserving `threads` CPUs (ONNX
    Runtime threads, default 1) and `gpus_per_worker` GPUs (a fraction puts
    several workers on one GPU, which helps: each decodes on one core)."""

    name = "ray"

    def __init__(self, model_path: str | None, device: str = "auto", threads: int | None = None, *,
                 address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 window: int | None = None, log: Callable[[str], None] | None = None) -> None:
        if workers is not None and workers < 1:
            raise MaiError("--engine ray needs --workers 1 or more (Ray workers)")
        if gpus_per_worker < 0:
            raise MaiError("--gpus-per-worker must be 0 or more")
        if device == "cuda" and not gpus_per_worker:
            gpus_per_worker = 1.0  # --device cuda: each worker needs a GPU of its own
        self.model_path, self.address, self.workers, self.gpus = model_path, address, workers, float(gpus_per_worker)
        self.threads = threads or 1
        # A worker without a GPU share runs on its CPU even where the machine has a GPU.
        self.worker_device = device if self.gpus else "cpu"
        self.window = window
        self.log = log or (lambda text: None)
        self.model_file: str | None = None
        self.providers: Counter = Counter()
        self.workers_used = 0
        self.duplicates = 0  # records dropped because their file was already written
        self.retried = 0  # files scored again one by one after their batch failed
        self.task_retries = MAX_TASK_RETRIES  # per batch; a batch that still fails is split into files
        self.isolated_retries = 1  # per file, when scored alone
        self._started = False  # this engine started Ray (and stops it)
        self._n = 0

    # ------------------------------------------------------------------ setup

    def open_model(self) -> RayModel:
        """Open the model in the driver, for its metadata only (on the CPU).
        Pins the exact .onnx file every worker opens."""
        from mai.session import SessionError, open_model, precisions_for, resolve_onnx

        device = "cpu" if self.worker_device == "cpu" else "cuda"
        try:
            f = str(resolve_onnx(self.model_path, device).resolve())
        except SessionError:
            f = self.model_path  # open_model says what is wrong, in its words
        # In the precision the workers will use, so ids, precision and scan state agree with theirs.
        model = open_model(f, "cpu", 1, None, precision=precisions_for(device)[0])
        # The file as resolved (a stored int8 file, not the driver's own expansion of it): each
        # worker expands it in its own app folder, as it builds a probe's backbone graph.
        self.model_file = str((model.source or model.path).resolve())
        self.log(f"model: {model.model_id} {model.precision} ({self.model_file}), scored by Ray workers")
        return RayModel(model, self)

    def _ensure_ray(self) -> Any:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # no C++ log lines on stderr
        try:
            import ray
        except ImportError:
            raise MaiError("--engine ray needs Ray: pip install 'mai-detect[ray]' (or 'ray[data]')") from None
        _quiet_ray_driver()
        if not ray.is_initialized():
            main = threading.current_thread() is threading.main_thread()
            old_term = signal.getsignal(signal.SIGTERM) if main else None
            kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                                  "configure_logging": False}
            if self.address:
                kw["address"] = self.address
            else:
                kw.update(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
            try:
                with stdout_to_stderr(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ray.init(**kw)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError ...
                where = f"join the Ray cluster at {self.address}" if self.address else "start Ray here"
                raise MaiError(f"cannot {where}: {_one_line(e)}") from e
            finally:
                if main:
                    # ray.init makes SIGTERM exit at once; mai-scan stops cleanly instead.
                    signal.signal(signal.SIGTERM, old_term)
            self._started = True
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if self.workers:
            n = self.workers
        elif self.gpus:
            n = max(1, min(int(gpus / self.gpus + 1e-9), int(cpus // self.threads)))
        else:
            n = max(1, int(cpus // self.threads))
        if self.gpus and gpus < self.gpus:
            raise MaiError(f"--gpus-per-worker {self.gpus:g}: the Ray cluster has {gpus:g} GPUs")
        if n * self.threads > cpus or n * self.gpus > gpus + 1e-9:
            self.log(f"ray: {n} workers ask for more than the cluster has ({cpus:g} CPUs, {gpus:g} GPUs); "
                     "some wait for resources")
        self._n = n
        how = f"joined {self.address}" if self.address else "started locally" if self._started else "running"
        share = f"{self.threads} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        self.log(f"ray: {how} ({cpus:g} CPUs, {gpus:g} GPUs); {n} workers of {share} each")
        return ray

    def close(self) -> None:
        if self._started:
            import ray

            with stdout_to_stderr():
                ray.shutdown()
            self._started = False

    # ------------------------------------------------------------------ the scan

    def run(self, source: Iterable[Entry | WalkError], model: ScanModel, decision: Decision, emit: Emit, *,
            options: EngineOptions | None = None, triage: Callable[[Entry], bool] | None = None,
            second_opinion: Any = None, tick: Callable[[], None] | None = None) -> None:
        """As `scanner.engine.Engine.run`: `emit(record, entry)` gets every file's record
        (entry None for walk problems), `triage(entry)` True skips a file."""
        if second_opinion is not None:
            raise MaiError("a second opinion (--vlm) does not run on Ray workers yet; use --engine local")
        if self.model_file is None:
            self.model_file = str((getattr(model, "source", None) or model.path).resolve())
        opts = options or EngineOptions()
        q: queue.Queue = queue.Queue(maxsize=opts.queue_size)
        stop = threading.Event()
        walker = threading.Thread(target=feed_walk, args=(source, q, stop), name="mai-scan-walk", daemon=True)
        walker.start()
        walk_done = False

        def fill(window: list[Entry], size: int, block: bool) -> None:
            """Take walked files into `window` (up to `size`), triaged; blocking:
            until it is full, the walk ends, or FILL_WAIT_S passed with some."""
            nonlocal walk_done
            since = time.monotonic()
            while not walk_done and len(window) < size:
                if block and window and time.monotonic() - since > FILL_WAIT_S:
                    return
                try:
                    item = q.get(timeout=0.1) if block else q.get_nowait()
                except queue.Empty:
                    if tick is not None:
                        tick()
                    if block:
                        continue
                    return
                if item is WALK_END:
                    walk_done = True
                elif (entry := route_walked(item, model, emit, triage)) is not None:
                    window.append(entry)

        try:
            nxt: list[Entry] = []
            size = opts.batch_size  # until Ray is up and the worker count known
            while True:
                fill(nxt, size, block=True)
                if not nxt:
                    break
                if not self._n:
                    self._ensure_ray()
                    size = self.window or min(MAX_WINDOW, max(opts.batch_size, opts.batch_size * self._n
                                                              * BATCHES_PER_WORKER))
                    fill(nxt, size, block=True)
                cur, nxt = nxt, []
                self._score_window(cur, model, decision, emit, opts,
                                   between=functools.partial(fill, nxt, size, False), tick=tick)
        finally:
            stop.set()
            walker.join(timeout=1.0)
            self.close()
        if self.retried or self.duplicates:
            self.log(f"ray: {self.retried} files scored again after a worker failure, "
                     f"{self.duplicates} repeated records dropped")

    def _score_window(self, entries: list[Entry], model: ScanModel, decision: Decision, emit: Emit,
                      opts: EngineOptions, between: Callable[[], None], tick: Callable[[], None] | None) -> None:
        pending: dict[int, Entry] = dict(enumerate(entries))
        first = not self.providers
        try:
            self._execute(pending, decision, emit, opts, between, tick)
        except (KeyboardInterrupt, MaiError):
            raise
        except Exception as e:  # noqa: BLE001 - Ray's own errors: the execution failed as a whole
            if first and not self.providers:
                raise MaiError(f"the Ray workers could not score anything ({_one_line(e)}); every worker "
                               f"needs the model {self.model_file} and the input files at the same paths as "
                               "here (a shared file system), and mai-detect installed") from e
            raise MaiError(f"the Ray scan failed ({_one_line(e)}); what was written is kept: "
                           "run the same command with --resume to finish") from e
        if pending:
            # Batches that kept failing: each file alone now, so one bad file costs only itself.
            self.retried += len(pending)
            self.log(f"ray: {len(pending)} files without a record after worker failures; scoring them one by one")
            with contextlib.suppress(Exception):
                self._execute(pending, decision, emit, opts, between, tick, isolate=True)
        for e in list(pending.values()):
            emit(error_record(e.path, "decode", "the worker died on this file (no result from Ray)",
                              model=model.model_id, facts={"bytes": e.size}), e)
        pending.clear()

    def _dataset(self, pending: dict[int, Entry], decision: Decision, opts: EngineOptions, n: int,
                 isolate: bool) -> Any:
        """The Ray Dataset of one execution: the pending files, one batch per block (a
        failure costs one batch), scored by `n` RayScorer actors (one file at a time
        each when isolating)."""
        import ray.data

        batch_size = 1 if isolate else opts.batch_size
        pool: dict[str, Any] = ({"compute": ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1)}
                                if isolate else {"concurrency": n})
        items = [{"i": i, "path": os.fsencode(e.path)} for i, e in pending.items()]
        blocks = max(1, -(-len(items) // batch_size))
        try:
            ds = ray.data.from_items(items, override_num_blocks=blocks)
        except TypeError:  # Ray before 2.10 called it parallelism
            ds = ray.data.from_items(items, parallelism=blocks)
        return ds.map_batches(
            RayScorer, batch_size=batch_size, batch_format="numpy", **pool,
            num_cpus=self.threads, num_gpus=self.gpus or None,
            fn_constructor_kwargs={
                "model_file": self.model_file, "device": self.worker_device, "threads": self.threads,
                "decision": decision, "max_pixels": opts.max_pixels, "draft": opts.draft,
                "decode_fn": opts.decode_fn, "cwd": os.getcwd()},
            max_restarts=-1, max_task_retries=self.isolated_retries if isolate else self.task_retries)

    def _execute(self, pending: dict[int, Entry], decision: Decision, emit: Emit, opts: EngineOptions,
                 between: Callable[[], None], tick: Callable[[], None] | None, isolate: bool = False) -> None:
        """One Ray Data execution over the `pending` files; each record that
        comes back is emitted and its file removed from `pending`. `isolate`:
        one file per task and one task at a time per worker, so a worker that
        dies takes no other file's task with it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray Data's notices about its own deprecated settings
            import ray.data

            ctx = ray.data.DataContext.get_current()
        saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start",
                                              "max_errored_blocks")}
        data_log = logging.getLogger("ray.data")
        saved_level = data_log.level
        it: Any = None
        n = min(self._n, len(pending))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Ray's deprecation notices (ray_remote_args) are not the user's
                ctx.enable_progress_bars = False
                ctx.print_on_execution_start = False
                ctx.max_errored_blocks = -1  # a batch that keeps failing is skipped, then retried file by file
                data_log.setLevel(logging.CRITICAL)
                ds = self._dataset(pending, decision, opts, n, isolate)
                it = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
                self.workers_used = max(self.workers_used, n)
                for batch in it:
                    for i, line, provider in zip(batch["i"], batch["record"], batch["provider"], strict=True):
                        entry = pending.pop(int(i), None)
                        if entry is None:
                            self.duplicates += 1
                            continue
                        self.providers[str(provider)] += 1
                        emit(json.loads(line), entry)
                    if tick is not None:
                        tick()
                    between()
        finally:
            if it is not None and hasattr(it, "close"):
                with contextlib.suppress(Exception):
                    it.close()
            for k, v in saved.items():
                setattr(ctx, k, v)
            data_log.setLevel(saved_level)
