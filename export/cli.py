"""`mai export`: the Click group the `mai` command mounts (`mai_train.cli`):
`mai export onnx` (`export.onnx`) and `mai export int8` (`export.int8`).

Imports stay light (click) so `mai --help` is instant; the export itself (torch,
onnx) is imported when the command runs.
"""

from __future__ import annotations

import click


@click.group("export")
def export_group() -> None:
    """Export a trained model for inference without torch."""


@export_group.command("onnx")
@click.option("--model", "model_path", default=None, help="Model folder (default: the embedded model).")
@click.option("--precision", default="fp32", show_default=True,
              type=click.Choice(["fp32", "fp16", "int8", "all"]),
              help="fp32 for CPUs; fp16 for GPUs (weights and arithmetic in half precision); int8: int8 "
                   "weights, the compact form MAI ships a CNN in; all: fp32 and fp16.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for model.<precision>.onnx (default: the model folder itself).")
def onnx_cmd(model_path: str | None, precision: str, out: str | None) -> None:
    """Export to ONNX and prove it: checker, CPU session, parity with torch on
    random and real images (fp32 within 1e-4, fp16 and int8 within 1e-2 in
    probability); fp16 also runs on CUDA where a GPU is usable. A file that fails
    its proof is never left behind.

    A CNN: model.fp32.onnx, model.fp16.onnx, model.int8.onnx (mai-scan expands an
    int8 file once per machine into fp32 for the CPU or fp16 for CUDA).

    A probe: its file is the head, always fp32 (proven against the numpy head).
    Its fp16 part is its backbone's graph, which mai-scan uses on CUDA: `all`
    writes the head, builds that graph in $MAI_HOME/backbones/ and proves the pair
    against the fp32 pair on random and real images (within 1e-2).

    \b
    Examples:
      mai export onnx                                  # the embedded model (a probe)
      mai export onnx --precision all                  # + its backbone's fp16 graph, proven
      mai export onnx --model runs/cifake --precision all
    """
    from export.onnx import export_onnx

    precisions = ("fp32", "fp16") if precision == "all" else (precision,)
    for r in export_onnx(model_path, precisions, out):
        click.echo(f"wrote {r.path}")
        click.echo(r.line(), err=True)


@export_group.command("int8")
@click.option("--model", "model_path", default=None, help="Probe model folder (default: the embedded model).")
@click.option("--data", required=True, type=click.Path(exists=True), help="Training data (folder, tar, manifest).")
@click.option("--split", default="train", show_default=True, help="The split calibration images come from.")
@click.option("--images", default=256, show_default=True, type=click.IntRange(8), help="How many images.")
@click.option("--method", default="p99.99", show_default=True,
              help="Range of activations not smoothed: minmax, or a percentile pNN.NN.")
@click.option("--alpha", default=0.8, show_default=True, type=click.FloatRange(0, 1),
              help="SmoothQuant migration strength (0: no smoothing).")
@click.option("--keep-fp32", default="gelu", show_default=True, type=click.Choice(["gelu", "none"]),
              help="Products left in fp32 besides the last layer: gelu = the MLPs' second products (their "
                   "heavy-tailed GELU input moved 1.8% of validation verdicts in int8; fp32 keeps them within 1%).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads.")
def int8_cmd(model_path: str | None, data: str, split: str, images: int, method: str, alpha: float,
             keep_fp32: str, threads: int | None) -> None:
    """Calibrate the static int8 graph of a probe's backbone: ranges and SmoothQuant
    divisors from training images, written as int8.json in the model folder (about
    60 KB). mai-scan builds the int8 graph from it once per machine and runs it
    on CPUs with int8 dot-product instructions (`--precision` chooses).

    \b
    Example:
      mai export int8 --model mai/pretrained/mai-clip-wild-mlp --data modern-train.tar
    """
    from export.int8 import Int8Settings, calibrate_int8

    settings = Int8Settings(split=split, images=images, method=method, alpha=alpha,
                            keep_fp32=() if keep_fp32 == "none" else (keep_fp32,))
    out = calibrate_int8(model_path, data, settings, threads=threads, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out}")
