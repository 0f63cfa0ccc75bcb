"""Training progress on stderr: Rich when stderr is a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from mai.console import stderr_console


class TrainDisplay:
    """Epoch/step progress with loss, accuracy and learning rate."""

    def __init__(self, epochs: int, steps: int, log: Any = None, every_s: float = 30.0) -> None:
        self.epochs, self.steps = epochs, steps
        self.live = sys.stderr.isatty() and log is None
        self.every_s = every_s
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainDisplay:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.4f} lr {task.fields[lr]:.2e}"),
                console=stderr_console(), transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, epoch: int, step: int, loss: float, acc: float, lr: float) -> None:
        if self._progress is not None:
            if self._task is None or self._task_epoch != epoch:
                if self._task is not None:
                    self._progress.remove_task(self._task)
                self._task = self._progress.add_task("train", total=self.steps, epoch=epoch + 1,
                                                     epochs=self.epochs, loss=0.0, acc=0.0, lr=lr)
                self._task_epoch = epoch
            self._progress.update(self._task, completed=step, loss=loss, acc=acc, lr=lr)
            return
        now = time.time()
        if now - self._last >= self.every_s or step == self.steps:
            self._last = now
            print(f"epoch {epoch + 1}/{self.epochs} step {step}/{self.steps} loss {loss:.4f} "
                  f"acc {acc:.4f} lr {lr:.2e}", file=sys.stderr, flush=True)

    def epoch_done(self, row: dict[str, Any]) -> None:
        def f(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, float) else str(v)

        self.note("epoch " + " ".join(f"{k}={f(v)}" for k, v in row.items()))
