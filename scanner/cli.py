"""`mai-scan`: the batch scanner's command line.

Imports here stay light (click only) so `mai-scan --help` is instant; the
pipeline, NumPy, ONNX Runtime and Rich load when a scan starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from mai.console import run_main
from mai.errors import MaiError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_ERRORS, EXIT_FAIL_ON, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 4, 130, 141


class ScanError(MaiError):
    """A usage or input problem found before scanning (exit status 2)."""


def _band(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("give two numbers, LO,HI, e.g. 0.3,0.7") from None
    if not 0 <= lo < hi <= 1:
        raise click.BadParameter("need 0 <= LO < HI <= 1")
    return lo, hi


HELP = """Scan images for signs of AI generation.

PATH is a folder (walked recursively) or a file (always scanned). Each file
gives one record, streamed as results come: a table on a terminal, plain
tab-separated lines (verdict, score, stage, note, path) otherwise, or JSON Lines
(schema mai.scan/1) with --jsonl. Progress and the summary go to stderr.

\b
Examples:
  mai-scan --examples                          # the bundled example images
  mai-scan ./photos                            # a table on the terminal
  mai-scan ./photos --jsonl out.jsonl          # records to a file
  mai-scan ./photos --jsonl out.jsonl --resume # finish an interrupted scan
  mai-scan ./photos --jsonl - | jq -r 'select(.verdict=="synthetic").path'
  mai-scan ./dump --include '*.png' --exclude 'thumbs/*' --workers 4
  mai-scan ./photos --device cuda --jsonl out.jsonl  # nvJPEG decode + fp16 model on the GPU
  mai-scan upload.jpg --fail-on synthetic      # exit 4 if it looks generated
  mai-scan ./photos --vlm models/SmolVLM-256M-Instruct --vlm-adapter runs/vlm-lora
                                               # uncertain images get a VLM's second opinion

\b
Files: the extensions .jpg .jpeg .jpe .jfif .png .apng .webp .tif .tiff .gif
.bmp .dib, plus .avif/.avifs when Pillow has the codec and .heic/.heif with
pillow-heif installed; files without an extension are recognised by content
(--all-files: every file). The content decides the format, so a PNG named .jpg
scans and a text file named .jpg is an error record. Hidden names (".x") are
skipped unless --hidden; symbolic links are followed, each folder walked once.
In --include/--exclude globs, * and ? stay within a name and ** spans folders.

\b
Verdicts: synthetic, authentic, uncertain (the score lies inside the model's
uncertainty band), error. A provenance signal in the metadata (C2PA, IPTC
DigitalSourceType, generator text chunks) makes a file synthetic (stage
"metadata"); its absence never lowers a score. --threshold replaces the
model's threshold and drops its band, which was calibrated for the stored
threshold: give --uncertain LO,HI to keep one.

\b
Rescans and --resume: files scored before by the same model and unchanged
since (same resolved path, size and mtime) are not decoded again: their
records are rebuilt from the scan state in $MAI_HOME (default ~/.mai), so the
output is still complete (error records are not stored: those files are tried
again). After Ctrl-C or a killed process, --resume with the
same --jsonl FILE cuts the file after its last complete line, skips the files
already in it and appends the rest: every file ends up there exactly once.
Records come in completion order, not walk order.

\b
Exit status:
  0    every file was scanned (whatever the verdicts)
  1    unexpected failure
  2    usage or input error: bad PATH, bad model (one line; MAI_DEBUG=1 shows
       the traceback)
  3    the scan finished, but some files are error records
  4    a verdict named by --fail-on occurred (wins over 3)
  130  interrupted (Ctrl-C, SIGTERM): run again with --resume
  141  stdout was closed early (e.g. piped into head)
"""


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--jsonl", "jsonl", metavar="FILE|-", default=None,
              help="Write records as JSON Lines to FILE ('-': stdout).")
@click.option("--format", "view", type=click.Choice(["auto", "table", "plain", "jsonl", "none"]), default="auto",
              show_default=True,
              help="What stdout shows: auto = a table on a terminal, plain lines otherwise, nothing with --jsonl FILE.")
@click.option("--model", "model_path", metavar="PATH", default=None,
              help="Model folder (with model.fp32.onnx) or .onnx file. Default: the embedded model.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Where the model runs: cuda where ONNX Runtime's CUDA provider really loads, else cpu.")
@click.option("--decoder", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where JPEGs are decoded and resized: gpu = nvJPEG through torchvision (the gpu extra), "
                   "with the model on CUDA; auto = gpu whenever that can run.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=None, metavar="N",
              help="Images per model call (default: 32; 256 on the GPU path).")
@click.option("--workers", type=click.IntRange(0, 512), default=None, metavar="N",
              help="Decode processes (default: one per CPU; 0 decodes in this process).")
@click.option("--threads", type=click.IntRange(1, 512), default=None, metavar="N",
              help="ONNX Runtime threads (default: one per CPU).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="X",
              help="Decision threshold on P(synthetic) (default: the model's own; drops its uncertainty band).")
@click.option("--uncertain", "band", callback=_band, metavar="LO,HI", default=None,
              help="Uncertainty band: scores strictly between LO and HI are 'uncertain'.")
@click.option("--no-uncertain", is_flag=True, help="No uncertainty band: every score is decided by the threshold.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching a GLOB (a name, or a path below PATH if it has a '/'). Repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching files and folders. Repeatable.")
@click.option("--hidden", is_flag=True, help="Also scan hidden files and folders (names starting with '.').")
@click.option("--all-files", is_flag=True, help="Consider every file, recognising images by content.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Walk into sub-folders.")
@click.option("--resume", is_flag=True, help="Finish an interrupted scan into the same --jsonl FILE.")
@click.option("--rescan", is_flag=True, help="Score every file again, even unchanged ones.")
@click.option("--no-state", is_flag=True, help="Neither read nor update the scan state.")
@click.option("--max-pixels", type=click.IntRange(1), default=None, metavar="N",
              help="Refuse images over N pixels, read from the header (default: 180 million).")
@click.option("--no-draft", is_flag=True,
              help="Decode JPEGs at full size (exact but slower) instead of DCT-scaled.")
@click.option("--examples", is_flag=True, help="Also scan the example images bundled with MAI.")
@click.option("--fail-on", type=click.Choice(["synthetic", "uncertain"]), multiple=True,
              help="Exit with status 4 if any file gets this verdict. Repeatable.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine's process pool; ray: Ray Data, here or on a cluster (the ray extra).")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="With --engine ray: join this Ray cluster ('auto', HOST:6379); default: start Ray here.")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0.0, metavar="X",
              help="With --engine ray: GPUs each Ray worker reserves (0.25: four workers share a GPU).")
@click.option("--out-dir", metavar="DIR", default=None,
              help="Write records as JSON Lines shards in DIR, with a manifest.json of complete shards.")
@click.option("--vlm", "vlm", metavar="BASE", default=None,
              help="Send the images the CNN is unsure of to this vision-language model (a local folder; "
                   "the vlm extra); their records get stage 'vlm' and both scores.")
@click.option("--vlm-adapter", metavar="ADAPTER", default=None,
              help="A LoRA adapter from `mai train vlm` for --vlm (its calibrated threshold decides).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow --vlm to run code shipped with its weights (moondream2).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, no summary: only records and errors.")
@click.version_option(package_name="mai-detect")
def cli(**kw: Any) -> None:
    sys.exit(scan(**kw))


def _roots(paths: tuple[str, ...], examples: bool) -> list[str]:
    roots = list(paths)
    if examples:
        from importlib import resources

        ex = str(resources.files("mai.examples"))
        if not os.path.isdir(ex):
            raise ScanError(f"the bundled examples are not a folder on disk here ({ex}); reinstall MAI unzipped")
        roots.append(ex)
    if not roots:
        raise ScanError("nothing to scan: give one or more PATHs (folders or files), or --examples")
    from scanner.records import display_path

    for r in roots:
        if not os.path.lexists(r):
            raise ScanError(f"{display_path(r)}: no such file or folder")
        if not os.path.exists(r):
            raise ScanError(f"{display_path(r)}: a broken symbolic link")
    return roots


def _usable_default(log: Any) -> Any:
    from mai.session import usable_default

    try:
        return usable_default(log)
    except MaiError as e:
        raise ScanError(f"the embedded default model cannot be used ({e}); "
                        "pass --model PATH (a model folder or .onnx file)") from e


def scan(paths: tuple[str, ...], jsonl: str | None, view: str, model_path: str | None, device: str,
         batch_size: int | None, workers: int | None, threads: int | None, threshold: float | None,
         band: tuple[float, float] | None, no_uncertain: bool, include: tuple[str, ...],
         exclude: tuple[str, ...], hidden: bool, all_files: bool, recursive: bool, resume: bool,
         rescan: bool, no_state: bool, max_pixels: int | None, no_draft: bool, examples: bool,
         fail_on: tuple[str, ...], quiet: bool, engine: str = "local", ray_address: str | None = None,
         gpus_per_worker: float = 0.0, out_dir: str | None = None, vlm: str | None = None,
         vlm_adapter: str | None = None, trust_remote_code: bool = False, decoder: str = "auto") -> int:
    """Run one scan; returns the exit status."""
    roots = _roots(paths, examples)
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
        view = "jsonl" if jsonl == "-" else "none" if jsonl or out_dir else "table" if sys.stdout.isatty() else "plain"
    elif view == "jsonl" and jsonl not in (None, "-"):
        raise ScanError("--format jsonl writes JSON Lines to stdout; with --jsonl FILE choose table, plain or none")

    from mai.session import open_model
    from scanner.records import Decision, display_path, make_record
    from scanner.sinks import JsonlWriter, PlainView, Progress, Summary, TableView, print_lines, resume_jsonl

    def note(text: str) -> None:
        if not quiet:
            print_lines([(text, "dim")])

    if engine != "ray" and (ray_address or gpus_per_worker):
        raise ScanError("--ray-address and --gpus-per-worker need --engine ray")
    if model_path is None:  # the default, or its fallback where the default's backbone is missing
        model_path = str(_usable_default(note))
    ray_engine = None
    if engine == "ray":  # Ray is imported only here, and only when a window of files is ready to score
        from scanner.engine_ray import RayEngine

        ray_engine = RayEngine(model_path, device, threads, address=ray_address, workers=workers,
                               gpus_per_worker=gpus_per_worker, log=note)
        model = ray_engine.driver_model(open_model)
    else:
        model = open_model(model_path, device, threads or os.cpu_count(), note)
    decision = Decision.make(model.threshold, model.uncertain, threshold, band, not no_uncertain)
    gpu, cpu_why = _choose_decoder(model, decoder, engine)
    opinion = _open_vlm(vlm, vlm_adapter, trust_remote_code, device, engine, note)
    if opinion is not None:
        import dataclasses

        decision = dataclasses.replace(decision, second_threshold=opinion.threshold)

    from scanner.decode import DEFAULT_MAX_PIXELS, configure_pillow
    from scanner.pipeline import PipelineOptions, run
    from scanner.state import ScanState, facts_of
    from scanner.walk import WalkOptions, walk

    summary = Summary()
    done = None
    if resume:
        if out_dir is not None:
            from scanner.shards import resume_shards

            found = resume_shards(out_dir, summary)
        else:
            found = resume_jsonl(jsonl, summary)
        others = sorted(found.models - {model.model_id})
        if others:
            raise ScanError(f"--resume: {out_dir or jsonl} holds records of {', '.join(others)}, not "
                            f"{model.model_id}; resume with the same --model, or write to a new file")
        done = found.paths
        if found.cut:
            note(f"resume: cut {found.cut} bytes of an unfinished last record from {out_dir or jsonl}")
        note(f"resume: {len(done):,} records already in {out_dir or jsonl}")
    state = None
    if not no_state:
        try:
            vlm_key = f"|vlm={opinion.model_id}" if opinion is not None else ""
            state = ScanState(model_key=f"{model.model_id}|{model.precision}{vlm_key}", on_error=note)
        except Exception as e:  # noqa: BLE001 - sqlite3, OS or app-folder errors: the scan works without it
            note(f"scan state unavailable ({e}); scanning without it")

    sinks: list[Any] = []
    writer = JsonlWriter(jsonl, append=resume) if jsonl else None
    if writer is not None:
        sinks.append(writer)
    shards = None
    if out_dir is not None:
        from scanner.shards import ShardWriter

        shards = ShardWriter(out_dir, append=resume, model=model.model_id)
        sinks.append(shards)
    if view == "table":
        sinks.append(TableView())
    elif view == "plain":
        sinks.append(PlainView())
    elif view == "jsonl" and writer is None:
        sinks.append(JsonlWriter("-"))

    # Rows streaming to the terminal are the progress; otherwise a live line on a
    # terminal's stderr, or a line every 30 s into a log.
    rows_on_terminal = view in ("table", "plain") and sys.stdout.isatty()
    mode = "off" if quiet or rows_on_terminal else "live" if sys.stderr.isatty() else "log"
    progress = Progress(summary, mode)

    def emit(record: dict[str, Any], entry: Any, cached: bool = False) -> None:
        # The output first: a crash between the two leaves a record without its
        # state row (rescored later), never a state row without its record.
        for s in sinks:
            s.write(record)
        summary.add(record, cached)
        if state is not None and entry is not None and not cached and record["error"] is None:
            state.put(entry.key, entry.size, entry.mtime_ns, facts_of(record))

    def triage(entry: Any) -> bool:
        if done is not None and display_path(entry.path) in done:
            return True
        if state is not None and not rescan:
            facts = state.lookup(entry.key, entry.size, entry.mtime_ns)
            if facts is not None:
                emit(make_record(entry.path, model=model.model_id, facts=facts, decision=decision), entry, True)
                return True
        return False

    if workers is None:
        # A few named files decode faster here than a pool starts.
        few_files = len(roots) <= 4 and all(os.path.isfile(r) for r in roots)
        workers = 0 if few_files else os.cpu_count() or 1
    opts = PipelineOptions(workers=workers, batch_size=batch_size or (256 if gpu is not None else 32),
                           max_pixels=max_pixels or DEFAULT_MAX_PIXELS, draft=not no_draft, gpu=gpu)
    note(_decode_line(gpu, cpu_why, workers, opts.readers, engine))
    configure_pillow()
    walk_opts = WalkOptions(recursive=recursive, hidden=hidden, all_files=all_files,
                            include=tuple(include), exclude=tuple(exclude))
    status = EXIT_OK
    try:
        engine_run = ray_engine.run if ray_engine is not None else run
        engine_run(walk(roots, walk_opts), model, decision, emit, options=opts, triage=triage, tick=progress.tick,
                   **({"second_opinion": opinion} if opinion is not None else {}))
        if shards is not None:
            shards.finished = True
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except BrokenPipeError:
        status = EXIT_PIPE
        # Later writes (and the interpreter's final flush) must not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        summary.finished = time.monotonic()
        progress.stop()
        if state is not None:
            state.close()
        if writer is not None:
            writer.close()
        if shards is not None:
            shards.close()
    if status == EXIT_PIPE:
        return status
    if not quiet:
        lines = summary.lines(f"model: {model.describe()}", out_dir or (jsonl if jsonl not in (None, "-") else None))
        if opinion is not None:
            lines.append((f"  {opinion.summary_line()}", ""))
        if gpu is not None:
            lines.extend((f"  {line}", "") for line in gpu.stats.lines())
        if status == EXIT_INTERRUPTED:
            how = ("run the same command with --resume to finish" if out_dir or jsonl not in (None, "-")
                   else "run it again: files already scored come from the scan state")
            lines.insert(0, (f"mai-scan: interrupted; {how}", "bold yellow"))
        print_lines(lines)
    if status:
        return status
    if fail_on and any(summary.verdicts[v] for v in fail_on):
        return EXIT_FAIL_ON
    return EXIT_ERRORS if summary.errors else EXIT_OK


def _choose_decoder(model: Any, decoder: str, engine: str) -> tuple[Any, str | None]:
    """The GPU stage for --decoder (None: the CPU path) and why not, if worth saying.
    torch is imported only when the model already runs on CUDA."""
    from scanner.gpu import GpuPathError, choose

    try:
        return choose(model, decoder, engine)
    except GpuPathError as e:
        raise ScanError(str(e)) from None


def _decode_line(gpu: Any, why: str | None, workers: int, readers: int, engine: str) -> str:
    """Which decode path runs, in one line."""
    cpu = ("in the Ray workers" if engine == "ray" else "in this process" if not workers
           else f"{workers} worker process{'es' if workers > 1 else ''}")
    if gpu is not None:
        return f"decode: {gpu.describe()}, {readers} reader threads; other formats on the CPU, {cpu}"
    return f"decode: CPU, {cpu}" + (f" ({why})" if why else "")


def _open_vlm(vlm: str | None, adapter: str | None, trust_remote_code: bool, device: str, engine: str,
              log: Any) -> Any:
    """The VLM second opinion for --vlm, loaded before the scan starts (torch and
    transformers are imported only here, only when --vlm is given)."""
    if vlm is None:
        if adapter is not None:
            raise ScanError("--vlm-adapter needs --vlm BASE: the base model folder the adapter was trained on")
        return None
    if engine != "local":
        raise ScanError("--vlm runs with --engine local only")
    from mai.vlm.scan import VLMOpinion

    opinion = VLMOpinion.load(vlm, adapter, trust_remote_code=trust_remote_code, device=device)
    log(f"vlm: {opinion.describe()}, threshold {opinion.threshold:.4f} (loaded in {opinion.load_seconds:.1f} s)")
    return opinion


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (kill, a batch system stopping the job) stops as cleanly as Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    run_main(cli, "mai-scan")


if __name__ == "__main__":
    main()
