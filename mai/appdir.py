"""The app folder: where MAI keeps what it learns between runs (the scan state).

`$MAI_HOME` when set, else `~/.mai`. Created on first use, so a user never has
to set anything up; tests point MAI_HOME at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from mai.errors import MaiError


def app_dir() -> Path:
    """The app folder, created if missing. Raises MaiError when it cannot be."""
    env = os.environ.get("MAI_HOME")
    p = Path(env).expanduser() if env else Path.home() / ".mai"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaiError(f"cannot create the MAI app folder {p}: {e.strerror or e}; "
                       "set MAI_HOME to a writable folder") from e
    return p
