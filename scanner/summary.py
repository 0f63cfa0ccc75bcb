"""The scan's counts and its summary on stderr (`Summary`, `print_lines`)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mai.console import stderr_console
from scanner.records import ERROR_KINDS, VERDICTS


@dataclass
class Summary:
    verdicts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    scanned: int = 0  # decoded (or failed) in this run
    cached: int = 0  # unchanged: record rebuilt from the scan state
    resumed: int = 0  # already in the output file (--resume); counted in verdicts and errors too
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add_resumed(self, record: dict[str, Any]) -> None:
        self.verdicts[str(record.get("verdict"))] += 1
        if isinstance(record.get("error"), dict):
            self.errors[str(record["error"].get("kind"))] += 1
        self.resumed += 1

    def add(self, record: dict[str, Any], cached: bool = False) -> None:
        self.verdicts[record["verdict"]] += 1
        if record["error"]:
            self.errors[record["error"]["kind"]] += 1
        if cached:
            self.cached += 1
        else:
            self.scanned += 1

    @property
    def files(self) -> int:
        return sum(self.verdicts.values())

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.scanned / self.elapsed if self.elapsed > 0 else 0.0

    def lines(self, model_line: str | None = None, output: str | None = None) -> list[tuple[str, str]]:
        """(text, style) lines, for Rich or plain printing."""
        out = [(f"mai-scan: {self.files:,} records in {self.elapsed:.1f} s; {self.scanned:,} files scanned, "
                f"{self.rate:.1f} images/s", "bold")]
        out.append(("  verdicts: " + ", ".join(f"{self.verdicts[v]:,} {v}" for v in VERDICTS), ""))
        if self.errors:
            kinds = sorted(self.errors, key=lambda k: (ERROR_KINDS.index(k) if k in ERROR_KINDS else 99, k))
            out.append(("  errors: " + ", ".join(f"{self.errors[k]:,} {k}" for k in kinds), "magenta"))
        if self.cached:
            out.append((f"  unchanged: {self.cached:,} files scored before by this model "
                        "(records rebuilt from the scan state; --rescan scores them again)", ""))
        if self.resumed:
            out.append((f"  resumed: {self.resumed:,} records were already in {output or 'the output'}", ""))
        if model_line:
            out.append((f"  {model_line}", "dim"))
        return out


def print_lines(lines: list[tuple[str, str]], console: Any = None) -> None:
    """Styled on a terminal (Rich), plain text otherwise."""
    if console is None and not sys.stderr.isatty():
        for text, _ in lines:
            print(text, file=sys.stderr, flush=True)
        return
    from rich.text import Text

    console = console or stderr_console()
    for text, style in lines:
        console.print(Text(text, style=style), soft_wrap=True)
