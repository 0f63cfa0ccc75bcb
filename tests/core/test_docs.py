"""The docs cannot drift: generated tables match the code, links resolve, the
README stays short and its quick start is what CI runs, model cards ship."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "docs" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_sections_match_the_code() -> None:
    pytest.importorskip("tomllib", reason="the extras table reads pyproject.toml with tomllib (3.11+)")
    gen = _gen()
    assert not gen.drift(), "run python docs/gen_docs.py"
    want = {"README.md": {"exit-status", "extras"}, "docs/scanning.md": {"record-fields"},
            "docs/cli.md": {"cli-mai-scan", "cli-mai"}}
    for rel, names in want.items():
        assert set(gen.sections_in((ROOT / rel).read_text(encoding="utf-8"))) >= names, rel


def test_record_fields_are_described_in_order() -> None:
    from scanner.records import FIELD_MEANINGS, FIELDS

    assert tuple(FIELD_MEANINGS) == FIELDS


def test_readme_is_short_and_its_quick_start_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    ci = re.sub(r"\s+-q\b", "", (ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    blocks = re.findall(r"```sh\n(python3 -m venv .*?)\n```", readme)
    assert len(blocks) == 2, blocks  # the install-and-scan command and the test command
    for block in blocks:
        for step in [s.strip() for s in block.split("&&")][2:]:  # after the venv and its activation
            assert re.sub(r"\s+-q\b", "", step) in ci, f"{step!r} is not in .ci/run"


def _links(path: Path) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)#\s]+)", path.read_text(encoding="utf-8")) if "://" not in t]


@pytest.mark.parametrize("rel", ["README.md", "docs/scanning.md", "docs/training.md", "docs/ray.md", "docs/vlm.md",
                                 "docs/cli.md", "docs/layout.md"])
def test_links_resolve(rel: str) -> None:
    page = ROOT / rel
    missing = [t for t in _links(page) if not (page.parent / t).exists()]
    assert not missing, missing


def test_every_shipped_model_ships_its_card() -> None:
    from mai.artifact import shipped_models

    for name, path in shipped_models().items():
        card = Path(path) / "README.md"
        assert card.is_file(), name
        assert not [t for t in _links(card) if not (card.parent / t).exists()], name
    assert '"*/README.md"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
