"""Fixtures generated in code: no network, no ../shared, no downloaded weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def synthetic_image(label: int, seed: int, size: int = 32) -> Image.Image:
    """A 'real' image is smooth noise; a 'fake' one carries a periodic grid, the
    kind of upsampling trace detectors learn. Easy to separate on purpose."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 40, (size // 4, size // 4, 3))
    a = np.asarray(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                   dtype=np.float64)
    if label == 1:
        yy, xx = np.mgrid[0:size, 0:size]
        a = a + 40.0 * (((yy // 2) + (xx // 2)) % 2)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def make_folder(root: Path, n: int = 12, real: str = "real", fake: str = "fake", fmt: str = "PNG",
                prefix: str = "") -> Path:
    for label, name in ((0, real), (1, fake)):
        d = root / prefix / name if prefix else root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = "png" if fmt == "PNG" else "jpg"
            (d / f"{name}_{i:03d}.{ext}").write_bytes(encode(synthetic_image(label, i * 2 + label), fmt))
    return root


@pytest.fixture(autouse=True)
def _mai_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The app folder (scan state, caches) lives in a temporary folder in tests.
    monkeypatch.setenv("MAI_HOME", str(tmp_path_factory.mktemp("mai_home")))


def make_artifact(out: Path, seed: int = 0, threshold: float = 0.5, band: tuple[float, float] = (0.4, 0.6),
                  spec_dict: dict | None = None, name: str = "test-cnn") -> Path:
    """A freshly initialised MAI CNN saved as an artifact (needs torch)."""
    import torch

    from mai.artifact import save_artifact
    from mai.preprocess import CIFAKE_SPEC
    from mai.registry import create_model

    torch.manual_seed(seed)
    model = create_model("mai_cnn")
    meta = {
        "name": name, "architecture": {"name": "mai_cnn", "args": {}},
        "preprocess": spec_dict or CIFAKE_SPEC.to_dict(), "threshold": threshold, "uncertain": list(band),
        "calibration": {"threshold_rule": "fixed for tests"}, "metrics": {}, "data": {}, "train": {},
    }
    save_artifact(out, model, meta, name)
    return out


@pytest.fixture(scope="session")
def onnx_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MAI CNN artifact with its fp32 ONNX export beside it."""
    pytest.importorskip("torch", reason="exporting needs the train extra")
    pytest.importorskip("onnx", reason="exporting needs the train extra")
    from export.onnx_export import export_onnx

    out = make_artifact(tmp_path_factory.mktemp("model") / "test-cnn")
    export_onnx(out, ("fp32",))
    return out


@pytest.fixture
def model_args(onnx_model_dir: Path) -> list[str]:
    """mai-scan options for the random test model, on the CPU."""
    return ["--model", str(onnx_model_dir), "--device", "cpu", "--threads", "1"]

