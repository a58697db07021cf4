"""Who renders what: shares of the rows per process, the clips already complete, the batches to run."""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from accelerate import PartialState

from sada_audio.errors import SADAError
from sada_audio.generation import SamplingSettings
from sada_audio.pipelines import parse_device

from .manifest import FORMATS, RenderRow, RenderRun


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


def recorded_request(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The request a sidecar says its clip was rendered for; None if it records none. Sidecars written before
    the request held the SADA config and the sampler get those they recorded beside it (what the clip ran with)."""
    request = meta.get("render_request")
    if not isinstance(request, dict):
        return None
    if "sada_config" not in request:
        request = {**request, "sada_config": meta.get("sada_config") if request.get("accelerate") == "sada" else None}
    if "sampler" not in request and isinstance(meta.get("scheduler_config"), dict):
        request = {**request, "sampler": {"class": meta.get("scheduler_class"), **meta["scheduler_config"]}}
    return request


def changed_settings(meta: dict[str, Any] | None, row: RenderRow, run: RenderRun) -> list[str]:
    """The request fields (``seed``, ``sada_config``, ...) in which a clip rendered earlier (its sidecar lists
    audio) differs from what ``row`` asks for now; empty for a clip never rendered or rendered as asked."""
    recorded = None if meta is None or not meta.get("files") else recorded_request(meta)
    if recorded is None:
        return []
    wanted = row.request(run)
    return sorted(key for key in wanted.keys() | recorded.keys() if wanted.get(key) != recorded.get(key))


def completed_sidecar(out_dir: Path, row: RenderRow, run: RenderRun) -> dict[str, Any] | None:
    """The sidecar of ``row`` if the clip is complete for this request (sidecar up to date, audio file of the
    recorded length), else None."""
    meta = read_sidecar(out_dir, row)
    if meta is None or recorded_request(meta) != row.request(run) or meta.get("files") != [row.audio_name]:
        return None
    try:
        info = sf.info(str(out_dir / row.audio_name))
    except (OSError, RuntimeError):  # soundfile raises LibsndfileError (a RuntimeError) on unreadable files
        return None
    duration, rate = meta.get("duration_s"), meta.get("sample_rate")
    if not isinstance(duration, float | int) or not isinstance(rate, int):  # a sidecar edited by hand
        return None
    return meta if info.samplerate == rate and info.frames == round(duration * rate) else None


def prepare_output_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; check that it is a writable directory.

    Raises:
        SADAError: it cannot be created, is not a directory, or is not writable.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SADAError(f"cannot create the output directory '{path}': {error.strerror or error}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise SADAError(f"output directory '{path}' is not writable")
    return path


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: the folders creating it makes."""
    return [folder for folder in (path, *path.parents) if not os.path.lexists(folder)]


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; one that holds anything stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def remove_temporary_files(out_dir: Path, rows: Sequence[RenderRow]) -> int:
    """Delete the temporary files an interrupted write left for ``rows`` (hidden ``.NAME.EXT.*.tmp``, see
    :func:`sada_audio.audio.write_audio`); return how many. Only this process's rows: a peer may be writing its own."""
    removed = 0
    for row in rows:
        for target in (row.audio_name, row.sidecar_name, *(f"{row.name}.{fmt}" for fmt in FORMATS)):
            for tmp in out_dir.glob(f".{glob.escape(target)}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


@dataclass
class RenderPlan:
    """What one process does: its share of the rows, the ones already done, the calls to make."""

    share: list[RenderRow]
    done: dict[str, dict[str, Any]]  # name -> sidecar of the clips complete before this run
    batches: list[list[RenderRow]]
    changed: dict[str, list[str]] = field(default_factory=dict)
    """Name -> the request fields that changed, of the pending clips rendered earlier for other settings."""

    @property
    def pending(self) -> int:
        return sum(map(len, self.batches))


def plan_render(
    rows: Sequence[RenderRow], run: RenderRun, out_dir: Path, batch_size: int, rank: int = 0, world: int = 1
) -> RenderPlan:
    """Take this process's share, find the clips already complete and batch the others."""
    share = shard(rows, rank, world)
    done = {row.name: meta for row in share if (meta := completed_sidecar(out_dir, row, run)) is not None}
    pending = [row for row in share if row.name not in done]
    changed = {row.name: keys for row in pending if (keys := changed_settings(read_sidecar(out_dir, row), row, run))}
    return RenderPlan(share, done, plan_batches(pending, batch_size), changed)


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
