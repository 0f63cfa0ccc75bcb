"""The progress line on stderr while a scan runs: live on a terminal, a plain
line now and then in a log, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from typing import Any

from mai.console import stderr_console
from scanner.summary import Summary


class Progress:
    """A live status line on a terminal's stderr; a plain line every `every_s`
    seconds when stderr is a log; nothing when disabled."""

    def __init__(self, summary: Summary, mode: str, every_s: float = 30.0) -> None:
        self.summary, self.mode, self.every_s = summary, mode, every_s  # mode: live | log | off
        self._last = time.monotonic()
        self._live: Any = None

    def _text(self) -> str:
        s = self.summary
        err = sum(s.errors.values())
        return (f"scanning: {s.files:,} done ({s.cached:,} unchanged, {s.resumed:,} resumed), "
                f"{err:,} errors, {s.rate:.1f} images/s")

    def tick(self) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if self.mode == "live":
            if now - self._last < 0.2 and self._live is not None:
                return
            self._last = now
            from rich.text import Text

            if self._live is None:
                from rich.live import Live

                self._live = Live(Text(self._text()), console=stderr_console(), auto_refresh=False,
                                  transient=True)
                self._live.start()
            self._live.update(Text(self._text()), refresh=True)
        elif now - self._last >= self.every_s:
            self._last = now
            print(self._text(), file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
