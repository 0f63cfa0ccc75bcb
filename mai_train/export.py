"""Checkpoint -> ONNX (fp32, fp16, int8), proven equal to torch before it is final.

The graph takes `image: uint8[N, H, W, 3]` at the model's input size and returns
`logit: float32[N]` and `prob: float32[N]`; casting, normalisation and the NHWC
-> NCHW transpose happen inside it. Its metadata carries the preprocessing spec,
threshold, uncertainty band, model id and the SHA-256 of the weights it came
from, so the scanner needs nothing but the .onnx file.

Every export is written under a temporary name, checked (onnx checker, a CPU
session, parity on random and real images, and for fp16 a CUDA session where a GPU
is usable), and renamed only when proven.

int8 is the fp32 graph with its large weights stored as int8 (`mai.graphs.
quantize_weights`): the compact form MAI ships a CNN in; the scanner expands it once
per machine into fp32 or fp16 (`mai.graphs.expand`).

A probe's file is its head, always fp32. Its fp16 part is the backbone's graph
(`mai.backbone.feature_graph(..., "fp16")`), which the scanner uses on CUDA: with
fp32 and fp16 asked for, the head is written and that graph built and proven, the
pair against the fp32 pair, through the scanner's own `open_model`.
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
PRECISIONS = ("fp32", "fp16", "int8")
# Max |prob difference| against torch (a probe's fp16: against its fp32 pair). int8
# weights moved the shipped CNN's scores by at most 2.0e-3 on 4,496 CIFAKE images.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-2}


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
    cuda: float | str | None = None  # fp16 on CUDA: max |dp| against the reference, why it did not run, or None

    def line(self) -> str:
        on_cuda = ""
        if self.precision == "fp16":
            on_cuda = ("; CUDA: no usable GPU here" if self.cuda is None
                       else f"; CUDA: {self.cuda}" if isinstance(self.cuda, str)
                       else f"; CUDA session ok, max |dp| {self.cuda:.1e}")
        return (f"{self.path.name}: checker ok, CPU session ok, parity vs {self.reference} max |dp| "
                f"{self.max_diff_random:.1e} on {self.n_random} random, {self.max_diff_real:.1e} on "
                f"{self.n_real} real images (limit {TOLERANCE[self.precision]:g}){on_cuda}")


def _cuda_usable() -> bool:
    import onnxruntime as ort

    from mai.session import gpu_providers

    return bool(gpu_providers(ort)[0])


def _on_cuda(path: Path, xs: list[np.ndarray], wants: list[np.ndarray],
             precision: str | None = None) -> float | str | None:
    """Max |prob difference| of the model at `path` run on CUDA against `wants`; None
    without a GPU, or why the CUDA provider did not start; ExportError past the tolerance."""
    if not _cuda_usable():
        return None
    from mai.session import SessionError, open_model

    try:
        model = open_model(path, device="cuda", precision=precision)
    except SessionError as e:  # a driver, but no working CUDA provider: the CPU proof stands
        return str(e)
    worst = max(float(np.max(np.abs(model.predict(x)[1] - w))) for x, w in zip(xs, wants, strict=True))
    if not worst <= TOLERANCE["fp16"]:
        raise ExportError(f"{path.name}: parity on CUDA failed: max |prob difference| {worst:.2e} "
                          f"> {TOLERANCE['fp16']:g}")
    return worst


def _export_probe(art: Artifact, precisions: tuple[str, ...], out_dir: Path, n_random: int,
                  seed: int) -> list[ExportResult]:
    """The head (fp32, against the numpy head) and, with fp16, the backbone's fp16
    graph, proven as the scanner runs it: the fp16 pair against the fp32 pair."""
    from mai.backbone import cache_path, get_backbone
    from mai.session import open_model
    from mai_train.train_probe import export_probe

    if "int8" in precisions:
        raise ExportError("a probe's head is a few kB of fp32 weights: int8 is for storing a CNN; use --precision fp32")
    if "fp32" not in precisions:
        raise ExportError("a probe's head exports as fp32 only; its fp16 part is its backbone's graph: "
                          "--precision all writes the head and builds and proves that graph")
    out_dir.mkdir(parents=True, exist_ok=True)
    worst = export_probe(art, out=out_dir)
    results = [ExportResult(out_dir / "model.fp32.onnx", "fp32", worst, 0.0, 64, 0, "the numpy head")]
    if "fp16" not in precisions:
        return results
    w, h = art.spec.input_size
    xs = [np.random.default_rng(seed).integers(0, 256, (n_random, h, w, 3), dtype=np.uint8), real_images(art)]
    fp32 = open_model(out_dir, device="cpu", precision="fp32")
    fp16 = open_model(out_dir, device="cpu", precision="fp16")
    wants = [fp32.predict(x)[1] for x in xs]
    d_random, d_real = (float(np.max(np.abs(fp16.predict(x)[1] - want))) for x, want in zip(xs, wants, strict=True))
    graph = cache_path(get_backbone(art.meta["backbone"]["name"]), "fp16")  # built by open_model above
    if not max(d_random, d_real) <= TOLERANCE["fp16"]:
        raise ExportError(f"{graph.name}: parity failed: max |prob difference| {max(d_random, d_real):.2e} "
                          f"> {TOLERANCE['fp16']:g} against the fp32 backbone")
    cuda = _on_cuda(out_dir, xs, wants, precision="fp16")
    results.append(ExportResult(graph, "fp16", d_random, d_real, len(xs[0]), len(xs[1]),
                                "the fp32 backbone, head fp32", cuda))
    return results


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
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}; use fp32, fp16, int8 or all")
    if art.meta["architecture"]["name"] == "probe":
        # A probe's ONNX file is its head (the backbone is found at run time); no torch involved.
        return _export_probe(art, precisions, Path(out) if out is not None else art.path, min(n_random, 4), seed)
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
        # fp16 is traced from a half-precision copy of the module: the uint8 input is
        # cast straight to float16, every weight and op runs in half precision, and
        # the graph casts the logit back to float32. int8 stores the fp32 graph's large
        # weights as int8, dequantized in the graph (and expanded by the scanner).
        m = _to_onnx(copy.deepcopy(model).half() if precision == "fp16" else model, art)
        if precision == "int8":
            from mai.graphs import quantize_weights

            m = quantize_weights(m)
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
            del sess
            cuda = _on_cuda(tmp, [x_random, x_real], [want_random, want_real]) if precision == "fp16" else None
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        results.append(ExportResult(final, precision, d_random, d_real, len(x_random), len(x_real), cuda=cuda))
    return results
