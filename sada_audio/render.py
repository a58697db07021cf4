"""Rendering a manifest of clips into a folder: validation, resume, batching, sharding and the index.

A manifest (JSONL or CSV) has one clip per row: ``name`` (the output file stem), ``prompt``, and optionally
``negative_prompt``, ``seed``, ``duration``, ``steps``, ``guidance`` and ``format`` (``wav`` / ``flac``); a field
a row leaves out takes its value from :class:`RenderDefaults` (the command line).

The output folder holds, per clip, ``NAME.wav`` (or ``.flac``) and the JSON sidecar ``NAME.json`` (what
``sada-audio generate`` writes, plus the ``render_request`` it was rendered for), both written atomically,
audio first; and ``index.jsonl``, one line per manifest row with its status. A clip counts as done when its
audio and sidecar exist and the sidecar's ``render_request`` equals the row's: a re-run skips it, a changed row
is rendered again. A process killed at any moment leaves at most hidden temporary files (removed by the next
run) and an audio file whose sidecar still describes the old request (rendered again).

Several processes (``accelerate launch``) split the rows by a rule that depends only on the manifest, so the
shares are disjoint however far an earlier run got. Each process appends its results to its own
``index.rank{N}.jsonl``, fsynced line by line; once all are done, the main process merges them into
``index.jsonl`` and removes them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from accelerate import PartialState

from sada_audio.audio import _write_atomically, write_audio, write_json
from sada_audio.errors import SADAError
from sada_audio.generation import (
    ClipRequest,
    GeneratedBatch,
    PromptEmbeddingCache,
    SamplingSettings,
    clip_metadata,
    generate_batch,
    run_metadata,
)
from sada_audio.pipelines import parse_device

logger = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt", "seed", "duration", "steps", "guidance", "format")
FORMATS = ("wav", "flac")
INDEX_NAME = "index.jsonl"
_MAX_NAME_LENGTH = 200
_MAX_SEED = 2**63 - 1
# Statuses in the index. "skipped": complete from an earlier run; "missing": its process stopped before reporting it.
RENDERED, SKIPPED, FAILED, INVALID, MISSING = "rendered", "skipped", "failed", "invalid", "missing"


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
            "accelerate": "sada" if run.accelerate else "none",
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
            raise ManifestError(
                f"{self.path} has {count} invalid row{'s' * (count != 1)}: "
                + "; ".join(map(str, self.problems))
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
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg})"
                continue
            yield (number, record, None) if isinstance(record, dict) else (number, None, "not a JSON object")
        return
    reader = csv.DictReader(text.splitlines(keepends=True))
    unknown = [column for column in reader.fieldnames or () if column not in FIELDS]
    if unknown:
        yield (
            1,
            None,
            f"unknown column{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} (known: {', '.join(FIELDS)})",
        )
    start = reader.line_num + 1
    for record in reader:
        if None in record:
            yield start, None, "more cells than columns"
        else:
            yield start, {key: value for key, value in record.items() if key in FIELDS and value != ""}, None
        start = reader.line_num + 1


def _name_problem(name: Any) -> str | None:
    if name is None or name == "":
        return "missing name"
    if not isinstance(name, str):
        return f"name must be text, got {name!r}"
    if (
        name in (".", "..")
        or name.startswith(".")
        or any(char in name for char in "/\\:")
        or any(ord(char) < 32 for char in name)
        or name != name.strip()
        or len(name) > _MAX_NAME_LENGTH
    ):
        return (
            f"unsafe name {name!r}: a name is a file stem of at most {_MAX_NAME_LENGTH} characters, without / \\ : "
            "or control characters, not starting with '.', without surrounding spaces"
        )
    return None


def _number(record: Mapping[str, Any], key: str, default: Any, whole: bool, minimum: float, open_min: bool) -> Any:
    """``record[key]`` as an int (``whole``) or float within range, ``default`` if absent; raises ValueError."""
    value = record.get(key)
    if value is None:
        return default
    bound = f"> {minimum:g}" if open_min else f">= {minimum:g}"
    kind = "a whole number" if whole else "a number"
    number = _parse_number(value, whole)
    if number is None or not math.isfinite(number) or number < minimum or (open_min and number == minimum):
        raise ValueError(f"{key} must be {kind} {bound}, got {value!r}")
    if whole and number > _MAX_SEED:
        raise ValueError(f"{key} must be at most {_MAX_SEED}, got {value!r}")
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


def _row(line: int, record: Mapping[str, Any], defaults: RenderDefaults) -> tuple[RenderRow | None, list[str]]:
    problems = [f"unknown field {key!r} (known: {', '.join(FIELDS)})" for key in record if key not in FIELDS]
    name = record.get("name")
    name_problem = _name_problem(name)
    if name_problem:
        problems.append(name_problem)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("missing prompt")
    negative = record.get("negative_prompt", defaults.negative_prompt)
    if negative is not None and not isinstance(negative, str):
        problems.append("negative_prompt must be text")
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
            numbers[key] = _number(record, key, default, whole, minimum, open_min)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        return None, problems
    clip = ClipRequest(prompt=prompt, seed=numbers["seed"], negative_prompt=negative or None)
    settings = SamplingSettings(steps=numbers["steps"], duration=numbers["duration"], guidance=numbers["guidance"])
    return RenderRow(line, name, clip, settings, audio_format.lower().lstrip(".")), []


def read_manifest(path: str | os.PathLike[str], defaults: RenderDefaults = RenderDefaults()) -> Manifest:
    """Parse and validate a JSONL or CSV manifest; every problem is collected with its line number.

    Names are compared case-insensitively (``A`` and ``a`` are the same file on some file systems): the first
    row of a name is kept, the later ones are problems.

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
        row, messages = _row(line, record, defaults)
        name = record.get("name") if isinstance(record.get("name"), str) else None
        if row is not None and row.name.casefold() in first_line:
            messages = [f"duplicate name {row.name!r} (first on line {first_line[row.name.casefold()]})"]
            row = None
        problems.extend(RowProblem(line, message, name) for message in messages)
        if row is not None:
            first_line[row.name.casefold()] = line
            rows.append(row)
    return Manifest(path, rows, problems)


def shape_groups(rows: Sequence[RenderRow]) -> list[list[RenderRow]]:
    """Rows grouped by the settings that fix a call's shape (steps, duration, guidance), in order of first use."""
    groups: dict[SamplingSettings, list[RenderRow]] = {}
    for row in rows:
        groups.setdefault(row.settings, []).append(row)
    return list(groups.values())


def shard(rows: Sequence[RenderRow], rank: int, world: int) -> list[RenderRow]:
    """Process ``rank``'s share of ``rows`` out of ``world`` processes: every ``world``-th row after grouping by
    shape, so each process gets about as many rows of each shape. Depends on the rows only (not on what earlier
    runs finished), so concurrent processes always agree on disjoint shares."""
    ordered = [row for group in shape_groups(rows) for row in group]
    return ordered[rank::world]


def plan_batches(rows: Sequence[RenderRow], batch_size: int) -> list[list[RenderRow]]:
    """Calls of at most ``batch_size`` rows of equal shape settings, in the order of the rows."""
    if batch_size < 1:
        raise SADAError(f"the batch size must be at least 1, got {batch_size}")
    return [group[i : i + batch_size] for group in shape_groups(rows) for i in range(0, len(group), batch_size)]


def read_sidecar(out_dir: Path, row: RenderRow) -> dict[str, Any] | None:
    """The clip's sidecar if it is readable JSON, else None."""
    try:
        meta = json.loads((out_dir / row.sidecar_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def completed_sidecar(out_dir: Path, row: RenderRow, run: RenderRun) -> dict[str, Any] | None:
    """The sidecar of ``row`` if the clip is complete for this request (sidecar up to date, audio file of the
    recorded length), else None."""
    meta = read_sidecar(out_dir, row)
    if meta is None or meta.get("render_request") != row.request(run) or meta.get("files") != [row.audio_name]:
        return None
    try:
        info = sf.info(str(out_dir / row.audio_name))
    except (OSError, RuntimeError):  # soundfile raises LibsndfileError (a RuntimeError) on unreadable files
        return None
    expected = round(meta.get("duration_s", -1) * meta.get("sample_rate", 0))
    return meta if info.frames == expected and info.samplerate == meta.get("sample_rate") else None


def remove_temporary_files(out_dir: Path, rows: Sequence[RenderRow]) -> int:
    """Delete the temporary files an interrupted write left for ``rows`` (hidden ``.NAME.EXT.*.tmp``, see
    :func:`sada_audio.audio.write_audio`); return how many. Only this process's rows: a peer may be writing its own."""
    removed = 0
    for row in rows:
        for target in (row.audio_name, row.sidecar_name, *(f"{row.name}.{fmt}" for fmt in FORMATS)):
            for tmp in out_dir.glob(f".{_glob_escape(target)}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


def index_entry(
    row: RenderRow, status: str, meta: Mapping[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    """One line of ``index.jsonl``: the row, its status, and from its sidecar the timings and SADA statistics.

    ``nfe_speedup`` is the estimate of the speedup over the unaccelerated pipeline: steps / model calls (SADA's
    NFE ratio inverted; 1.0 without SADA). It counts denoiser calls only, so it overstates the wall-clock
    speedup when text encoding, VAE and vocoder weigh in, and ignores the gain of pruned steps.
    """
    entry: dict[str, Any] = {"name": row.name, "line": row.line, "status": status, "prompt": row.clip.prompt}
    entry.update(seed=row.clip.seed, steps=row.settings.steps, files=[row.audio_name] if meta else [], error=error)
    if meta is not None:
        stats = meta.get("sada_stats") or {}
        calls = stats.get("model_calls", row.settings.steps)
        batch_size = meta.get("batch_size", 1)
        entry.update(
            wall_time_s=meta.get("wall_time_s"),
            batch_size=batch_size,
            clip_time_s=meta["wall_time_s"] / batch_size if meta.get("wall_time_s") is not None else None,
            nfe=calls,
            nfe_speedup=round(row.settings.steps / calls, 4) if calls else None,
            steps_skipped=len(stats.get("skipped_steps", [])),
            steps_pruned=len(stats.get("pruned_steps", [])),
            pruned_fraction=stats.get("pruned_fraction", 0.0),
            rank=meta.get("rank"),
        )
    return entry


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@dataclass
class RenderPlan:
    """What one process does: its share of the rows, the ones already done, the calls to make."""

    share: list[RenderRow]
    done: dict[str, dict[str, Any]]  # name -> sidecar of the clips complete before this run
    batches: list[list[RenderRow]]

    @property
    def pending(self) -> int:
        return sum(map(len, self.batches))


def plan_render(
    rows: Sequence[RenderRow], run: RenderRun, out_dir: Path, batch_size: int, rank: int = 0, world: int = 1
) -> RenderPlan:
    """Take this process's share, find the clips already complete and batch the others."""
    share = shard(rows, rank, world)
    done = {row.name: meta for row in share if (meta := completed_sidecar(out_dir, row, run)) is not None}
    return RenderPlan(share, done, plan_batches([row for row in share if row.name not in done], batch_size))


@dataclass
class RenderProgress:
    """This process's progress, handed to the callback after each clip."""

    last: dict[str, Any] = field(default_factory=dict)  # the index entry of the latest clip
    rendered: int = 0
    failed: int = 0
    nfe_speedups: list[float] = field(default_factory=list)

    @property
    def mean_nfe_speedup(self) -> float | None:
        return sum(self.nfe_speedups) / len(self.nfe_speedups) if self.nfe_speedups else None


GenerateFn = Callable[[Any, Sequence[ClipRequest], SamplingSettings], GeneratedBatch]


class IndexPart:
    """This process's results, one JSON line each, appended and fsynced (a kill loses at most the last line)."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.path = out_dir / f"index.rank{rank}.jsonl"
        # a fresh part per run: the index lists this run's results, and the sidecars carry the older ones
        self._file = self.path.open("w", encoding="utf-8")

    def append(self, entry: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _write_clip(
    out_dir: Path, row: RenderRow, batch: GeneratedBatch, index: int, run: RenderRun, run_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write the clip's audio, then its sidecar (both atomic); remove the audio of an older format."""
    previous = read_sidecar(out_dir, row)
    write_audio(out_dir / row.audio_name, batch.waveforms[index, 0], batch.sample_rate)
    meta = clip_metadata(row.clip, row.settings, batch, [row.audio_name])
    meta.update(run_meta, name=row.name, manifest_line=row.line, render_request=row.request(run))
    write_json(out_dir / row.sidecar_name, meta)
    stale = {f"{row.name}.{fmt}" for fmt in FORMATS} - {row.audio_name}
    for name in (previous or {}).get("files", []):
        if name in stale:  # only the files this row's own earlier sidecar listed
            (out_dir / name).unlink(missing_ok=True)
    return meta


def render_batches(
    pipe: Any,
    plan: RenderPlan,
    run: RenderRun,
    out_dir: Path,
    run_meta: Mapping[str, Any],
    part: IndexPart,
    *,
    generate: GenerateFn,
    on_clip: Callable[[RenderProgress], None] | None = None,
) -> RenderProgress:
    """Render the plan's batches; every clip's result goes to ``part`` and to ``on_clip`` as it is known.

    A call that fails is retried clip by clip (so an out-of-memory batch still renders what fits, and one bad
    clip fails alone); a clip that cannot be written (non-finite output) fails alone. Failures are recorded,
    never raised: only interruptions (KeyboardInterrupt, SystemExit) stop the run.

    Args:
        generate: makes one call, ``generate(pipe, clips, settings)`` (for example
            :func:`sada_audio.generation.generate_batch` with the run's acceleration and prompt cache).
        run_meta: added to every sidecar (:func:`sada_audio.generation.run_metadata` and the like).
    """
    progress = RenderProgress()

    def record(entry: dict[str, Any]) -> None:
        part.append(entry)
        progress.last = entry
        if entry["status"] == RENDERED:
            progress.rendered += 1
            progress.nfe_speedups.append(entry["nfe_speedup"])
        else:
            progress.failed += 1
        if on_clip is not None:
            on_clip(progress)

    queue = list(plan.batches)
    while queue:
        rows = queue.pop(0)
        started = time.perf_counter()
        try:
            batch = generate(pipe, [row.clip for row in rows], rows[0].settings)
        except Exception as error:
            logger.debug("the call for %s failed", [row.name for row in rows], exc_info=True)
            if len(rows) > 1:
                logger.warning("a batch of %d clips failed (%s); rendering them one by one", len(rows), error)
                queue[:0] = [[row] for row in rows]
            else:
                logger.warning("%s failed: %s", rows[0].name, _error_text(error))
                record(index_entry(rows[0], FAILED, error=_error_text(error)))
            continue
        logger.debug("rendered %d clips in %.2f s", len(rows), time.perf_counter() - started)
        for index, row in enumerate(rows):
            try:
                meta = _write_clip(out_dir, row, batch, index, run, run_meta)
            except (SADAError, OSError) as error:
                logger.warning("%s failed: %s", row.name, _error_text(error))
                record(index_entry(row, FAILED, error=_error_text(error)))
            else:
                record(index_entry(row, RENDERED, meta))
    return progress


@dataclass
class RenderSummary:
    """The merged index's counts (on the main process: all processes; elsewhere: this process's share)."""

    counts: dict[str, int]
    index_path: Path | None

    @property
    def all_succeeded(self) -> bool:
        return all(self.counts.get(status, 0) == 0 for status in (FAILED, INVALID, MISSING))


def _read_part(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            logger.warning("ignoring a truncated line in %s", path)


def merge_index(out_dir: Path, manifest: Manifest, run: RenderRun, world: int = 1) -> RenderSummary:
    """Write ``index.jsonl``: every manifest row in manifest order, from this run's parts (rendered, failed),
    the sidecars (complete before: skipped), the validation (invalid); then remove the parts."""
    parts = [out_dir / f"index.rank{rank}.jsonl" for rank in range(world)]
    reported = {entry["name"]: entry for path in parts for entry in _read_part(path)}
    entries = []
    for row in manifest.rows:
        entry = reported.get(row.name)
        if entry is None:
            meta = completed_sidecar(out_dir, row, run)
            entry = index_entry(row, SKIPPED, meta) if meta is not None else index_entry(row, MISSING)
        entries.append(entry)
    invalid: dict[int, list[RowProblem]] = {}
    for problem in manifest.problems:
        invalid.setdefault(problem.line, []).append(problem)
    for line, problems in invalid.items():
        entries.append(
            {"name": problems[0].name, "line": line, "status": INVALID, "error": "; ".join(p.message for p in problems)}
        )
    entries.sort(key=lambda entry: entry["line"])
    path = out_dir / INDEX_NAME
    text = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    for part in out_dir.glob("index.rank*.jsonl"):
        part.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return RenderSummary(counts, path)


def process_state(device: str) -> PartialState:
    """Accelerate's view of the processes: one without a launcher, N under ``accelerate launch`` / ``torchrun``.

    On a CPU device the processes join a gloo process group (``PartialState(cpu=True)``; accelerate otherwise
    groups only processes that use accelerators)."""
    return PartialState(cpu=parse_device(device).type == "cpu")


def process_device(device: str, state: PartialState) -> str:
    """``cuda`` without an index means each process's own GPU (``cuda:LOCAL_RANK``) when there are several."""
    if device == "cuda" and state.num_processes > 1:
        return f"cuda:{state.local_process_index}"
    return device


class RenderJob:
    """One process's part of rendering a manifest: plan on creation, then :meth:`render`, then :meth:`finish`.

    Use it as a context manager (it holds this process's index part open)::

        with RenderJob(manifest, out_dir, run, batch_size=4, state=state) as job:
            if job.plan.pending:
                job.render(pipe, load_time_s)
        summary = job.finish()
    """

    def __init__(self, manifest: Manifest, out_dir: Path, run: RenderRun, *, batch_size: int, state: PartialState):
        self.manifest, self.out_dir, self.run, self.state = manifest, Path(out_dir), run, state
        if not self.out_dir.is_dir():
            raise SADAError(f"output directory '{out_dir}' does not exist or is not a directory")
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise SADAError(f"output directory '{out_dir}' is not writable")
        rank, world = state.process_index, state.num_processes
        self.plan = plan_render(manifest.rows, run, self.out_dir, batch_size, rank, world)
        removed = remove_temporary_files(self.out_dir, self.plan.share)
        if removed:
            logger.info("removed %d temporary files of an interrupted run", removed)
        self.part = IndexPart(self.out_dir, rank)
        self.progress = RenderProgress()

    def __enter__(self) -> RenderJob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.part.close()

    def render(
        self, pipe: Any, load_time_s: float, on_clip: Callable[[RenderProgress], None] | None = None
    ) -> RenderProgress:
        """Render this process's pending clips with ``pipe`` (prompt embeddings cached where exact)."""
        cache = PromptEmbeddingCache(pipe) if PromptEmbeddingCache.supports(pipe) else None
        run = self.run
        run_meta = run_metadata(pipe, run.model, run.model_id, run.device, run.dtype)
        run_meta.update(load_time_s=load_time_s, rank=self.state.process_index, manifest=str(self.manifest.path))

        def generate(pipe: Any, clips: Sequence[ClipRequest], settings: SamplingSettings) -> GeneratedBatch:
            return generate_batch(pipe, clips, settings, accelerate=run.accelerate, prompt_cache=cache)

        self.progress = render_batches(
            pipe, self.plan, run, self.out_dir, run_meta, self.part, generate=generate, on_clip=on_clip
        )
        return self.progress

    def finish(self) -> RenderSummary:
        """Wait for every process; the main one merges the index. Elsewhere, the summary covers this share."""
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            return merge_index(self.out_dir, self.manifest, self.run, self.state.num_processes)
        counts = {RENDERED: self.progress.rendered, FAILED: self.progress.failed, SKIPPED: len(self.plan.done)}
        return RenderSummary(counts, None)
