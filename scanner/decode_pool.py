"""The local engine's decode workers: a process pool (forkserver, never fork)
that can be found broken, restarted, and asked whether it can run at all.

A worker that dies (a decoder crash on a hostile file, the OOM killer, or a
decode stopped by the per-file timeout) breaks the whole pool; `death_reason`
names what happened to a file that killed a worker while decoding alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from mai.errors import MaiError
from mai.preprocess import PreprocessSpec
from scanner.decode import Decoded, init_worker
from scanner.engine import EngineOptions


class DecodePool:
    """The decode workers: a process pool, or this process when workers == 0. On
    the GPU path (`start=False`) the pool starts when first needed: most files
    never come to it."""

    def __init__(self, workers: int, spec: PreprocessSpec, opts: EngineOptions, start: bool = True) -> None:
        self.workers, self.spec, self.opts = workers, spec, opts
        self.ex: ProcessPoolExecutor | None = None
        if start and workers:
            self.ex = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # forkserver/spawn, never fork: the parent has threads (the walk, ONNX
        # Runtime), and forking a threaded process can deadlock the child.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["scanner.decode"])  # workers fork with Pillow and NumPy loaded
        try:
            return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=init_worker,
                                       initargs=(self.opts.decode_timeout_s, self.opts.decode_memory_bytes))
        except (AttributeError, ImportError, OSError) as e:
            # Seen in CI: a pyenv Python that loaded the system's older libpython (its
            # LD_LIBRARY_PATH) has a standard library its interpreter lacks parts of, and
            # multiprocessing's resource tracker fails before any worker starts.
            raise MaiError(f"the decode worker processes cannot start ({type(e).__name__}: {e}); "
                           "check that this Python's interpreter and standard library match "
                           "(`python -c 'import ssl'` fails when they do not), or run with "
                           "--workers 0 to decode in this process") from e

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
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if not abort:
            ex.shutdown(wait=True)
            return
        # Interrupted or broken: cancel what has not started, and do not wait.
        workers = list((getattr(ex, "_processes", None) or {}).values())  # shutdown drops this table
        broken = bool(getattr(ex, "_broken", False))
        ex.shutdown(wait=False, cancel_futures=True)
        if not broken:
            # A healthy pool's workers finish the chunk they hold (each file bounded by the
            # decode timeout) and stop. Never kill one here: ended while sending its result, it
            # leaves the executor's manager thread reading half a message forever, and the
            # interpreter's exit waits for that thread (seen in a CI-like run, stop 31).
            return
        # Broken: the executor's own teardown ended the workers it knew of, and its manager
        # reads no more results. A worker spawned by a submit that raced the breaking was
        # never told to stop, and the manager's join of it held the interpreter's exit (CI
        # at stop 30 printed its results, then did not finish for 90 minutes): end them all.
        for p in workers:
            with contextlib.suppress(Exception):
                p.terminate()


def death_reason(seconds: float, opts: EngineOptions) -> str:
    """Why a worker decoding one file alone died: the timeout stopped it, or it crashed."""
    if opts.decode_timeout_s and seconds >= 0.95 * opts.decode_timeout_s:
        return (f"decoding took longer than {opts.decode_timeout_s:g} s and was stopped "
                "(a hostile or broken file; the worker was ended)")
    return "the decoder crashed on this file (worker died)"
