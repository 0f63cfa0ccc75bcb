"""`mai export`: plugged into the `mai` group through the `mai.commands` entry point."""

from __future__ import annotations

import click


@click.group("export")
def export_group() -> None:
    """Export a trained model for inference without torch."""


@export_group.command("onnx")
@click.option("--model", "model_path", default=None, help="Model folder (default: the embedded model).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "all"]),
              help="fp32 for CPUs; fp16 for GPUs (weights and arithmetic in half precision).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for model.<precision>.onnx (default: the model folder itself).")
def onnx_cmd(model_path: str | None, precision: str, out: str | None) -> None:
    """Export to ONNX and prove it: checker, CPU session, parity with torch on
    random and real images (fp32 within 1e-4, fp16 within 1e-2 in probability).
    A file that fails its proof is never left behind.

    \b
    Examples:
      mai export onnx                                  # the embedded model
      mai export onnx --model runs/cifake --precision all
    """
    from export.onnx_export import export_onnx

    precisions = ("fp32", "fp16") if precision == "all" else (precision,)
    for r in export_onnx(model_path, precisions, out):
        click.echo(f"wrote {r.path}")
        click.echo(r.line(), err=True)
