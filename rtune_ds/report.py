"""Markdown tables, as the reports of sweep, recycle-all and the demo print them."""
from __future__ import annotations

from typing import Iterable


def markdown_table(header: list[str], rows: Iterable[Iterable]) -> list[str]:
    """The table's lines: the header, the rule under it, then one line per row."""
    return [_line(header), "|" + "---|" * len(header), *(_line(row) for row in rows)]


def _line(cells: Iterable) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
