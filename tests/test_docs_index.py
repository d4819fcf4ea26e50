"""docs/: every command of the three command lines has a page, and every page is in the index (docs/README.md)."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from curate.cli import app as curate_app
from evalsuite.cli import app as evalsuite_app
from train.cli import app as train_app

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE_OF = {"evalsuite gate": "ci-gate.md", "curate workspace": "curate-workspace.md"}  # pages not named <tool>-<command>.md


def _commands(tool: str, app: typer.Typer) -> list[str]:
    group = typer.main.get_command(app)
    return [f"{tool} {name}" for name in group.commands]  # type: ignore[attr-defined]


def test_every_command_has_a_page_in_the_index():
    index = (DOCS / "README.md").read_text()
    commands = _commands("curate", curate_app) + _commands("train", train_app) + _commands("evalsuite", evalsuite_app)
    assert "curate run" in commands and "evalsuite gate" in commands
    for command in commands:
        page = PAGE_OF.get(command, command.replace(" ", "-") + ".md")
        assert (DOCS / page).is_file(), f"`{command}` has no page docs/{page}"
        assert f"]({page})" in index, f"docs/README.md does not link {page}"


def test_every_page_is_in_the_index():
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", (DOCS / "README.md").read_text()))
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= linked, f"pages missing from docs/README.md: {sorted(pages - linked)}"
