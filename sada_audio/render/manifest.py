"""Reading and validating a render manifest (JSONL or CSV): one clip per row, every problem with its line."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sada_audio.audio import utf8_problem
from sada_audio.choices import CLIP_FORMATS
from sada_audio.config import MAX_SEED
from sada_audio.errors import SADAError
from sada_audio.generation import ClipRequest, SamplingSettings

logger = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt", "seed", "duration", "steps", "guidance", "format")
FORMATS = CLIP_FORMATS
_MAX_NAME_LENGTH = 200
# the first problems an error names; the others are counted
_SHOWN_PROBLEMS = 10
# names Windows reserves for devices, with any extension ("nul.wav" too); superscript digits count as digits
_DEVICE_NAMES = {
    "con",
    "prn",
    "aux",
    "nul",
    "conin$",
    "conout$",
    *(f"{port}{digit}" for port in ("com", "lpt") for digit in "0123456789\u00b9\u00b2\u00b3"),
}
# characters that reorder how a name is displayed (a name could pretend to end in another extension)
_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class ManifestError(SADAError):
    """The manifest cannot be read, or has invalid rows."""


@dataclass(frozen=True)
class RenderDefaults:
    """The values a row takes for the fields it leaves out (the command line's options)."""

    seed: int = 0
    duration: float | None = None
    steps: int = 50
    guidance: float = 2.0
    format: str = "wav"
    negative_prompt: str | None = None


@dataclass(frozen=True)
class RenderRun:
    """What every clip of a run shares: the model and how it runs. Everything but the device decides the
    output, so it is part of each clip's ``render_request``."""

    model: str
    model_id: str
    scheduler: str | None
    accelerate: bool
    device: str
    dtype: str
    compile: str = "none"
    """How the denoiser is compiled: recorded in the sidecars, not part of a clip's request (the same audio,
    up to rounding)."""
    sada_config: dict[str, Any] | None = None
    """The resolved SADA config (``SADAConfig.to_dict``) when ``accelerate``; part of each clip's request, so
    that a changed preset, level or override renders the clip again. None with ``accelerate``: the preset of
    the pipeline's family (a run of the library that resolved nothing)."""
    sada_choice: dict[str, str] | None = None
    """What the command line asked for (``sada_level``, ``sada_overrides``): recorded in the sidecars only."""
    sampler: dict[str, Any] | None = None
    """The sampler as it runs: its class and :func:`~sada_audio.generation.scheduler_settings` (timestep spacing,
    sigmas, ...); part of each clip's request, so that a release that changes what a ``--scheduler`` name means
    renders its clips again. None: not known (a run of the library that resolved nothing)."""


@dataclass(frozen=True)
class RenderRow:
    """One valid manifest row with the defaults filled in."""

    line: int
    name: str
    clip: ClipRequest
    settings: SamplingSettings
    format: str

    @property
    def audio_name(self) -> str:
        return f"{self.name}.{self.format}"

    @property
    def sidecar_name(self) -> str:
        return f"{self.name}.json"

    def request(self, run: RenderRun) -> dict[str, Any]:
        """Everything that decides this clip's audio; a sidecar that records the same request is up to date."""
        return {
            "prompt": self.clip.prompt,
            "negative_prompt": self.clip.negative_prompt,
            "seed": self.clip.seed,
            "steps": self.settings.steps,
            "duration": self.settings.duration,
            "guidance": self.settings.guidance,
            "format": self.format,
            "model_id": run.model_id,
            "scheduler": run.scheduler,
            "sampler": run.sampler,
            "accelerate": "sada" if run.accelerate else "none",
            "sada_config": run.sada_config if run.accelerate else None,
            "dtype": run.dtype,
        }


@dataclass(frozen=True)
class RowProblem:
    """Why a manifest row cannot be rendered."""

    line: int
    message: str
    name: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Manifest:
    """A parsed manifest: its valid rows (in file order) and the problems of the others."""

    path: Path
    rows: list[RenderRow]
    problems: list[RowProblem]

    def check(self, skip_invalid: bool) -> None:
        """Raise a :class:`ManifestError` listing every problem, unless ``skip_invalid`` (then log them).

        Raises:
            ManifestError: a row is invalid and ``skip_invalid`` is false, or no row is valid.
        """
        if self.problems and not skip_invalid:
            count = len({problem.line for problem in self.problems})
            shown = self.problems[:_SHOWN_PROBLEMS]
            more = len(self.problems) - len(shown)
            raise ManifestError(
                f"{self.path} has {count} invalid row{'s' * (count != 1)}: "
                + "; ".join(map(str, shown))
                + (f"; and {more} more problem{'s' * (more != 1)}" if more else "")
                + " (fix them, or pass --skip-invalid to render the valid rows)"
            )
        for problem in self.problems:
            logger.warning("%s: skipping invalid row: %s", self.path, problem)
        if not self.rows:
            raise ManifestError(f"{self.path} has no valid rows to render")


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | None, str | None]]:
    """Yield ``(line, record, problem)`` for every row of a JSONL or CSV manifest."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ManifestError(f"unsupported manifest extension {suffix or '(none)'!r} in '{path}'; use .jsonl or .csv")
    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte order mark
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"cannot read the manifest '{path}': {error}") from error
    if suffix == ".jsonl":
        # split on newlines only: str.splitlines also breaks at U+2028 and friends, which JSON strings may hold
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg})"
                continue
            except _DuplicateKey as error:
                yield number, None, f"the field {error.args[0]!r} is given twice"
                continue
            yield (number, record, None) if isinstance(record, dict) else (number, None, "not a JSON object")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = list(reader.fieldnames or ())
    twice = sorted({column for column in columns if columns.count(column) > 1})
    if twice:
        raise ManifestError(
            f"'{path}' has the column{'s' * (len(twice) > 1)} {', '.join(map(repr, twice))} more than once; "
            "keep one of each"
        )
    unknown = [column for column in columns if column not in FIELDS]
    if unknown:
        yield (
            1,
            None,
            f"unknown column{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} (known: {', '.join(FIELDS)})",
        )
    # csv skips blank lines without a row: a record starts at the first non-blank line after the one before it
    lines = io.StringIO(text, newline="").readlines()

    def first_line_after(line: int) -> int:
        while line < len(lines) and not lines[line].strip("\r\n"):
            line += 1
        return line + 1

    start = first_line_after(reader.line_num)
    for record in reader:
        if None in record:
            yield start, None, "more cells than columns"
        else:
            yield start, {key: value for key, value in record.items() if key in FIELDS and value != ""}, None
        start = first_line_after(reader.line_num)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields; a field given twice is an error (JSON parsers otherwise keep the last silently)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _name_problem(name: Any) -> str | None:
    if name is None or name == "":
        return "missing name"
    if not isinstance(name, str):
        return f"name must be text, got {_json_type(name)} {name!r}"
    if (
        name in (".", "..")
        or name.startswith(".")
        or any(char in name for char in "/\\:")
        or any(ord(char) < 32 for char in name)
        or name != name.strip()
        or len(name.encode("utf-8", "replace")) > _MAX_NAME_LENGTH
    ):
        return (
            f"unsafe name {name!r}: a name is a file stem of at most {_MAX_NAME_LENGTH} bytes (UTF-8), without / \\ : "
            "or control characters, not starting with '.', without surrounding spaces"
        )
    stem = name.split(".")[0].rstrip(" ").casefold()
    if stem in _DEVICE_NAMES or name[-1] in ". " or any(char in _BIDI_CONTROLS for char in name):
        return (
            f"unportable name {name!r}: Windows device names (CON, NUL, COM1, ...), a trailing dot or space and "
            "bidirectional control characters are not allowed"
        )
    return None


def _number(
    record: Mapping[str, Any], key: str, default: Any, whole: bool, minimum: float, open_min: bool, text_cells: bool
) -> Any:
    """``record[key]`` as an int (``whole``) or float within range, ``default`` if absent; raises ValueError.
    ``text_cells``: the manifest is CSV, whose cells are all text; in JSON a number in quotes is an error."""
    value = record.get(key)
    if value is None:
        return default
    bound = f"> {minimum:g}" if open_min else f">= {minimum:g}"
    kind = "a whole number" if whole else "a number"
    if isinstance(value, str) and not text_cells:
        raise ValueError(f"{key} must be {kind} {bound}, got text {value!r} (write numbers without quotes)")
    number = _parse_number(value, whole)
    if number is None or not math.isfinite(number) or number < minimum or (open_min and number == minimum):
        given = "" if isinstance(value, str) else f"{_json_type(value)} "
        raise ValueError(f"{key} must be {kind} {bound}, got {given}{value!r}")
    if whole and number > MAX_SEED:
        raise ValueError(f"{key} must be at most {MAX_SEED}, got {value!r}")
    return number


def _parse_number(value: Any, whole: bool) -> int | float | None:
    """``value`` (a JSON number or a CSV cell) as an int or float; None if it is none. A float is no whole number
    (2.0 steps in a manifest is more likely a mix-up of columns than meant)."""
    if isinstance(value, bool):
        return None
    try:
        if whole:
            return value if isinstance(value, int) else int(value) if isinstance(value, str) else None
        return float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        return None


def _row(
    line: int, record: Mapping[str, Any], defaults: RenderDefaults, text_cells: bool
) -> tuple[RenderRow | None, list[str]]:
    problems = [f"unknown field {key!r} (known: {', '.join(FIELDS)})" for key in record if key not in FIELDS]
    name = record.get("name")
    name_problem = _name_problem(name)
    if name_problem:
        problems.append(name_problem)
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        problems.append(f"prompt must be text, got {_json_type(prompt)} {prompt!r}")
    elif prompt is None or not prompt.strip():
        problems.append("missing prompt")
    negative = record.get("negative_prompt", defaults.negative_prompt)
    if negative is not None and not isinstance(negative, str):
        problems.append(f"negative_prompt must be text, got {_json_type(negative)} {negative!r}")
    for field, text in (("name", name), ("prompt", prompt), ("negative_prompt", negative)):
        problem = utf8_problem(text) if isinstance(text, str) else None
        if problem is not None:
            problems.append(f"{field} {problem}")
    audio_format = record.get("format", defaults.format)
    if not isinstance(audio_format, str) or audio_format.lower().lstrip(".") not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}, got {audio_format!r}")
    numbers: dict[str, Any] = {}
    for key, default, whole, minimum, open_min in (
        ("seed", defaults.seed, True, 0, False),
        ("steps", defaults.steps, True, 1, False),
        ("duration", defaults.duration, False, 0, True),
        ("guidance", defaults.guidance, False, 0, False),
    ):
        try:
            numbers[key] = _number(record, key, default, whole, minimum, open_min, text_cells)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        return None, problems
    clip = ClipRequest(prompt=prompt, seed=numbers["seed"], negative_prompt=negative or None)
    settings = SamplingSettings(steps=numbers["steps"], duration=numbers["duration"], guidance=numbers["guidance"])
    return RenderRow(line, name, clip, settings, audio_format.lower().lstrip(".")), []


def read_manifest(path: str | os.PathLike[str], defaults: RenderDefaults = RenderDefaults()) -> Manifest:
    """Parse and validate a JSONL or CSV manifest; every problem is collected with its line number.

    Names are compared case-insensitively and after Unicode normalisation (``A`` and ``a``, or a composed and a
    decomposed ``é``, are the same file on some file systems): the first row of a name is kept, the later ones are
    problems.

    Raises:
        ManifestError: the file cannot be read or has an unsupported extension.
    """
    path = Path(path)
    rows: list[RenderRow] = []
    problems: list[RowProblem] = []
    first_line: dict[str, int] = {}
    for line, record, problem in _records(path):
        if record is None:
            problems.append(RowProblem(line, problem or "unreadable row"))
            continue
        row, messages = _row(line, record, defaults, text_cells=path.suffix.lower() == ".csv")
        name = record.get("name") if isinstance(record.get("name"), str) else None
        key = unicodedata.normalize("NFC", row.name).casefold() if row is not None else ""
        if row is not None and key in first_line:
            messages = [f"duplicate name {row.name!r} (first on line {first_line[key]})"]
            row = None
        problems.extend(RowProblem(line, message, name) for message in messages)
        if row is not None:
            first_line[key] = line
            rows.append(row)
    return Manifest(path, rows, problems)
