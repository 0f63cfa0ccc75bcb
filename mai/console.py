"""What `mai` and `mai-scan` share on the console: the stderr console (honouring
NO_COLOR) and `run_main`, which turns known errors into one line and an exit status."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mai.errors import MaiError


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


#: Optional packages -> the extra that installs them (pyproject.toml).
EXTRAS = {"torch": "train", "torchvision": "train", "onnxscript": "train", "safetensors": "probe",
          "transformers": "vlm", "peft": "vlm", "num2words": "vlm", "ray": "ray", "diffusers": "pair",
          "c2pa": "c2pa", "pillow_heif": "heif"}


def run_main(cli: click.Command, prog: str) -> None:
    """Run a Click command; a `MaiError` is one line on stderr and exit 2, and so is
    an optional package that is not installed (naming the extra that brings it)."""
    try:
        cli.main(prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MaiError as e:
        if os.environ.get("MAI_DEBUG"):
            raise
        click.echo(f"{prog}: error: {e}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS or os.environ.get("MAI_DEBUG"):
            raise
        click.echo(f"{prog}: error: this needs {top}, which is not installed: "
                   f"pip install 'mai-detect[{EXTRAS[top]}]'", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
