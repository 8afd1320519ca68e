"""Tables drawn as rich draws the CLI's tables, without importing rich.

rich costs more to import than all the rest of ``broker connector list``, so the
fast path (:mod:`broker.cli.fast`) draws its tables here: the same heavy-head box,
one space of padding, the title centred above, and the same way of fitting the
console's width (the widest columns give way first, then all alike; cells wrap at
spaces). ``tests/test_cli_table.py`` compares the output with rich's for many tables
and widths. Header and title are bold and italic on a terminal, as rich's are; cell
text is printed as given (rich would read ``[...]`` in a value as markup).

Unlike rich, a word (a connector name, a registry host, an ARN) is never folded: no
column gets narrower than its longest word, and a table that cannot fit that way is
printed as records instead, one ``HEADING: value`` line per cell, so an identifier
copied from the output is always whole, at 80 columns and when piped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

#: The heavy-head box: top, header row, header separator, rows, bottom.
TOP = ("┏", "━", "┳", "┓")
HEAD = ("┃", "┃", "┃")
HEAD_RULE = ("┡", "━", "╇", "┩")
ROW = ("│", "│", "│")
BOTTOM = ("└", "─", "┴", "┘")
PADDING = 1


def cell_len(text: str) -> int:
    """Terminal cells ``text`` takes: 2 for East Asian wide characters, 0 for combining."""
    if text.isascii():
        return len(text)
    from unicodedata import combining, east_asian_width

    return sum(0 if combining(ch) else 2 if east_asian_width(ch) in "WF" else 1 for ch in text)


def _chop(word: str, width: int) -> list[str]:
    """``word`` in pieces of at most ``width`` cells."""
    pieces: list[str] = []
    piece, used = "", 0
    for ch in word:
        size = cell_len(ch)
        if piece and used + size > width:
            pieces.append(piece)
            piece, used = "", 0
        piece += ch
        used += size
    pieces.append(piece)
    return pieces


def _words(line: str) -> list[tuple[int, str]]:
    """``(start, word)`` with the word's surrounding spaces, as rich splits a line."""
    out: list[tuple[int, str]] = []
    index, end = 0, len(line)
    while index < end:
        start = index
        while index < end and line[index].isspace():
            index += 1
        while index < end and not line[index].isspace():
            index += 1
        while index < end and line[index].isspace():
            index += 1
        out.append((start, line[start:index]))
    return out


def wrap(text: str, width: int) -> list[str]:
    """``text`` wrapped at spaces to ``width`` cells; words longer than that are folded."""
    out: list[str] = []
    for line in text.split("\n"):
        breaks: list[int] = []
        offset = 0
        for start, word in _words(line):
            length = cell_len(word.rstrip())
            if width - offset >= length:
                offset += cell_len(word)
            elif length > width:
                pieces = _chop(word, width)
                for index, piece in enumerate(pieces):
                    if start:
                        breaks.append(start)
                    if index == len(pieces) - 1:
                        offset = cell_len(piece)
                    else:
                        start += len(piece)
            else:
                breaks.append(start)
                offset = cell_len(word)
        bounds = [0, *breaks, len(line)]
        out.extend(line[a:b].rstrip() for a, b in pairwise(bounds))
    return out


def _reduce(total: int, ratios: list[int], maximums: list[int], values: list[int]) -> list[int]:
    """Take ``total`` from ``values`` in proportion to ``ratios``, at most ``maximums`` each."""
    ratios = [ratio if most else 0 for ratio, most in zip(ratios, maximums, strict=True)]
    total_ratio = sum(ratios)
    if not total_ratio:
        return values[:]
    remaining = total
    out = []
    for ratio, most, value in zip(ratios, maximums, values, strict=True):
        if ratio and total_ratio > 0:
            taken = min(most, round(ratio * remaining / total_ratio))
            out.append(value - taken)
            remaining -= taken
            total_ratio -= ratio
        else:
            out.append(value)
    return out


def fit(widths: list[int], max_width: int) -> list[int]:
    """Column widths (padding included) narrowed to ``max_width`` in all: the widest give
    way down to the next widest, in turn; if that is not enough, every column alike."""
    excess = sum(widths) - max_width
    while excess > 0:
        widest = max(widths)
        second = max((w for w in widths if w != widest), default=0)
        if widest == second or not widest:
            break
        ratios = [1 if w == widest else 0 for w in widths]
        widths = _reduce(excess, ratios, [min(excess, widest - second)] * len(widths), widths)
        excess = sum(widths) - max_width
    if excess > 0:
        widths = _reduce(excess, [1] * len(widths), widths, widths)
    return widths


def _terminal() -> bool:
    """Whether styles apply, as rich decides: stdout is a terminal (or FORCE_COLOR is set)."""
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


def _dumb() -> bool:
    return os.environ.get("TERM", "").lower() in ("dumb", "unknown")


def console_width() -> int:
    """COLUMNS, else the size of whichever standard stream is a terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns):
        return int(columns)
    if _terminal() and _dumb():
        return 80
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd).columns
        except OSError:
            continue
        return size or 80
    return 80


def longest_word(text: str) -> int:
    """Cells of the longest whitespace-free run in ``text``: what must stay on one line."""
    return max((cell_len(word) for word in text.split()), default=0)


def _keep_words(widths: list[int], least: list[int]) -> list[int] | None:
    """``widths`` with each column at least ``least`` wide, the difference taken from the
    columns with room to spare (most first); None when the sum cannot allow it."""
    if sum(least) > sum(widths):
        return None
    out = [max(w, m) for w, m in zip(widths, least, strict=True)]
    excess = sum(out) - sum(widths)
    while excess > 0:
        spare = max(range(len(out)), key=lambda i: out[i] - least[i])
        out[spare] -= 1
        excess -= 1
    return out


def _fill(text: str, width: int) -> list[str]:
    """``text`` wrapped at spaces to ``width`` cells; a longer word gets a line of its own,
    whole."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            if line and cell_len(line) + 1 + cell_len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return out


def records(
    title: str | None, columns: Sequence[str], cells: list[list[str]], width: int = 80
) -> str:
    """Rows as records, ``HEADING: value`` a line (values wrapped at spaces to ``width``),
    a blank line between rows: the layout for a table too wide for the console without
    breaking a word."""
    name_width = max((cell_len(c) for c in columns), default=0) + 1
    room = max(20, width - name_width - 1)
    out: list[str] = [title, ""] if title else []
    for index, row in enumerate(cells):
        if index:
            out.append("")
        for heading, value in zip(columns, row, strict=True):
            label = f"{heading}:".ljust(name_width)
            first, *more = _fill(value, room)
            out.append(f"{label} {first}".rstrip())
            out.extend(" " * (name_width + 1) + line for line in more)
    return "\n".join(out) + "\n"


def render(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int | None = None,
    styled: bool = False,
) -> str:
    """The table as text: ``None`` and ``""`` cells shown as ``-``, as render.print_table;
    as :func:`records` when it cannot fit without breaking a word."""
    cells = [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    width = width or console_width()
    max_width = width - (len(columns) + 1)
    pad = 2 * PADDING
    least = [
        max(longest_word(text) for text in (header, *(row[i] for row in cells))) + pad
        for i, header in enumerate(columns)
    ]
    if sum(least) > max_width:
        return records(title, columns, cells, width)
    natural = [
        max(
            cell_len(line)
            for text in (header, *(row[i] for row in cells))
            for line in text.split("\n")
        )
        + pad
        for i, header in enumerate(columns)
    ]
    natural = [min(n, max(1, max_width)) for n in natural]  # as rich measures: clamped first
    widths = natural
    if sum(natural) > max_width:
        widths = [min(n, w) for n, w in zip(natural, fit(natural, max_width), strict=True)]
        kept = _keep_words(widths, least)
        if kept is None:
            return records(title, columns, cells, width)
        widths = kept
    inner = [max(0, w - pad) for w in widths]
    table_width = sum(widths) + len(columns) + 1
    bold, italic, reset = ("\x1b[1m", "\x1b[3m", "\x1b[0m") if styled else ("", "", "")

    def rule(box: tuple[str, str, str, str]) -> str:
        left, line, cross, right = box
        return left + cross.join(line * w for w in widths) + right

    def lines(
        values: Sequence[str], box: tuple[str, str, str], style: str, bottom: bool = False
    ) -> list[str]:
        """One row; ``bottom``: cells aligned to its bottom (rich's headers are)."""
        wrapped = [wrap(text, w) if w else [""] for text, w in zip(values, inner, strict=True)]
        height = max(len(w) for w in wrapped)
        if bottom:
            wrapped = [[""] * (height - len(w)) + w for w in wrapped]
        edge, middle, end = box
        out = []
        for index in range(height):
            parts = []
            for chunk, w, full in zip(wrapped, inner, widths, strict=True):
                if not w:  # narrower than its padding: blank, as wide as it was given
                    parts.append(" " * full)
                    continue
                text = chunk[index] if index < len(chunk) else ""
                shown = f"{style}{text}{reset}" if style and text else text
                parts.append(" " * PADDING + shown + " " * (w - cell_len(text) + PADDING))
            out.append(edge + middle.join(parts) + end)
        return out

    out: list[str] = []
    if title:
        for line in wrap(title, table_width):
            left = (table_width - cell_len(line)) // 2
            right = table_width - left - cell_len(line)
            out.append(" " * left + f"{italic}{line}{reset}" + " " * right)
    out.append(rule(TOP))
    out.extend(lines(list(columns), HEAD, bold, bottom=True))
    out.append(rule(HEAD_RULE))
    for row in cells:
        out.extend(lines(row, ROW, ""))
    out.append(rule(BOTTOM))
    return "\n".join(out) + "\n"


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    sys.stdout.write(render(title, columns, rows, styled=_terminal() and not _dumb()))
