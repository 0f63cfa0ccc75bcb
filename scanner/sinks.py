"""Where records go: JSON Lines, a Rich table, plain lines; the progress line and
the summary on stderr; and reading a JSON Lines file back for `--resume`.

JSON Lines: each record is one complete line written with one `write` call
(looped only if the OS takes part of it) straight to the file descriptor, so
it reaches the OS at once and a killed process leaves at most one partial last
line, which `--resume` cuts off.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from mai.console import stderr_console
from scanner.records import ERROR_KINDS, VERDICTS, display_path, to_line

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


class PathSet:
    """Membership of record paths in little memory: sorted 64-bit hashes (8 bytes
    a path; a million files take 8 MB, not a set of strings' 100+). Paths are
    compared absolute and normalised, so `photos/a.jpg` and `./photos/a.jpg`
    are the same file when resumed from the same folder."""

    def __init__(self, paths: list[int] | None = None) -> None:
        import numpy as np

        self._a = np.sort(np.asarray(paths or [], dtype=np.uint64))

    @staticmethod
    def hash(path: str) -> int:
        norm = os.path.abspath(path)
        return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")

    def __len__(self) -> int:
        return int(self._a.size)

    def __contains__(self, path: str) -> bool:
        import numpy as np

        if not self._a.size:
            return False
        h = np.uint64(self.hash(path))
        i = int(np.searchsorted(self._a, h))
        return i < self._a.size and self._a[i] == h


@dataclass
class Resumed:
    """What `--resume` found in the output file."""

    paths: PathSet
    cut: int  # bytes of an unfinished last line removed
    models: set[str]  # model ids of the records there


def resume_jsonl(path: str, summary: Summary | None = None) -> Resumed:
    """Prepare `path` for `--resume`: cut it after its last complete record and
    return the paths already in it. `summary` counts the records already there,
    so the resumed scan's summary and exit status are those of the whole scan.

    A line counts when it ends in a newline and parses as a JSON object with a
    path; from the first one that does not (the half-written line of a killed
    process) the file is truncated.
    """
    import json

    hashes: list[int] = []
    models: set[str] = set()
    good = 0
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return Resumed(PathSet(), 0, models)
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
                p = rec["path"]
            except (ValueError, KeyError, TypeError):
                break
            if not isinstance(p, str):
                break
            hashes.append(PathSet.hash(p))
            if isinstance(rec.get("model"), str):
                models.add(rec["model"])
            if summary is not None:
                summary.add_resumed(rec)
            good += len(line)
        size = f.seek(0, os.SEEK_END)
        if size != good:
            f.truncate(good)
    return Resumed(PathSet(hashes), size - good, models)


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


# ---------------------------------------------------------------------------- summary and progress

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
