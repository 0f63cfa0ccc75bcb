"""Checkpoint -> ONNX (fp32, fp16), proven equal to torch before it is final.

The graph takes `image: uint8[N, H, W, 3]` at the model's input size and returns
`logit: float32[N]` and `prob: float32[N]`; casting, normalisation and the NHWC
-> NCHW transpose happen inside it. Its metadata carries the preprocessing spec,
threshold, uncertainty band, model id and the SHA-256 of the weights it came
from, so the scanner needs nothing but the .onnx file.

Every export is written under a temporary name, checked (onnx checker, a CPU
session, parity on random and real images), and renamed only when proven.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mai.artifact import Artifact, load_artifact, onnx_metadata
from mai.errors import MaiError
from mai.preprocess import prepare
from mai_train.checkpoint import load_torch_model

OPSET = 20
PRECISIONS = ("fp32", "fp16")
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # max |prob difference| against torch


class ExportError(MaiError):
    """An export that failed its proof; nothing final was written."""


@dataclass
class ExportResult:
    path: Path
    precision: str
    max_diff_random: float
    max_diff_real: float
    n_random: int
    n_real: int
    reference: str = "torch"

    def line(self) -> str:
        return (f"{self.path.name}: checker ok, CPU session ok, parity vs {self.reference} max |dp| "
                f"{self.max_diff_random:.1e} on {self.n_random} random, {self.max_diff_real:.1e} on "
                f"{self.n_real} real images (limit {TOLERANCE[self.precision]:g})")


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


def real_images(art: Artifact) -> np.ndarray:
    """The bundled example photos, preprocessed by the model's own spec."""
    from PIL import Image

    arrays = []
    for entry in sorted(resources.files("mai.examples").iterdir(), key=lambda e: e.name):
        if entry.name.lower().endswith((".png", ".jpg", ".jpeg")):
            with Image.open(io.BytesIO(entry.read_bytes())) as im:
                arrays.append(prepare(im, art.spec))
    return np.stack(arrays)


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


def export_onnx(model_path: str | os.PathLike[str] | None = None, precisions: tuple[str, ...] = ("fp32",),
                out: str | os.PathLike[str] | None = None, n_random: int = 16, seed: int = 0) -> list[ExportResult]:
    """Export and prove; returns one result per precision. Raises ExportError."""
    art = load_artifact(model_path)
    if art.meta["architecture"]["name"] == "probe":
        # A probe's ONNX file is its head (the backbone is found at run time): fp32 only,
        # proven against the numpy head, no torch involved.
        from mai_train.train_probe import export_probe

        if precisions != ("fp32",):
            raise ExportError("a probe's head exports as fp32 only (its backbone runs in fp32 too); "
                              "use --precision fp32")
        out_dir = Path(out) if out is not None else art.path
        out_dir.mkdir(parents=True, exist_ok=True)
        worst = export_probe(art, out=out_dir)
        return [ExportResult(out_dir / "model.fp32.onnx", "fp32", worst, 0.0, 64, 0, "the numpy head")]
    try:
        import onnx
        import onnxruntime as ort
        import torch  # noqa: F401
    except ImportError as e:
        raise ExportError(f"export needs torch and onnx: pip install 'mai-detect[train]' ({e})") from None

    model = load_torch_model(art)
    out_dir = Path(out) if out is not None else art.path
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = art.spec.input_size
    rng = np.random.default_rng(seed)
    x_random = rng.integers(0, 256, (n_random, h, w, 3), dtype=np.uint8)
    x_real = real_images(art)
    want_random = _torch_probs(model, x_random)
    want_real = _torch_probs(model, x_real)
    results = []
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}; use fp32, fp16 or all")
        # fp16 is traced from a half-precision copy of the module: the uint8 input is
        # cast straight to float16, every weight and op runs in half precision, and
        # the graph casts the logit back to float32. (Converting an fp32 graph with
        # onnxconverter-common leaves its Cast nodes inconsistent for the checker.)
        m = _to_onnx(copy.deepcopy(model).half() if precision == "fp16" else model, art)
        onnx.helper.set_model_props(m, onnx_metadata(art, precision))
        final = out_dir / f"model.{precision}.onnx"
        tmp = out_dir / f".{final.name}.partial"
        try:
            onnx.save(m, str(tmp))
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as e:  # noqa: BLE001 - the checker raises several types
                raise ExportError(f"{final.name}: the ONNX checker refused it: {e}") from e
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(tmp), sess_options=opts, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            if inp.name != "image" or inp.type != "tensor(uint8)":
                raise ExportError(f"{final.name}: input is {inp.name} {inp.type}, expected image uint8")
            got_random = sess.run(["prob"], {"image": x_random})[0]
            got_real = sess.run(["prob"], {"image": x_real})[0]
            d_random = float(np.max(np.abs(got_random - want_random)))
            d_real = float(np.max(np.abs(got_real - want_real)))
            if got_random.dtype != np.float32 or not max(d_random, d_real) <= TOLERANCE[precision]:
                raise ExportError(
                    f"{final.name}: parity failed: max |prob difference| {max(d_random, d_real):.2e} "
                    f"> {TOLERANCE[precision]:g} (or output not float32: {got_random.dtype})"
                )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        results.append(ExportResult(final, precision, d_random, d_real, len(x_random), len(x_real)))
    return results
