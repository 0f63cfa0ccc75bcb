"""The import rules of ARCHITECTURE.md, checked on the source (no imports run):

- `mai/` (the core) and `scanner/` import no torch-side package at module level,
  and never the training package `mai_train/`, not even inside a function;
- only the modules that exist to run torch (the torch twin of the preprocessing
  spec, the torch device rule, the VLM, the GPU scan path) import it, lazily;
- the core imports neither wing; the training wing never imports the scanner,
  with one exception: `mai report` (in `mai_train/cli.py`) imports
  `scanner.report` inside its command function, since the report is a scanner
  output and `mai` is the command for work on records after a scan;
- `export/` (`mai export onnx`) imports the core and the training wing, never the
  scanner, and at module level no torch (its commands import it when they run);
  the core and the scanner never import it, and the training wing only in the
  `mai` command (`mai_train/cli.py`), which mounts its Click group.

`test_scan_cli.test_no_torch_on_the_scanning_path` checks the same at run time.

And the size rules: no function over 60 lines in `scanner/` and `export/`, none over
80 in `mai_train/`, and none with more than 8 parameters outside Click commands
(whose parameters are their flags).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_SIDE = {"torch", "torchvision", "transformers", "peft", "diffusers", "accelerate", "mai_train"}
#: The modules of the core and the scanner allowed to import torch (inside functions only).
LAZY_TORCH = {"mai/preprocess_torch.py", "mai/torch_host.py", "mai/vlm/__init__.py", "mai/vlm/load.py",
              "mai/vlm/images.py", "scanner/vlm.py", "scanner/gpu.py"}


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


def test_export_sits_between_the_core_and_the_training_wing() -> None:
    bad = [f"{f}:{line} imports {top}" for f, top, line, eager in _all_imports("export")
           if top == "scanner" or (eager and top in TORCH_SIDE - {"mai_train"})]
    bad += [f"{f}:{line} imports export" for f, top, line, _ in _all_imports("mai") + _all_imports("scanner")
            if top == "export"]
    bad += [f"{f}:{line} imports export" for f, top, line, _ in _all_imports("mai_train")
            if top == "export" and f != "mai_train/cli.py"]
    assert not bad, "\n".join(bad)
    # It is the package the `mai` command exports with.
    assert ("export", True) in {(top, eager) for f, top, _, eager in _all_imports("mai_train")
                                if f == "mai_train/cli.py"}


def test_the_rule_sees_what_it_checks() -> None:
    # The checker finds eager, lazy and TYPE_CHECKING imports for what they are.
    src = ("import torch\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import peft\n"
           "def f():\n    from mai_train import cli\nclass C:\n    import numpy\n")
    assert _imports(ast.parse(src)) == [("torch", 1, True), ("typing", 2, True), ("mai_train", 6, False),
                                        ("numpy", 8, True)]
    # And the lazy torch imports it allows are really there (the list is not stale).
    lazy = {f for f, top, _, eager in _all_imports("mai") + _all_imports("scanner") if top == "torch" and not eager}
    assert lazy <= LAZY_TORCH and {"mai/preprocess_torch.py", "scanner/gpu.py"} <= lazy


# -- size: small functions, short signatures (ast; a Click command's parameters are its flags) --

#: The longest a function may be, in lines from `def` to its last line, per package.
MAX_LINES = {"scanner": 60, "export": 60, "mai_train": 80}
MAX_PARAMS = 8
SIZED = ("mai", "scanner", "export", "mai_train")


def _functions(package: str) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    return [(str(f.relative_to(ROOT)), n) for f in _sources(package)
            for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f)))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _is_click_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(re.search(r"\.command\(|^command\(|click\.command", ast.unparse(d)) for d in fn.decorator_list)


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


@pytest.mark.parametrize("package", sorted(MAX_LINES))
def test_functions_are_short(package: str) -> None:
    limit = MAX_LINES[package]
    long = [f"{f}:{fn.lineno} {fn.name} is {fn.end_lineno - fn.lineno + 1} lines (at most {limit})"
            for f, fn in _functions(package) if fn.end_lineno - fn.lineno + 1 > limit]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("package", SIZED)
def test_no_flag_bags_outside_click_commands(package: str) -> None:
    wide = [f"{f}:{fn.lineno} {fn.name} takes {_params(fn)} parameters (at most {MAX_PARAMS}; group them)"
            for f, fn in _functions(package) if _params(fn) > MAX_PARAMS and not _is_click_command(fn)]
    assert not wide, "\n".join(wide)


def test_the_size_rules_see_what_they_check() -> None:
    src = ("@cli.command('x')\n@click.option('--a')\ndef cmd(a, b, c, d, e, f, g, h, i): pass\n"
           "class C:\n    def m(self, a, b, c, d, e, f, g, h, *, i=0, **kw): pass\n")
    fns = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)]
    assert [(fn.name, _params(fn), _is_click_command(fn)) for fn in fns] == [("cmd", 9, True), ("m", 10, False)]
