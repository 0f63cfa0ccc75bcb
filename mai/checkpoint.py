"""A training run's resumable state: one file in its run folder (`state.pt`), for
`mai train cnn` and `mai train vlm` alike.

Written atomically (a kill mid-write leaves the previous checkpoint whole), and
read back only by the same run: the options that decide the batches and the
model must match the cut run's, or the error says which one differs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
