"""The proof every export passes before its file is final: written under a
temporary name, checked, compared with its reference, and only then renamed.

`ExportResult` is what a proven file reports; `real_images` are the bundled
example photos through the model's own preprocessing (the "real" half of every
parity check); `on_cuda` adds the CUDA run where a GPU is usable.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from mai.artifact import Artifact
from mai.errors import MaiError
from mai.preprocess import prepare

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


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`: renamed onto it when the block ends
    normally, removed whatever happens, so a file that failed its proof is never left."""
    tmp = final.with_name(f".{final.name}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def max_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)))


def check_parity(name: str, worst: float, limit: float, against: str = "") -> None:
    """ExportError unless `worst` (max |prob difference|) is within `limit` (NaN fails)."""
    if not worst <= limit:
        raise ExportError(f"{name}: parity failed: max |prob difference| {worst:.2e} > {limit:g}{against}")


def real_images(art: Artifact) -> np.ndarray:
    """The bundled example photos, preprocessed by the model's own spec."""
    from PIL import Image

    arrays = []
    for entry in sorted(resources.files("mai.examples").iterdir(), key=lambda e: e.name):
        if entry.name.lower().endswith((".png", ".jpg", ".jpeg")):
            with Image.open(io.BytesIO(entry.read_bytes())) as im:
                arrays.append(prepare(im, art.spec))
    return np.stack(arrays)


def cpu_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """prob(image batch) from the ONNX file at `path` on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.name != "image" or inp.type != "tensor(uint8)":
        raise ExportError(f"{path.name.removeprefix('.').removesuffix('.partial')}: input is {inp.name} "
                          f"{inp.type}, expected image uint8")
    return lambda x: sess.run(["prob"], {"image": x})[0]


def _cuda_usable() -> bool:
    import onnxruntime as ort

    from mai.session import gpu_providers

    return bool(gpu_providers(ort)[0])


def on_cuda(path: Path, xs: list[np.ndarray], wants: list[np.ndarray],
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
    worst = max(max_diff(model.predict(x)[1], w) for x, w in zip(xs, wants, strict=True))
    if not worst <= TOLERANCE["fp16"]:
        raise ExportError(f"{path.name}: parity on CUDA failed: max |prob difference| {worst:.2e} "
                          f"> {TOLERANCE['fp16']:g}")
    return worst
