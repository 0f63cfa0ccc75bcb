"""Checkpoint -> ONNX (fp32, fp16, int8), proven equal to torch before it is final.

The graph takes `image: uint8[N, H, W, 3]` at the model's input size (the spec's
`input_size`: 200x200 for the MAI CNN) and returns
`logit: float32[N]` and `prob: float32[N]`; casting, normalisation and the NHWC
-> NCHW transpose happen inside it. Its metadata carries the preprocessing spec,
threshold, uncertainty band, model id and the SHA-256 of the weights it came
from, so the scanner needs nothing but the .onnx file.

Every export is written under a temporary name, checked (onnx checker, a CPU
session, parity on random and real images, and for fp16 a CUDA session where a GPU
is usable), and renamed only when proven (`export.proof`).

int8 is the fp32 graph with its large weights stored as int8 (`mai.graphs.
quantize_weights`): the compact form MAI ships a CNN in; the scanner expands it once
per machine into fp32 or fp16 (`mai.graphs.expand`).

A probe's export is `export.probe`'s.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.probe import export_probe
from export.proof import (
    PRECISIONS,
    TOLERANCE,
    ExportError,
    ExportResult,
    cpu_session,
    max_diff,
    on_cuda,
    real_images,
    staged,
)
from mai.artifact import Artifact, load_artifact, onnx_metadata
from mai_train.checkpoint import load_torch_model

__all__ = ["OPSET", "PRECISIONS", "TOLERANCE", "ExportError", "ExportResult", "export_onnx", "real_images"]

OPSET = 20


class _Graph:
    """Wraps a MAI module so the exported graph returns (logit, prob)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logit = self.m(image).float()
                return logit, torch.sigmoid(logit)

        return Graph(model)


def _torch_probs(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(x))).numpy()


def _to_onnx(model: Any, art: Artifact) -> Any:
    import onnx
    import torch

    w, h = art.spec.input_size
    dummy = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            _Graph(model), (dummy,), buf, dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["logit", "prob"],
            dynamic_axes={"image": {0: "N"}, "logit": {0: "N"}, "prob": {0: "N"}},
        )
    return onnx.load_from_string(buf.getvalue())


@dataclass
class _Reference:
    """The inputs every precision is proven on, and torch's probabilities for them."""

    x_random: np.ndarray
    x_real: np.ndarray
    want_random: np.ndarray
    want_real: np.ndarray

    @classmethod
    def of(cls, model: Any, art: Artifact, n_random: int, seed: int) -> _Reference:
        w, h = art.spec.input_size
        x_random = np.random.default_rng(seed).integers(0, 256, (n_random, h, w, 3), dtype=np.uint8)
        x_real = real_images(art)
        return cls(x_random, x_real, _torch_probs(model, x_random), _torch_probs(model, x_real))


def _graph_for(model: Any, art: Artifact, precision: str) -> Any:
    """fp16 is traced from a half-precision copy of the module: the uint8 input is
    cast straight to float16, every weight and op runs in half precision, and the
    graph casts the logit back to float32. int8 stores the fp32 graph's large
    weights as int8, dequantized in the graph (and expanded by the scanner)."""
    import onnx

    m = _to_onnx(copy.deepcopy(model).half() if precision == "fp16" else model, art)
    if precision == "int8":
        from mai.graphs import quantize_weights

        m = quantize_weights(m)
    onnx.helper.set_model_props(m, onnx_metadata(art, precision))
    return m


def _write_proven(m: Any, final: Path, precision: str, ref: _Reference) -> ExportResult:
    """Write, check, prove parity with torch (and on CUDA for fp16), then rename."""
    import onnx

    with staged(final) as tmp:
        onnx.save(m, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # noqa: BLE001 - the checker raises several types
            raise ExportError(f"{final.name}: the ONNX checker refused it: {e}") from e
        prob = cpu_session(tmp)
        got_random = prob(ref.x_random)
        d_random = max_diff(got_random, ref.want_random)
        d_real = max_diff(prob(ref.x_real), ref.want_real)
        del prob  # the CPU session, before the CUDA one
        if got_random.dtype != np.float32 or not max(d_random, d_real) <= TOLERANCE[precision]:
            raise ExportError(
                f"{final.name}: parity failed: max |prob difference| {max(d_random, d_real):.2e} "
                f"> {TOLERANCE[precision]:g} (or output not float32: {got_random.dtype})"
            )
        cuda = (on_cuda(tmp, [ref.x_random, ref.x_real], [ref.want_random, ref.want_real])
                if precision == "fp16" else None)
    return ExportResult(final, precision, d_random, d_real, len(ref.x_random), len(ref.x_real), cuda=cuda)


def _export_cnn(art: Artifact, precisions: tuple[str, ...], out_dir: Path, n_random: int,
                seed: int) -> list[ExportResult]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ExportError(f"export needs torch and onnx: pip install 'mai-detect[train]' ({e})") from None
    model = load_torch_model(art)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = _Reference.of(model, art, n_random, seed)
    return [_write_proven(_graph_for(model, art, p), out_dir / f"model.{p}.onnx", p, ref) for p in precisions]


def export_onnx(model_path: str | os.PathLike[str] | None = None, precisions: tuple[str, ...] = ("fp32",),
                out: str | os.PathLike[str] | None = None, n_random: int = 16, seed: int = 0) -> list[ExportResult]:
    """Export and prove; returns one result per precision. Raises ExportError."""
    art = load_artifact(model_path)
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}; use fp32, fp16, int8 or all")
    out_dir = Path(out) if out is not None else art.path
    if art.meta["architecture"]["name"] == "probe":
        # A probe's ONNX file is its head (the backbone is found at run time); no torch involved.
        return export_probe(art, precisions, out_dir, min(n_random, 4), seed)
    return _export_cnn(art, precisions, out_dir, n_random, seed)
