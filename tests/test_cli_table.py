"""broker/cli/table.py draws the CLI's tables as rich does, without importing rich:
the same characters for the same table at any width whenever rich keeps every word
whole (random tables, seeded), and the same visible text with styles on a terminal.
Where rich would fold a word, table.py never does: the columns keep their longest
word, or the rows print as records. Real CLI tables are checked at 80 and 200 columns.
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


def rich_keeps_words(drawn: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bool:
    """Whether rich gave every column at least its longest word (read off its top rule)."""
    top = next(line for line in drawn.splitlines() if line.startswith("┏"))
    inner = [len(part) - 2 for part in top[1:-1].split("┳")]
    cells = [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    return all(
        inner[i] >= max(table.longest_word(t) for t in (h, *(r[i] for r in cells)))
        for i, h in enumerate(columns)
    )


def assert_words_whole(text: str, rows: Sequence[Sequence[Any]]) -> None:
    lines = text.splitlines()
    for row in rows:
        for value in row:
            for word in str(value or "-").split():
                assert any(word in line for line in lines), (word, text)


@pytest.mark.parametrize("width", [12, 30, 60, 80, 120, 200])
def test_same_characters_as_rich_or_words_whole(width: int) -> None:
    rnd = random.Random(width)
    same = 0
    for _ in range(150):
        title, columns, rows = random_table(rnd)
        ours = table.render(title, columns, rows, width=width)
        theirs = with_rich(title, columns, rows, width)
        if rich_keeps_words(theirs, columns, rows):
            assert ours == theirs, (title, columns, rows)
            same += 1
        else:
            assert_words_whole(ours, rows)
    assert same >= (3 if width < 20 else 10)  # the comparison with rich is never vacuous


def test_wide_characters_and_wrapped_headings() -> None:
    rows = [("日本語のラベル", "naïve café"), ("x" * 10, "a b c d e f g h")]
    for width in (40, 80):
        theirs = with_rich("Titel", ["LONG HEADING HERE", "V"], rows, width)
        assert rich_keeps_words(theirs, ["LONG HEADING HERE", "V"], rows)
        assert table.render("Titel", ["LONG HEADING HERE", "V"], rows, width=width) == theirs


CONNECTORS = (
    ["NAME", "TYPE", "AUTH METHOD", "RESOURCE TYPES", "RESOURCE ID", "EXPIRES IN", "LABELS"],
    [
        (
            "kubernetes-cluster-prod",
            "kubernetes",
            "service-account",
            "kubernetes-cluster",
            "prod-eu-west-1",
            "-",
            "team=platform",
        ),
        (
            "my-registry",
            "docker",
            "password",
            "docker-registry",
            "my-registry.example.com:5000",
            "-",
            "",
        ),
        (
            "my-aws",
            "aws",
            "access-key",
            "aws-generic, s3-bucket, ecr-registry, eks-cluster",
            "<multiple>",
            "11h59m",
            "env=dev, team=ml",
        ),
    ],
)


@pytest.mark.parametrize("width", [80, 200])
def test_a_connector_list_keeps_identifiers_whole(width: int) -> None:
    """At 80 columns (and when piped: 80) and at 200, no identifier is broken; at 200 it
    is one table, a line per connector; at 80 rows that cannot fit are records."""
    columns, rows = CONNECTORS
    text = table.render(None, columns, rows, width=width)
    for row in rows:
        for value in row:
            for word in str(value or "-").replace(",", " ").split():
                assert any(word in line for line in text.splitlines()), (word, text)
    if width == 200:
        assert text.startswith("┏") and len(text.splitlines()) == 4 + len(rows)
        assert all(len(line) <= width for line in text.splitlines())
    else:
        assert "NAME:           kubernetes-cluster-prod" in text
        assert "RESOURCE ID:    my-registry.example.com:5000" in text
        assert "kubernetes-cl\n" not in text and "my-regist\n" not in text


def test_a_narrow_table_gives_room_to_the_column_with_the_long_word() -> None:
    """rich would fold the long ID at 50 columns; here the description column gives way."""
    rows = [("registry.example.com:5000", "a description that can wrap at any space")]
    text = table.render(None, ["ID", "DESCRIPTION"], rows, width=50)
    assert "│ registry.example.com:5000 │" in text
    assert all(len(line) <= 50 for line in text.splitlines())
    assert "registry.example.com:5000" not in with_rich(None, ["ID", "DESCRIPTION"], rows, 50)


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
