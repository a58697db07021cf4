"""One process's rendering: run the batches, write clips and sidecars, record results, merge the index."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState

from sada_audio.apply import apply_sada
from sada_audio.audio import write_clip, write_json, write_text
from sada_audio.config import SADAConfig
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
from sada_audio.levels import DEFAULT_STEPS

from .guard import (
    INDEX_NAME,
    FolderLock,
    check_manifest_location,
    check_ownership,
    create_exclusively,
    is_render_sidecar,
    part_name,
    remove_stale_part,
)
from .manifest import FORMATS, Manifest, RenderRow, RenderRun, RowProblem
from .plan import (
    RenderPlan,
    completed_sidecar,
    missing_folders,
    plan_render,
    prepare_output_dir,
    read_sidecar,
    remove_empty_folders,
    remove_temporary_files,
)

logger = logging.getLogger(__name__)

# Statuses in the index. "skipped": complete from an earlier run; "missing": its process stopped before reporting it.
RENDERED, SKIPPED, FAILED, INVALID, MISSING = "rendered", "skipped", "failed", "invalid", "missing"

#: A shallow call's cost in full calls: the real-size MusicLDM UNet on the CPU (BENCHMARKS.md, "2026-11-30 (third
#: run)"); it prices the shallow calls of ``speedup_estimate``.
SHALLOW_CALL_COST = 0.157


def index_entry(
    row: RenderRow, status: str, meta: Mapping[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    """One line of ``index.jsonl``: the row, its status, and from its sidecar the timings and SADA statistics.

    ``nfe_speedup`` is SADA's NFE ratio inverted: steps / model calls (1.0 without SADA). ``speedup_estimate``
    prices the calls against the unaccelerated pipeline at :data:`~sada_audio.levels.DEFAULT_STEPS` steps of the
    same sampler: 50 / (full and pruned calls + :data:`SHALLOW_CALL_COST` x shallow calls), so that running
    fewer steps (a SADA level's own, or ``--steps``) and cheap shallow calls count too. Both count denoiser calls
    only: they overstate the wall-clock speedup when text encoding, VAE and vocoder weigh in, and ignore the
    gain of pruned steps.
    """
    entry: dict[str, Any] = {"name": row.name, "line": row.line, "status": status, "prompt": row.clip.prompt}
    entry.update(seed=row.clip.seed, steps=row.settings.steps, files=[row.audio_name] if meta else [], error=error)
    if meta is not None:
        stats = meta.get("sada_stats") or {}
        calls = stats.get("model_calls", row.settings.steps)
        cost = calls - (1 - SHALLOW_CALL_COST) * len(stats.get("shallow_steps", []))
        batch_size = meta.get("batch_size", 1)
        entry.update(
            wall_time_s=meta.get("wall_time_s"),
            batch_size=batch_size,
            clip_time_s=meta["wall_time_s"] / batch_size if meta.get("wall_time_s") is not None else None,
            nfe=calls,
            nfe_speedup=round(row.settings.steps / calls, 4) if calls else None,
            speedup_estimate=round(DEFAULT_STEPS / cost, 4) if cost else None,
            steps_skipped=len(stats.get("skipped_steps", [])),
            steps_pruned=len(stats.get("pruned_steps", [])),
            pruned_fraction=stats.get("pruned_fraction", 0.0),
            rank=meta.get("rank"),
        )
    return entry


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@dataclass
class RenderProgress:
    """This process's progress, handed to the callback after each clip."""

    rendered: int = 0
    failed: int = 0
    speedup_estimates: list[float] = field(default_factory=list)

    @property
    def mean_speedup_estimate(self) -> float | None:
        """The mean of the rendered clips' ``speedup_estimate`` (:func:`index_entry`)."""
        return sum(self.speedup_estimates) / len(self.speedup_estimates) if self.speedup_estimates else None


GenerateFn = Callable[[Any, Sequence[ClipRequest], SamplingSettings], GeneratedBatch]


# characters that str.splitlines (and other JSON-lines readers) take for line breaks but JSON leaves unescaped
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def index_line(entry: Mapping[str, Any]) -> str:
    """One line of an index file: the entry as JSON with U+0085, U+2028, U+2029 and lone surrogates escaped, so
    that every JSON-lines reader sees one entry per line whatever a prompt holds, and the line is UTF-8."""
    text = json.dumps(entry, ensure_ascii=False)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    # a lone surrogate (an invalid row's name) as its JSON escape: UTF-8 cannot hold it raw
    return text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"


class IndexPart:
    """This process's results, one JSON line each, appended and fsynced (a kill loses at most the last line).

    A fresh part per run (the index lists this run's results, the sidecars carry the older ones): an earlier
    run's part is removed, and the new one is created exclusively, without following a symlink, at the first
    result, so a run that fails before rendering anything leaves no empty part behind.
    """

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.path = out_dir / part_name(rank)
        remove_stale_part(self.path)
        self._file: Any = None

    def append(self, entry: Mapping[str, Any]) -> None:
        if self._file is None:
            self._file = os.fdopen(create_exclusively(self.path), "w", encoding="utf-8")
        self._file.write(index_line(entry))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _write_clip(
    out_dir: Path, row: RenderRow, batch: GeneratedBatch, index: int, run: RenderRun, run_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write the clip's audio, then its sidecar (both atomic); remove the audio of an older format.

    A clip without a sidecar of an earlier render first gets a claim (a sidecar that lists no audio, so the clip is
    not complete): an audio file left by a process killed before its sidecar is then still known as render's own.
    When a write fails, what this call wrote goes too: a clip is all or nothing.
    """
    previous = read_sidecar(out_dir, row)
    sidecar, audio = out_dir / row.sidecar_name, out_dir / row.audio_name
    meta = clip_metadata(row.clip, row.settings, batch, [row.audio_name])
    meta.update(run_meta, name=row.name, manifest_line=row.line, render_request=row.request(run))
    claim = {"name": row.name, "render_request": row.request(run), "files": []}
    claims = [] if is_render_sidecar(previous) else [lambda: write_json(sidecar, claim)]
    write_clip([(audio, batch.waveforms[index, 0])], batch.sample_rate, sidecar, meta, first=claims)
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
        if entry["status"] == RENDERED:
            progress.rendered += 1
            progress.speedup_estimates.append(entry["speedup_estimate"])
        else:
            progress.failed += 1
        if on_clip is not None:
            on_clip(progress)

    queue = list(plan.batches)
    while queue:
        rows = queue.pop(0)
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
        logger.debug("rendered %d clips in %.2f s", len(rows), batch.wall_time_s)
        for index, row in enumerate(rows):
            try:
                meta = _write_clip(out_dir, row, batch, index, run, run_meta)
            except (SADAError, OSError, ValueError) as error:  # ValueError: e.g. text UTF-8 cannot hold
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


def read_index_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of an index file (``index.jsonl`` or a process's part); a truncated line is skipped, a missing
    file has none."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 is no line break here
    except OSError:
        return
    for line in filter(None, lines):
        try:
            yield json.loads(line)
        except ValueError:
            logger.warning("ignoring a truncated line in %s", path)


def merge_index(out_dir: Path, manifest: Manifest, run: RenderRun, world: int = 1) -> RenderSummary:
    """Write ``index.jsonl``: every manifest row in manifest order, from this run's parts (rendered, failed),
    the sidecars (complete before: skipped), the validation (invalid); then remove the parts."""
    parts = [out_dir / part_name(rank) for rank in range(world)]
    reported = {entry["name"]: entry for path in parts for entry in read_index_lines(path)}
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
    text = "".join(index_line(entry) for entry in entries)
    write_text(path, text)
    for part in parts:
        part.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return RenderSummary(counts, path)


class RenderJob:
    """One process's part of rendering a manifest: on creation it makes the output folder if needed, takes the
    folder's lock (main process), refuses to replace files render did not make (unless ``overwrite``), plans its
    share and removes the temporary files an interrupted run left; then :meth:`render`, then :meth:`finish`.

    Use it as a context manager (it holds this process's index part open)::

        with RenderJob(manifest, out_dir, run, batch_size=4, state=state) as job:
            if job.plan.pending:
                job.render(pipe, load_time_s)
        summary = job.finish()

    A run that fails before :meth:`finish` releases the lock and removes the output folder if it created it and
    wrote nothing there.
    """

    def __init__(
        self,
        manifest: Manifest,
        out_dir: Path,
        run: RenderRun,
        *,
        batch_size: int,
        state: PartialState,
        overwrite: bool = False,
    ):
        out_dir = Path(out_dir)
        self._created_dirs = missing_folders(out_dir)
        self.manifest, self.out_dir, self.run, self.state = manifest, prepare_output_dir(out_dir), run, state
        check_manifest_location(manifest.path, self.out_dir, manifest.rows)
        self._lock = FolderLock(self.out_dir)
        if state.is_main_process:
            self._lock.acquire()
        try:
            rank, world = state.process_index, state.num_processes
            self.plan = plan_render(manifest.rows, run, self.out_dir, batch_size, rank, world)
            pending = [row for batch in self.plan.batches for row in batch]
            check_ownership(self.out_dir, pending, world, overwrite)
            removed = remove_temporary_files(self.out_dir, self.plan.share)
            if removed:
                logger.info("removed %d temporary files of an interrupted run", removed)
            self.part = IndexPart(self.out_dir, rank)
        except BaseException:
            self._abandon()
            raise
        self.progress = RenderProgress()

    def __enter__(self) -> RenderJob:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.part.close()
        if exc_type is not None:
            self._abandon()

    def _abandon(self) -> None:
        """Release the lock; remove the output folder and its parents that this job created, if still empty."""
        self._lock.release()
        if self.state.is_main_process:
            remove_empty_folders(self._created_dirs)  # one that is not empty holds what this run wrote

    def render(
        self, pipe: Any, load_time_s: float, on_clip: Callable[[RenderProgress], None] | None = None
    ) -> RenderProgress:
        """Render this process's pending clips with ``pipe`` (prompt embeddings cached where exact)."""
        cache = PromptEmbeddingCache(pipe) if PromptEmbeddingCache.supports(pipe) else None
        run = self.run
        run_meta = run_metadata(pipe, run.model, run.model_id, run.device, run.dtype, run.compile)
        run_meta.update(load_time_s=load_time_s, rank=self.state.process_index, manifest=str(self.manifest.path))
        run_meta.update(run.sada_choice or {})
        config = None if run.sada_config is None else SADAConfig.from_dict(run.sada_config)

        def generate(pipe: Any, clips: Sequence[ClipRequest], settings: SamplingSettings) -> GeneratedBatch:
            return generate_batch(pipe, clips, settings, accelerate=run.accelerate, prompt_cache=cache)

        # SADA stays attached for the whole run (every call starts it afresh): re-attaching it per batch would
        # make a compiled denoiser compile again.
        with apply_sada(pipe, config) if run.accelerate else contextlib.nullcontext():
            self.progress = render_batches(
                pipe, self.plan, run, self.out_dir, run_meta, self.part, generate=generate, on_clip=on_clip
            )
        return self.progress

    def finish(self) -> RenderSummary:
        """Wait for every process; the main one merges the index. Elsewhere, the summary covers this share."""
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            try:
                return merge_index(self.out_dir, self.manifest, self.run, self.state.num_processes)
            finally:
                self._lock.release()
        counts = {RENDERED: self.progress.rendered, FAILED: self.progress.failed, SKIPPED: len(self.plan.done)}
        return RenderSummary(counts, None)
