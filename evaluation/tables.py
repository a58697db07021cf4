"""Markdown tables, the one output format of every report and benchmark script in ``evaluation/``, and the
number format of their cells (the HTML reports share it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["format_number", "markdown_table"]


def format_number(value: Any) -> str:
    """A table cell: floats to 4 significant digits (``inf``, ``nan`` as such), None as ``-``."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], cell: Callable[[Any], str] = str) -> list[str]:
    """The lines of a Markdown table: ``header``, a separator, one line per row with each value formatted by
    ``cell`` and made inert (:func:`_inert`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_inert(cell(value)) for value in row) + " |" for row in rows]
    return lines


# HTML's special characters as entities (a file name such as '<img src=x onerror=...>.wav' stays text when the
# Markdown is rendered), '|' escaped so that it cannot split a column, line breaks so that they cannot end a row
_INERT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\n": " ", "\r": " "})


def _inert(text: str) -> str:
    return text.translate(_INERT)
