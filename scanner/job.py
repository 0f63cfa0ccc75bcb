"""One scan's bookkeeping around an engine: what is already done (`--resume`,
the scan state), where records go (the sinks), progress, the summary, and the
exit status.

The engine (`scanner.engine`) only turns files into records; `ScanJob.emit` is
where every record goes and `ScanJob.triage` decides which files need scoring
at all. The command line (`scanner.cli`) checks the flags, opens the model and
the engine, and hands over.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mai.errors import MaiError
from scanner.engine import Engine, EngineOptions, ScanModel
from scanner.exits import EXIT_ERRORS, EXIT_FAIL_ON, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE
from scanner.progress import Progress
from scanner.records import Decision, display_path, make_record
from scanner.resume import resume_jsonl
from scanner.sinks import JsonlWriter, PlainView, TableView
from scanner.state import ScanState, facts_of
from scanner.summary import Summary, print_lines
from scanner.walk import Entry, WalkError


def state_key(model: ScanModel, second_opinion: Any = None) -> str:
    """What names a model in the scan state: its id, its precision, and the second opinion's id."""
    return f"{model.model_id}|{model.precision}" + (f"|vlm={second_opinion.model_id}" if second_opinion else "")


class ScanError(MaiError):
    """A usage or input problem found before scanning (exit status 2)."""


def scan_roots(paths: Sequence[str], examples: bool) -> list[str]:
    """The PATH arguments (plus the bundled examples), each checked to exist."""
    roots = list(paths)
    if examples:
        from importlib import resources

        ex = str(resources.files("mai.examples"))
        if not os.path.isdir(ex):
            raise ScanError(f"the bundled examples are not a folder on disk here ({ex}); reinstall MAI unzipped")
        roots.append(ex)
    if not roots:
        raise ScanError("nothing to scan: give one or more PATHs (folders or files), or --examples")
    for r in roots:
        if not os.path.lexists(r):
            raise ScanError(f"{display_path(r)}: no such file or folder")
        if not os.path.exists(r):
            raise ScanError(f"{display_path(r)}: a broken symbolic link")
    return roots


@dataclass(frozen=True)
class Outputs:
    """Where records go: `jsonl` (a file, or '-' for stdout), `out_dir` (shards),
    and what stdout shows (`view`: table, plain, jsonl or none)."""

    jsonl: str | None
    view: str
    out_dir: str | None
    resume: bool
    quiet: bool
    html: str | None = None  # --html FILE: the HTML report (scanner.report), besides the other outputs
    html_thumbs: str = "auto"

    @classmethod
    def check(cls, jsonl: str | None, view: str, out_dir: str | None, resume: bool, quiet: bool,
              html: str | None = None, html_thumbs: str | None = None) -> Outputs:
        """The outputs the flags ask for, or a ScanError before anything is opened."""
        if html is not None:
            from scanner.report import ReportError, check_target

            try:
                check_target(html)
            except ReportError as e:
                raise ScanError(str(e)) from None
            if jsonl not in (None, "-") and os.path.abspath(jsonl) == os.path.abspath(html):
                raise ScanError("--html and --jsonl name the same file: give the report its own name")
        elif html_thumbs is not None:
            raise ScanError("--html-thumbs needs --html FILE")
        if out_dir is not None:
            from scanner.shards import check_out_dir

            check_out_dir(out_dir, jsonl, resume)
        elif resume and (jsonl is None or jsonl == "-"):
            raise ScanError("--resume needs --jsonl FILE: it continues the records already written there")
        if jsonl not in (None, "-"):
            parent = os.path.dirname(os.path.abspath(jsonl))
            if not os.path.isdir(parent):
                raise ScanError(f"--jsonl {jsonl}: the folder {parent} does not exist")
            if os.path.isdir(jsonl):
                raise ScanError(f"--jsonl {jsonl} is a folder; give a file name")
        if view == "auto":
            view = ("jsonl" if jsonl == "-" else "none" if jsonl or out_dir
                    else "table" if sys.stdout.isatty() else "plain")
        elif view == "jsonl" and jsonl not in (None, "-"):
            raise ScanError("--format jsonl writes JSON Lines to stdout; with --jsonl FILE choose table, plain or none")
        return cls(jsonl, view, out_dir, resume, quiet, html, html_thumbs or "auto")

    @property
    def file(self) -> str | None:
        """The file or folder the records are kept in (None: only stdout)."""
        return self.out_dir or (self.jsonl if self.jsonl not in (None, "-") else None)

    def note(self, text: str) -> None:
        """A dim line on stderr, unless --quiet."""
        if not self.quiet:
            print_lines([(text, "dim")])


@dataclass(frozen=True)
class JobOptions:
    """The flags that are the job's: the scan state, failing verdicts, and what the
    HTML report and the summary need to know."""

    use_state: bool = True  # read and update the scan state (--no-state: False)
    rescan: bool = False  # score unchanged files again (and update the state)
    fail_on: Sequence[str] = ()  # verdicts that make the exit status 4
    roots: Sequence[str] = ()  # the scanned PATHs: the HTML report shows paths below them
    max_pixels: int | None = None  # the HTML report's thumbnails keep the scan's pixel limit
    second_opinion: Any = None  # a VLM: its id joins the state key, its line the summary
    gpu: Any = None  # the GPU path (scanner.gpu.GpuStage): its lines join the summary


class ScanJob:
    """The scan of one model's records into `outputs`.

    The scan state is keyed by the model, its precision and the second opinion
    (`state_key`): a record rebuilt from the state is one those would give again.
    """

    def __init__(self, model: ScanModel, decision: Decision, outputs: Outputs,
                 options: JobOptions | None = None) -> None:
        opts = options or JobOptions()
        self.model, self.decision, self.outputs, self.options = model, decision, outputs, opts
        self.rescan, self.fail_on = opts.rescan, tuple(opts.fail_on)
        self.roots, self.max_pixels = tuple(opts.roots), opts.max_pixels  # for the HTML report
        self.report: Any = None  # a scanner.report.ReportWriter with --html
        self.summary = Summary()
        self.done: Any = None  # with --resume: the paths already in the output (a resume.PathSet)
        self.state: Any = None
        self.sinks: list[Any] = []
        self.writer: JsonlWriter | None = None
        self.shards: Any = None
        if outputs.resume:
            self._resume()
        if opts.use_state:
            self._open_state(state_key(model, opts.second_opinion))

    def extra_lines(self) -> list[str]:
        """Summary lines beyond the counts: the second opinion's, the GPU path's."""
        opinion, gpu = self.options.second_opinion, self.options.gpu
        return ([opinion.summary_line()] if opinion is not None else []) + (gpu.stats.lines() if gpu else [])

    # ------------------------------------------------------------------ what is done

    def _resume(self) -> None:
        out = self.outputs
        if out.out_dir is not None:
            from scanner.shards import resume_shards

            found = resume_shards(out.out_dir, self.summary)
        else:
            found = resume_jsonl(out.jsonl, self.summary)
        others = sorted(found.models - {self.model.model_id})
        if others:
            raise ScanError(f"--resume: {out.file} holds records of {', '.join(others)}, not "
                            f"{self.model.model_id}; resume with the same --model, or write to a new file")
        self.done = found.paths
        if found.cut:
            out.note(f"resume: cut {found.cut} bytes of an unfinished last record from {out.file}")
        out.note(f"resume: {len(self.done):,} records already in {out.file}")

    def _open_state(self, key: str) -> None:
        try:
            self.state = ScanState(model_key=key, on_error=self.outputs.note)
        except Exception as e:  # noqa: BLE001 - sqlite3, OS or app-folder errors: the scan works without it
            self.outputs.note(f"scan state unavailable ({e}); scanning without it")

    def triage(self, entry: Entry) -> bool:
        """True when `entry` needs no scoring: already in the resumed output, or
        unchanged since the scan state recorded it (its record is rebuilt and emitted)."""
        if self.done is not None and display_path(entry.path) in self.done:
            return True
        if self.state is not None and not self.rescan:
            facts = self.state.lookup(entry.key, entry.size, entry.mtime_ns)
            if facts is not None:
                self.emit(make_record(entry.path, model=self.model.model_id, facts=facts, decision=self.decision),
                          entry, True)
                return True
        return False

    # ------------------------------------------------------------------ where records go

    def _open_sinks(self) -> None:
        out = self.outputs
        if out.jsonl:
            self.writer = JsonlWriter(out.jsonl, append=out.resume)
            self.sinks.append(self.writer)
        if out.out_dir is not None:
            from scanner.shards import ShardWriter

            self.shards = ShardWriter(out.out_dir, append=out.resume, model=self.model.model_id)
            self.sinks.append(self.shards)
        if out.view == "table":
            self.sinks.append(TableView())
        elif out.view == "plain":
            self.sinks.append(PlainView())
        elif out.view == "jsonl" and self.writer is None:
            self.sinks.append(JsonlWriter("-"))
        if out.html is not None:
            self._open_report()

    def _open_report(self) -> None:
        from scanner.decode import DEFAULT_MAX_PIXELS
        from scanner.report import ReportWriter, read_records, strip_dirs

        d = self.decision
        model = {"id": self.model.model_id, "describe": strip_dirs(self.model.describe()), "threshold": d.threshold,
                 "band": list(d.band) if d.band else None}
        self.report = ReportWriter(self.outputs.html, roots=self.roots, thumbs=self.outputs.html_thumbs,
                                   models=[model], max_pixels=self.max_pixels or DEFAULT_MAX_PIXELS)
        if self.outputs.resume and self.outputs.file:
            # The report covers the whole scan: the records already written come first.
            for record in read_records([self.outputs.file]):
                self.report.write(record)

    def emit(self, record: dict[str, Any], entry: Entry | None, cached: bool = False) -> None:
        # The output first: a crash between the two leaves a record without its
        # state row (rescored later), never a state row without its record.
        for s in self.sinks:
            s.write(record)
        if self.report is not None:
            self.report.write(record, entry.path if entry is not None else None)
        self.summary.add(record, cached)
        if self.state is not None and entry is not None and not cached and record["error"] is None:
            self.state.put(entry.key, entry.size, entry.mtime_ns, facts_of(record))

    def _close(self, interrupted: bool = False) -> None:
        for closable in (self.state, self.writer, self.shards):
            if closable is not None:
                closable.close()
        if self.report is not None:
            # Last: the report reads nothing the other outputs hold, and a failure
            # to write it (a full disk) leaves them complete.
            self.report.close(self.summary, interrupted=interrupted)

    # ------------------------------------------------------------------ the run

    def run(self, engine: Engine, source: Iterable[Entry | WalkError], options: EngineOptions,
            second_opinion: Any = None) -> int:
        """Scan `source` with `engine`; print the summary; return the exit status."""
        self._open_sinks()
        # Rows streaming to the terminal are the progress; otherwise a live line on a
        # terminal's stderr, or a line every 30 s into a log.
        rows_on_terminal = self.outputs.view in ("table", "plain") and sys.stdout.isatty()
        mode = "off" if self.outputs.quiet or rows_on_terminal else "live" if sys.stderr.isatty() else "log"
        progress = Progress(self.summary, mode)
        status = EXIT_OK
        try:
            engine.run(source, self.model, self.decision, self.emit, options=options, triage=self.triage,
                       tick=progress.tick, **({"second_opinion": second_opinion} if second_opinion else {}))
            if self.shards is not None:
                self.shards.finished = True
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
        except BrokenPipeError:
            status = EXIT_PIPE
            # Later writes (and the interpreter's final flush) must not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            self.summary.finished = time.monotonic()
            progress.stop()
            self._close(interrupted=status == EXIT_INTERRUPTED)
        if status == EXIT_PIPE:
            return status
        if not self.outputs.quiet:
            print_lines(self._summary_lines(status == EXIT_INTERRUPTED))
        if status:
            return status
        if self.fail_on and any(self.summary.verdicts[v] for v in self.fail_on):
            return EXIT_FAIL_ON
        return EXIT_ERRORS if self.summary.errors else EXIT_OK

    def _summary_lines(self, interrupted: bool) -> list[tuple[str, str]]:
        lines = self.summary.lines(f"model: {self.model.describe()}", self.outputs.file)
        lines.extend((f"  {line}", "") for line in self.extra_lines())
        if self.report is not None:
            r = self.report
            thumbs = {"embedded": f", {r.thumb_count:,} thumbnails embedded",
                      "folder": f", {r.thumb_count:,} thumbnails in {r.thumb_dir}"}.get(r.mode, ", no thumbnails")
            if r.skipped:
                thumbs += f", {r.skipped:,} skipped to keep the scan fast (--html-thumbs all makes every one)"
            lines.append((f"  report: {r.target} ({r.count:,} records{thumbs})", ""))
        if interrupted:
            how = ("run the same command with --resume to finish" if self.outputs.file
                   else "run it again: files already scored come from the scan state")
            lines.insert(0, (f"mai-scan: interrupted; {how}", "bold yellow"))
        return lines
