"""`mai-scan`: the batch scanner's command line.

Imports here stay light (click only) so `mai-scan --help` is instant; the
engine, NumPy, ONNX Runtime and Rich load when a scan starts. The flags become
an engine (`scanner.engine`), a decision rule and a `scanner.job.ScanJob`.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from mai.console import run_main
from mai.errors import MaiError
from scanner.exits import help_block

if TYPE_CHECKING:
    from scanner.engine import ScanModel


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
  mai-scan ./photos --jsonl out.jsonl --html report.html  # + a page of thumbnails and verdicts
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
HTML report (--html FILE): one self-contained page, written when the scan
ends (also after Ctrl-C): verdict counts, a score histogram, the model's
threshold and band, the scan's speed, then a grid of thumbnails (paged, 200
a page) with verdict, score, deciding stage and provenance signals, filters by
verdict, signal and stage, a path search, sorting, a detail view per record
and the error records with their reasons. Paths are shown relative to the
folder above each PATH. `mai report out.jsonl --html report.html` makes the
same page from records already written.

"""

HELP += help_block()  # from scanner.exits: the code, the help and the docs agree


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
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="Model arithmetic: auto = fp16 on CUDA; on the CPU int8 (a probe's backbone, from its shipped "
                   "static calibration) where the CPU has int8 dot-product instructions, else fp32.")
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
@click.option("--html", "html", metavar="FILE", default=None,
              help="Also write an HTML report to FILE: thumbnails, verdicts, evidence, filters; one file, "
                   "openable offline (works with every other output).")
@click.option("--html-thumbs", type=click.Choice(["auto", "all", "none"]), default=None,
              help="Thumbnails in the --html report (each is a second decode of its file): auto keeps them "
                   "within 3% of the scan's CPU time after the first 8, flagged files first; all makes every "
                   "one; none, none. Embedded up to 1,000, else in a folder FILE.thumbs/ beside the page. "
                   " [default: auto]")
@click.option("--vlm", "vlm", metavar="BASE", default=None,
              help="Send the images the model is unsure of to this vision-language model (a local folder; "
                   "the vlm extra); their records get stage 'vlm' and both scores.")
@click.option("--vlm-adapter", metavar="ADAPTER", default=None,
              help="A LoRA adapter from `mai train vlm` for --vlm (its calibrated threshold decides).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow --vlm to run code shipped with its weights (moondream2).")
@click.option("-q", "--quiet", is_flag=True, help="No progress, no summary: only records and errors.")
@click.version_option(package_name="mai-detect")
def cli(**kw: Any) -> None:
    sys.exit(scan(ScanFlags(**kw)))


def _usable_default(log: Any) -> str:
    from mai.session import usable_default
    from scanner.job import ScanError

    try:
        return str(usable_default(log))
    except MaiError as e:
        raise ScanError(f"the embedded default model cannot be used ({e}); "
                        "pass --model PATH (a model folder or .onnx file)") from e


@dataclass(frozen=True)
class ScanFlags:
    """`mai-scan`'s flags, as Click gives them, in groups."""

    # what to scan
    paths: tuple[str, ...] = ()
    examples: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    all_files: bool = False
    recursive: bool = True
    # where records go (scanner.job.Outputs)
    jsonl: str | None = None
    view: str = "auto"
    out_dir: str | None = None
    resume: bool = False
    quiet: bool = False
    html: str | None = None
    html_thumbs: str | None = None
    # the model and the decision rule
    model_path: str | None = None
    device: str = "auto"
    precision: str = "auto"  # auto: mai.session.precisions_for decides
    threads: int | None = None
    threshold: float | None = None
    band: tuple[float, float] | None = None
    no_uncertain: bool = False
    vlm: str | None = None
    vlm_adapter: str | None = None
    trust_remote_code: bool = False
    # the engine
    engine: str = "local"
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    workers: int | None = None
    batch_size: int | None = None
    max_pixels: int | None = None
    no_draft: bool = False
    decoder: str = "auto"
    # the scan state and the exit status
    rescan: bool = False
    no_state: bool = False
    fail_on: tuple[str, ...] = ()

    def walk_options(self) -> Any:
        from scanner.walk import WalkOptions

        return WalkOptions(recursive=self.recursive, hidden=self.hidden, all_files=self.all_files,
                           include=tuple(self.include), exclude=tuple(self.exclude))


def scan(flags: ScanFlags) -> int:
    """Run one scan; returns the exit status. The flags become an engine, a
    decision rule and a `ScanJob`, which does the rest."""
    import dataclasses

    from scanner.decode import DEFAULT_MAX_PIXELS, configure_pillow
    from scanner.engine import EngineOptions, default_workers, open_engine
    from scanner.job import JobOptions, Outputs, ScanError, ScanJob, scan_roots
    from scanner.records import Decision
    from scanner.walk import walk

    f = flags
    roots = scan_roots(f.paths, f.examples)
    outputs = Outputs.check(f.jsonl, f.view, f.out_dir, f.resume, f.quiet, html=f.html, html_thumbs=f.html_thumbs)
    if f.engine != "ray" and (f.ray_address or f.gpus_per_worker):
        raise ScanError("--ray-address and --gpus-per-worker need --engine ray")
    # The default, or its fallback where the default's backbone is missing.
    path = f.model_path if f.model_path is not None else _usable_default(outputs.note)
    eng = open_engine(f.engine, path, f.device, f.threads, outputs.note,
                      precision=None if f.precision == "auto" else f.precision,
                      address=f.ray_address, workers=f.workers, gpus_per_worker=f.gpus_per_worker)
    model = eng.open_model()
    decision = Decision.make(model.threshold, model.uncertain, f.threshold, f.band, not f.no_uncertain)
    gpu, cpu_why = _choose_decoder(model, f.decoder, f.engine)
    opinion = _open_vlm(f.vlm, f.vlm_adapter, f.trust_remote_code, f.device, f.engine, outputs.note)
    if opinion is not None:
        decision = dataclasses.replace(decision, second_threshold=opinion.threshold)
    job = ScanJob(model, decision, outputs, JobOptions(
        use_state=not f.no_state, rescan=f.rescan, fail_on=f.fail_on, roots=roots, max_pixels=f.max_pixels,
        second_opinion=opinion, gpu=gpu))
    workers = f.workers if f.workers is not None else default_workers(roots)
    opts = EngineOptions(workers=workers, batch_size=f.batch_size or (256 if gpu is not None else 32),
                         max_pixels=f.max_pixels or DEFAULT_MAX_PIXELS, draft=not f.no_draft, gpu=gpu)
    outputs.note(_decode_line(gpu, cpu_why, workers, opts.readers, f.engine))
    configure_pillow()
    return job.run(eng, walk(roots, f.walk_options()), opts, second_opinion=opinion)


def _choose_decoder(model: ScanModel, decoder: str, engine: str) -> tuple[Any, str | None]:
    """The GPU stage for --decoder (None: the CPU path) and why not, if worth saying.
    torch is imported only when the model already runs on CUDA."""
    from scanner.gpu import GpuPathError, choose

    try:
        return choose(model, decoder, engine)
    except GpuPathError as e:
        from scanner.job import ScanError

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
    from scanner.job import ScanError

    if vlm is None:
        if adapter is not None:
            raise ScanError("--vlm-adapter needs --vlm BASE: the base model folder the adapter was trained on")
        return None
    if engine != "local":
        raise ScanError("--vlm runs with --engine local only")
    from scanner.vlm import VLMOpinion

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
