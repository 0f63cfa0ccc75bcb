"""Where records go: JSON Lines, a Rich table, plain lines. (The summary is
`scanner.summary`'s, the progress line `scanner.progress`'s, reading a JSON Lines
file back for `--resume` `scanner.resume`'s.)

JSON Lines: each record is one complete line written with one `write` call
(looped only if the OS takes part of it) straight to the file descriptor, so
it reaches the OS at once and a killed process leaves at most one partial last
line, which `--resume` cuts off.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from scanner.records import display_path, to_line

VERDICT_STYLE = {"synthetic": "bold red", "authentic": "green", "uncertain": "yellow", "error": "magenta"}


# ---------------------------------------------------------------------------- JSON Lines

class JsonlWriter:
    """Whole lines to a file (`target` a path) or to stdout (`target` "-")."""

    def __init__(self, target: str, append: bool = False) -> None:
        self.target = target
        self.fd: int | None = None
        self.stream: IO[bytes] | None = None
        if target == "-":
            self.stream = getattr(sys.stdout, "buffer", None)
        else:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_BINARY", 0)
            self.fd = os.open(target, flags, 0o666)

    def write(self, record: dict[str, Any]) -> None:
        line = to_line(record)
        if self.fd is not None:
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view):]
        elif self.stream is not None:
            self.stream.write(line)
            self.stream.flush()
        else:  # a text-only stdout (an embedding application, a test runner)
            sys.stdout.write(line.decode("ascii"))
            sys.stdout.flush()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------- views for people

_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
_CONTROL_AND_BACKSLASH = {**_CONTROL, ord("\\"): "\\\\"}


def visible(text: str, backslash: bool = True) -> str:
    """A name safe for one line on a terminal: control characters (newlines, tabs,
    escape sequences a hostile file name could carry) are shown escaped, and
    with `backslash` a backslash doubled, so the escaping can be undone."""
    return display_path(text).translate(_CONTROL_AND_BACKSLASH if backslash else _CONTROL)


def _score(record: dict[str, Any]) -> str:
    return "-" if record["score"] is None else f"{record['score']:.3f}"


def note(record: dict[str, Any]) -> str:
    """The short why: the error, or the generator metadata names."""
    if record["error"]:
        return f"{record['error']['kind']}: {record['error']['message']}"
    gens = [s.get("generator") or s.get("signal") for s in record["provenance"] if s.get("ai")]
    if gens:
        return "metadata: " + ", ".join(dict.fromkeys(str(g) for g in gens))
    if record["stage"] == "vlm":
        return f"cnn {record['scores']['cnn']:.3f}"
    return ""


class PlainView:
    """Tab-separated lines for pipes: verdict, score, stage, note, path (last, so
    `cut -f5-` keeps it whole; tabs, newlines and backslashes in it are escaped)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, record: dict[str, Any]) -> None:
        cells = [record["verdict"], _score(record), record["stage"] or "-", visible(note(record)) or "-",
                 visible(record["path"])]
        self.stream.write("\t".join(cells) + "\n")
        self.stream.flush()


class TableView:
    """Rows of a table on a terminal, streamed (a Rich Table would hold every row)."""

    def __init__(self, console: Any = None) -> None:
        if console is None:
            from rich.console import Console

            console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
        self.console = console
        self._header = False

    def write(self, record: dict[str, Any]) -> None:
        from rich.text import Text

        if not self._header:
            self.console.print(Text(f"{'verdict':<10}{'score':>6}  {'stage':<9}{'size':>11}  path", style="bold"))
            self._header = True
        size = f"{record['width']}x{record['height']}" if record["width"] else "-"
        row = Text.assemble(
            (f"{record['verdict']:<10}", VERDICT_STYLE.get(record["verdict"], "")),
            f"{_score(record):>6}  {record['stage'] or '-':<9}{size:>11}  ",
            visible(record["path"], backslash=False),
        )
        extra = note(record)
        if extra:
            row.append(f"  {visible(extra, backslash=False)}", style="dim")
        self.console.print(row, soft_wrap=True)
