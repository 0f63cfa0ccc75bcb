"""The model artifact: a folder with `model.safetensors` and `mai.json`.

Anything that loads a model reads only this. `mai.json` holds the architecture
and its arguments, the preprocessing spec, the decision threshold and the
uncertainty band with how they were chosen, validation metrics, the data
fingerprint and split rule, how it was trained, and library versions.

The models shipped with MAI are such folders inside the package
(`mai/pretrained/NAME`), found through `importlib.resources`; every `--model`
takes their name as well as a path (`model_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mai.errors import MaiError
from mai.preprocess import PreprocessSpec, SpecError

SCHEMA = "mai.model/1"
META_NAME = "mai.json"
WEIGHTS_NAME = "model.safetensors"


class ArtifactError(MaiError, ValueError):
    """A model folder that cannot be loaded; the message says why and what to do."""


@dataclass
class Artifact:
    path: Path
    meta: dict[str, Any]

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def uncertain(self) -> tuple[float, float]:
        lo, hi = self.meta.get("uncertain") or (self.threshold, self.threshold)
        return float(lo), float(hi)

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_NAME

    def onnx_path(self, precision: str = "fp32") -> Path:
        return self.path / f"model.{precision}.onnx"


#: The default: an MLP probe on frozen CLIP features (six blocks' class tokens),
#: trained on modern generators, the gathered wild set and CIFAKE, with processed copies. It
#: needs its backbone installed (`mai.backbone`); without it, mai-scan falls back to
#: FALLBACK_NAME, the MAI CNN trained on CIFAKE, and says so. The models before it
#: stay selectable by name (`--model mai-clip-modern`).
DEFAULT_NAME = "mai-clip-wild-mlp"
FALLBACK_NAME = "mai-cnn-cifake"
EARLIER_NAMES = ("mai-clip-wild", "mai-clip-modern")


def shipped_dir(name: str) -> Path:
    return Path(str(resources.files("mai") / "pretrained" / name))


def default_model_dir() -> Path:
    """The default model's artifact inside the package."""
    return shipped_dir(DEFAULT_NAME)


def shipped_models() -> dict[str, Path]:
    """The models inside the package, by name, the default first."""
    return {name: shipped_dir(name) for name in (DEFAULT_NAME, *EARLIER_NAMES, FALLBACK_NAME)}


def model_dir(path: str | os.PathLike[str] | None) -> Path:
    """What a `--model` value names: None is the default model, an existing path is
    itself, and a bare name that is no path is a model shipped in the package."""
    if path is None:
        return default_model_dir()
    p = Path(path)
    if p.exists() or os.sep in str(path) or (os.altsep and os.altsep in str(path)):
        return p
    shipped = shipped_models()
    if str(path) in shipped:
        return shipped[str(path)]
    raise ArtifactError(f"model not found: {path} is neither a path nor a model shipped with MAI "
                        f"({', '.join(shipped)})")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CardKind:
    """One kind of model folder: the schema its `mai.json` has, the keys it must
    hold, and how an error names it and says how to remake it."""

    schema: str
    required: tuple[str, ...]
    what: str
    remake: str
    error: type[MaiError]


MODEL_CARD = CardKind(SCHEMA, ("model_id", "architecture", "preprocess", "threshold"),
                      "a MAI model folder", "re-create it with `mai train`", ArtifactError)
#: The schema of each kind, and where a folder of that kind goes instead.
_KINDS = {SCHEMA: "a model: give it to --model", "mai.vlm/1": "a VLM adapter: give it to --vlm-adapter"}


def card_folder(path: str | os.PathLike[str]) -> Path:
    """The folder a path names: the folder itself, or the one its mai.json lies in."""
    p = Path(path)
    return p.parent if p.is_file() and p.name == META_NAME else p


def read_card(folder: Path, kind: CardKind, hint: str = "") -> dict[str, Any]:
    """The one reader of every model folder's `mai.json` (detectors and VLM
    adapters): parsed, of `kind`'s schema, with its required keys, or `kind.error`
    saying what is wrong and what to do. `hint` follows the "no mai.json" error."""
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        raise kind.error(f"{folder} is not {kind.what}: it has no {META_NAME}{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise kind.error(f"{meta_path} is not readable JSON: {e}") from e
    got = meta.get("schema") if isinstance(meta, dict) else None
    if got != kind.schema:
        elsewhere = f" (this is {_KINDS[got]})" if got in _KINDS else ""
        raise kind.error(f"{meta_path} has schema {got!r}; {kind.what} has {kind.schema!r}{elsewhere}")
    for key in kind.required:
        if key not in meta:
            raise kind.error(f"{meta_path} lacks {key!r}; {kind.remake}")
    return meta


def load_artifact(path: str | os.PathLike[str] | None = None) -> Artifact:
    """Read an artifact's metadata (no weights, no torch). None means the default;
    a bare name, a shipped model (`model_dir`)."""
    p = card_folder(model_dir(path))
    if not p.exists():
        raise ArtifactError(f"model not found: {p}")
    hint = " (an .onnx file goes to mai-scan --model)" if p.suffix == ".onnx" else ""
    art = Artifact(p, read_card(p, MODEL_CARD, hint))
    try:
        _ = art.spec  # parse it now, so a bad spec fails at load
    except SpecError as e:
        raise ArtifactError(f"{p / META_NAME}: {e}") from e
    return art


ONNX_SCHEMA = "mai.onnx/1"


def onnx_metadata(art: Artifact, precision: str) -> dict[str, str]:
    """What every ONNX file made from `art` carries, so the scanner needs nothing else."""
    meta = {
        "mai.schema": ONNX_SCHEMA,
        "mai.model_id": art.model_id,
        "mai.preprocess": art.spec.to_json(),
        "mai.threshold": repr(art.threshold),
        "mai.uncertain": json.dumps(list(art.uncertain)),
        "mai.checkpoint_sha256": art.meta.get("weights_sha256", ""),
        "mai.precision": precision,
        "mai.calibration": json.dumps(art.meta.get("calibration", {})),
    }
    if "backbone" in art.meta:  # a probe: which backbone, and which of its features the head reads
        feature = art.meta["architecture"]["args"]["feature"]
        meta["mai.backbone"] = json.dumps({**art.meta["backbone"], "feature": feature}, sort_keys=True)
    return meta
