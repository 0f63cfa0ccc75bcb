"""MAI's torch-free core: what a scan needs (preprocessing, provenance, the model
card reader, the ONNX Runtime session, backbones, VLM inference). The scanner
(`scanner/`) and the training spine (`mai_train/`) build on it; it imports
neither (ARCHITECTURE.md).

The public API, for scoring images from Python without the scanner::

    import mai
    from PIL import Image

    model = mai.open_model()                 # the default detector, or a name / folder / .onnx
    im = Image.open("photo.jpg")
    x = mai.prepare(im, model.spec)[None]    # uint8 (1, H, W, 3), the model's own preprocessing
    logit, prob = model.predict(x)           # prob: P(AI-generated)
    signals = mai.read_provenance(im, "photo.jpg")   # C2PA, generator chunks, EXIF/XMP software
    card = mai.load_artifact("mai-clip-wild-mlp")    # threshold, band, preprocessing (no weights)

Names load on first use, so `import mai` stays cheap (no ONNX Runtime, no torch)
for the many modules that import one submodule.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it: the one place each public name lives.
_PUBLIC = {
    "open_model": "mai.session",
    "OnnxModel": "mai.session",
    "prepare": "mai.preprocess",
    "PreprocessSpec": "mai.preprocess",
    "read_provenance": "mai.provenance",
    "load_artifact": "mai.artifact",
    "Artifact": "mai.artifact",
    "shipped_models": "mai.artifact",
    "default_model_dir": "mai.artifact",
    "MaiError": "mai.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'mai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
