"""The curated public API in `mai/__init__.py`: each name is the one its module
defines, `import mai` loads neither ONNX Runtime nor torch, and the docstring's
recipe (open a model, prepare an image, predict, read provenance, read a card)
runs as written on the tiny test model."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

import mai


def test_every_public_name_is_its_modules_own() -> None:
    import importlib

    assert mai.__all__ == sorted(mai._PUBLIC)
    for name, module in mai._PUBLIC.items():
        assert getattr(mai, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'open_modle'"):
        _ = mai.open_modle


def test_import_mai_is_cheap() -> None:
    code = ("import sys, mai; heavy = [m for m in ('onnxruntime', 'torch', 'onnx') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_the_docstring_recipe(tmp_path: Path, onnx_model_dir: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    Image.new("RGB", (320, 240), (200, 40, 90)).save(tmp_path / "photo.png", pnginfo=info)

    model = mai.open_model(onnx_model_dir, device="cpu")
    im = Image.open(tmp_path / "photo.png")
    x = mai.prepare(im, model.spec)[None]
    logit, prob = model.predict(x)
    assert x.dtype.name == "uint8" and prob.shape == (1,) and 0.0 <= float(prob[0]) <= 1.0
    signals = mai.read_provenance(im, tmp_path / "photo.png")
    assert [s["signal"] for s in signals] == ["png:parameters"]
    card = mai.load_artifact("mai-cnn-cifake")  # a shipped model's card, read without its weights
    assert card.model_id.startswith("mai-cnn-cifake@") and 0.0 < card.threshold < 1.0
    assert "mai-cnn-cifake" in mai.shipped_models()
