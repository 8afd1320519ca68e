"""broker/cli/table.py draws the CLI's tables as rich does, without importing rich:
the same characters for the same table at any width (random tables, seeded), and
the same visible text with styles on a terminal.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from broker.cli import table

HEADINGS = ["NAME", "TYPE", "AUTH METHOD", "RESOURCE TYPES", "RESOURCE ID", "PROPERTY", "VALUE"]
TITLES = [None, None, "Daemon", "Credential for docker-registry 'registry00.bench:5000'"]
#: No "[" (rich reads markup) and no ":" (":name:" is an emoji code to rich).
ALPHABET = "abcdefghij-_./=0123456789"


def with_rich(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int,
    terminal: bool = False,
) -> str:
    """What broker.cli.render.print_table prints (a rich Table, columns folding)."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
    )
    drawn = Table(title=title, show_lines=False)
    for column in columns:
        drawn.add_column(column, overflow="fold")
    for row in rows:
        drawn.add_row(*["-" if v is None or v == "" else str(v) for v in row])
    console.print(drawn)
    return out.getvalue()


def random_table(rnd: random.Random) -> tuple[str | None, list[str], list[list[Any]]]:
    def word() -> str:
        return "".join(rnd.choice(ALPHABET) for _ in range(rnd.choice([1, 2, 3, 5, 8, 12, 20, 35])))

    def cell() -> str | None:
        roll = rnd.random()
        if roll < 0.1:
            return ""
        if roll < 0.2:
            return None
        separator = rnd.choice([" ", " ", ", ", "\n", "  "])
        return separator.join(word() for _ in range(rnd.choice([1, 1, 1, 2, 3, 6])))

    columns = [rnd.choice([*HEADINGS, word()]) for _ in range(rnd.randint(1, 8))]
    rows = [[cell() for _ in columns] for _ in range(rnd.randint(0, 5))]
    return rnd.choice(TITLES), columns, rows


@pytest.mark.parametrize("width", [12, 30, 60, 80, 120, 200])
def test_same_characters_as_rich(width: int) -> None:
    rnd = random.Random(width)
    for _ in range(150):
        title, columns, rows = random_table(rnd)
        assert table.render(title, columns, rows, width=width) == with_rich(
            title, columns, rows, width
        ), (title, columns, rows)


def test_wide_characters_and_wrapped_headings() -> None:
    rows = [("日本語のラベル", "naïve café"), ("x" * 50, "a b c d e f g h")]
    for width in (20, 40, 80):
        assert table.render("Titel", ["LONG HEADING HERE", "V"], rows, width=width) == with_rich(
            "Titel", ["LONG HEADING HERE", "V"], rows, width
        )


def test_styles_on_a_terminal_leave_the_same_text() -> None:
    rows = [("health", "SERVING"), ("connectors", 3), ("degraded", "")]
    styled = table.render("Daemon", ["PROPERTY", "VALUE"], rows, width=80, styled=True)
    assert "\x1b[1mPROPERTY\x1b[0m" in styled and "\x1b[3mDaemon\x1b[0m" in styled
    plain = re.compile(r"\x1b\[[0-9;]*m")
    rich = with_rich("Daemon", ["PROPERTY", "VALUE"], rows, 80, terminal=True)
    assert plain.sub("", styled) == plain.sub("", rich)


def test_width_from_columns_then_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "57")
    assert table.console_width() == 57
    monkeypatch.setenv("COLUMNS", "0")
    monkeypatch.setattr(table.os, "get_terminal_size", lambda fd: (_ for _ in ()).throw(OSError))
    assert table.console_width() == 80
