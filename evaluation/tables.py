"""Markdown tables, the one output format of every report and benchmark script in ``evaluation/``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], cell: Callable[[Any], str] = str) -> list[str]:
    """The lines of a Markdown table: ``header``, a separator, one line per row with each value formatted by
    ``cell`` (``|`` in a value is escaped, so it cannot split a column)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value).replace("|", "\\|") for value in row) + " |" for row in rows]
    return lines
