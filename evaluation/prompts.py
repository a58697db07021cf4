"""Prompt files (one prompt per line) for ``evaluate --generate`` and ``benchmark --prompts``: read without torch,
so that a bad file is an argument error answered at once."""

from __future__ import annotations

from pathlib import Path

from sada_audio.errors import SADAError

__all__ = ["read_prompts"]


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        SADAError: the file cannot be read, is not UTF-8, or holds no prompt.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SADAError(f"prompts file '{path}' is not UTF-8 text") from error
    except OSError as error:
        raise SADAError(f"cannot read the prompts file '{path}': {error.strerror or error}") from error
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SADAError(f"no prompts in '{path}': write one prompt per line")
    return prompts
