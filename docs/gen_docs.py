"""Generate the docs' tables that restate code, so they cannot drift.

A generated section in a Markdown file sits between two markers:

    <!-- generated:NAME (python docs/gen_docs.py; do not edit by hand) -->
    ...
    <!-- end generated:NAME -->

`python docs/gen_docs.py` rewrites every section from the code; `--check` changes
nothing and exits 1 naming the sections that differ (the test suite runs the
check: `tests/core/test_docs.py`). Sections:

- `exit-status`: `mai-scan`'s exit statuses (`scanner.exits`, which `--help` uses too);
- `record-fields`: the `mai.scan/1` record's fields (`scanner.records.FIELD_MEANINGS`);
- `extras`: the install extras and what they add (`pyproject.toml`);
- `cli-mai-scan`, `cli-mai`: every command's options, from the Click commands.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The files that may hold generated sections.
FILES = ("README.md", "docs/scanning.md", "docs/training.md", "docs/cli.md")
SECTION = re.compile(r"(<!-- generated:(?P<name>[a-z-]+) [^>]*-->\n)(?P<body>.*?)(<!-- end generated:(?P=name) -->)",
                     re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def exit_status() -> str:
    from scanner.exits import markdown_table

    return markdown_table()


def record_fields() -> str:
    from scanner.records import FIELD_MEANINGS

    rows = ["| field | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in FIELD_MEANINGS.items()]
    return "\n".join(rows) + "\n"


def extras() -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    rows = ["| extra | adds |", "|---|---|"]
    for name, reqs in project["optional-dependencies"].items():
        names = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] + ("[" + r.split("[")[1].split("]")[0] + "]"
                 if "[" in r.split(";")[0] else "") for r in reqs]
        rows.append(f"| `{name}` | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(rows) + "\n"


def _options_table(cmd: object) -> list[str]:
    import click

    assert isinstance(cmd, click.Command)
    rows = ["| option | default | what |", "|---|---|---|"]
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        if p.metavar:
            flags += f" {_cell(p.metavar)}"
        plain = isinstance(p.default, str | int | float) and not (p.is_flag and p.default is False)
        default = f"`{p.default}`" if plain else ""
        if isinstance(p.type, click.Choice):
            flags += " " + "\\|".join(p.type.choices)
        rows.append(f"| {flags} | {default} | {_cell(p.help or '')} |")
    return rows


def _commands(group: object, prefix: str) -> list[tuple[str, object]]:
    import click

    out: list[tuple[str, object]] = []
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            out += _commands(group.commands[name], f"{prefix} {name}")
    else:
        out.append((prefix, group))
    return out


def cli_section(command: str) -> Callable[[], str]:
    def make() -> str:
        if command == "mai-scan":
            from scanner.cli import cli
        else:
            from mai_train.cli import cli
        parts = []
        for name, cmd in _commands(cli, command):
            first = (getattr(cmd, "help", None) or "").strip().split("\n\n")[0].replace("\n", " ")
            parts.append("\n".join([f"### `{name}`", "", first, "", *_options_table(cmd), ""]))
        return "\n".join(parts)

    return make


SECTIONS: dict[str, Callable[[], str]] = {
    "exit-status": exit_status,
    "record-fields": record_fields,
    "extras": extras,
    "cli-mai-scan": cli_section("mai-scan"),
    "cli-mai": cli_section("mai"),
}


def render(text: str) -> str:
    """`text` with every generated section rewritten from the code."""
    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in SECTIONS:
            raise KeyError(f"unknown generated section {name!r}")
        return m.group(1) + SECTIONS[name]() + m.group(4)

    return SECTION.sub(one, text)


def sections_in(text: str) -> list[str]:
    return [m.group("name") for m in SECTION.finditer(text)]


def drift() -> list[str]:
    """The `file: section` pairs whose text differs from what the code gives."""
    out = []
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text(encoding="utf-8")
        want = render(text)
        if want != text:
            got = dict((m.group("name"), m.group("body")) for m in SECTION.finditer(text))
            new = dict((m.group("name"), m.group("body")) for m in SECTION.finditer(want))
            out += [f"{rel}: {name}" for name in got if got[name] != new[name]]
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = drift()
        for line in bad:
            print(f"out of date: {line} (run python docs/gen_docs.py)", file=sys.stderr)
        return 1 if bad else 0
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text(encoding="utf-8")
        if (new := render(text)) != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {rel}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
