"""The import rules of ARCHITECTURE.md, checked on the source (no imports run):

- `mai/` (the core) and `scanner/` import no torch-side package at module level,
  and never the training package `mai_train/`, not even inside a function;
- only the modules that exist to run torch (the torch twin of the preprocessing
  spec, the torch device rule, the VLM, the GPU scan path) import it, lazily;
- the core imports neither wing; the training wing never imports the scanner,
  with one exception: `mai report` (in `mai_train/cli.py`) imports
  `scanner.report` inside its command function, since the report is a scanner
  output and `mai` is the command for work on records after a scan.

`test_scan_cli.test_no_torch_on_the_scanning_path` checks the same at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = {"torch", "torchvision", "transformers", "peft", "diffusers", "accelerate", "mai_train"}
#: The modules of the core and the scanner allowed to import torch (inside functions only).
LAZY_TORCH = {"mai/preprocess_torch.py", "mai/torch_host.py", "mai/vlm/__init__.py", "mai/vlm/load.py",
              "mai/vlm/images.py", "mai/vlm/scan.py", "scanner/gpu.py"}


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    return files


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level package, line, at module level) of every import in `tree`.
    Function bodies run later (lazy); `if TYPE_CHECKING:` blocks never run."""
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name.split(".")[0], child.lineno, not lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module.split(".")[0], child.lineno, not lazy))
            visit(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return out


def _all_imports(package: str) -> list[tuple[str, str, int, bool]]:
    return [(str(f.relative_to(ROOT)), top, line, eager)
            for f in _sources(package)
            for top, line, eager in _imports(ast.parse(f.read_text(encoding="utf-8"), str(f)))]


@pytest.mark.parametrize("package", ["mai", "scanner"])
def test_the_core_and_the_scanner_load_no_torch(package: str) -> None:
    bad = [f"{f}:{line} imports {top}" for f, top, line, eager in _all_imports(package)
           if top in TORCH_SIDE and (eager or top == "mai_train" or f not in LAZY_TORCH)]
    assert not bad, "\n".join(bad)


#: The training wing's only way into the scanner: `mai report`, lazily (the module, not a line number).
TRAINING_TO_SCANNER = {"mai_train/cli.py"}


def test_imports_flow_one_way() -> None:
    bad = [f"{f}:{line} imports {top}" for f, top, line, _ in _all_imports("mai") if top in {"scanner", "mai_train"}]
    bad += [f"{f}:{line} imports {top}" for f, top, line, eager in _all_imports("mai_train")
            if top == "scanner" and (eager or f not in TRAINING_TO_SCANNER)]
    assert not bad, "\n".join(bad)
    # The exception is used, lazily, and only for the report.
    cli = ast.parse((ROOT / "mai_train/cli.py").read_text(encoding="utf-8"))
    found = [n.module for n in ast.walk(cli)
             if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("scanner")]
    assert found == ["scanner.report"], found


def test_the_rule_sees_what_it_checks() -> None:
    # The checker finds eager, lazy and TYPE_CHECKING imports for what they are.
    src = ("import torch\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import peft\n"
           "def f():\n    from mai_train import cli\nclass C:\n    import numpy\n")
    assert _imports(ast.parse(src)) == [("torch", 1, True), ("typing", 2, True), ("mai_train", 6, False),
                                        ("numpy", 8, True)]
    # And the lazy torch imports it allows are really there (the list is not stale).
    lazy = {f for f, top, _, eager in _all_imports("mai") + _all_imports("scanner") if top == "torch" and not eager}
    assert lazy <= LAZY_TORCH and {"mai/preprocess_torch.py", "scanner/gpu.py"} <= lazy
