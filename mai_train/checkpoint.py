"""Torch weights on disk: an artifact's weights (`save_artifact` after training,
`load_torch_model` for evaluation and export), and a training run's resumable
state, one file in its run folder (`state.pt`) for `mai train cnn` and `mai train
vlm` alike.

The state is written atomically (a kill mid-write leaves the previous checkpoint whole), and
read back only by the same run: the options that decide the batches and the
model must match the cut run's, or the error says which one differs.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mai.artifact import META_NAME, SCHEMA, WEIGHTS_NAME, Artifact, ArtifactError, sha256_file

STATE_NAME = "state.pt"


def save_state(obj: dict[str, Any], path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(out: Path, config: dict[str, Any], keys: Sequence[str], error: type[Exception]) -> dict[str, Any] | None:
    """The cut run's state in `out`, or None; raises `error` for a torn file or a
    run with other options (`config` is the new run's, under the state's "config")."""
    import torch

    path = out / STATE_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: say which, and the way out
        raise error(f"{path} is unreadable ({e}); delete it to start over") from e
    old = state.get("config", {}) if isinstance(state, dict) else {}
    for key in keys:
        if old.get(key) != config.get(key):
            raise error(f"{out} holds a cut run with {key}={old.get(key)!r}, not {config.get(key)!r}; run it "
                        f"with the same options to resume, or use another --out (or delete {STATE_NAME}) to "
                        "start over")
    return state


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("mai-detect", "torch", "numpy", "pillow", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save_artifact(out: Path, model: Any, meta: dict[str, Any], name: str) -> Artifact:
    """Write weights and metadata; the model id names the weights' hash."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_NAME + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_NAME)
    digest = sha256_file(out / WEIGHTS_NAME)
    meta = {"schema": SCHEMA, "model_id": f"{name}@{digest[:8]}", "weights_sha256": digest, **meta}
    meta.setdefault("versions", versions())
    tmpm = out / (META_NAME + ".tmp")
    tmpm.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmpm, out / META_NAME)
    return Artifact(out, meta)


def load_torch_model(art: Artifact) -> Any:
    """Build the architecture and load the weights (torch). Refuses weights that
    are corrupt, altered since `mai.json` was written, or of another shape."""
    from safetensors.torch import load_file

    from mai_train.registry import UnknownModelError, create_model

    arch = art.meta["architecture"]
    try:
        model = create_model(arch["name"], **arch.get("args", {}))
    except (UnknownModelError, TypeError) as e:
        raise ArtifactError(f"{art.path}: cannot build architecture: {e}") from e
    if not art.weights.is_file():
        from mai.artifact import shipped_models

        shipped = art.path.resolve() in {p.resolve() for p in shipped_models().values()}
        raise ArtifactError(f"{art.path} has no {WEIGHTS_NAME}" + (
            "; MAI ships this model as ONNX only: restore its torch weights with `git show "
            f"ffe2b7a:mai/pretrained/{art.path.name}/{WEIGHTS_NAME} > {WEIGHTS_NAME}` in that folder "
            "(a checkout of the repository), or retrain with the command in its mai.json" if shipped else ""))
    want = art.meta.get("weights_sha256")
    if want and sha256_file(art.weights) != want:
        raise ArtifactError(
            f"{art.weights} does not match the hash in {META_NAME}: the file is corrupt "
            "or was replaced; restore it or re-train"
        )
    try:
        state = load_file(str(art.weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"{art.weights} is not a readable safetensors file: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise ArtifactError(
            f"{art.weights} does not fit architecture {arch['name']!r}: {' '.join(first)}"
        ) from e
    model.eval()
    return model
