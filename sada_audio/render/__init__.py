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

from .job import (
    FAILED,
    INDEX_NAME,
    INVALID,
    MISSING,
    RENDERED,
    SKIPPED,
    IndexPart,
    RenderJob,
    RenderProgress,
    RenderSummary,
    index_entry,
    merge_index,
    read_index_lines,
    render_batches,
)
from .manifest import (
    FIELDS,
    FORMATS,
    Manifest,
    ManifestError,
    RenderDefaults,
    RenderRow,
    RenderRun,
    RowProblem,
    read_manifest,
)
from .plan import (
    RenderPlan,
    changed_settings,
    completed_sidecar,
    plan_batches,
    plan_render,
    prepare_output_dir,
    process_device,
    process_state,
    read_sidecar,
    remove_temporary_files,
    shape_groups,
    shard,
)

__all__ = [
    "FAILED",
    "FIELDS",
    "FORMATS",
    "INDEX_NAME",
    "INVALID",
    "MISSING",
    "RENDERED",
    "SKIPPED",
    "IndexPart",
    "Manifest",
    "ManifestError",
    "RenderDefaults",
    "RenderJob",
    "RenderPlan",
    "RenderProgress",
    "RenderRow",
    "RenderRun",
    "RenderSummary",
    "RowProblem",
    "changed_settings",
    "completed_sidecar",
    "index_entry",
    "merge_index",
    "plan_batches",
    "plan_render",
    "prepare_output_dir",
    "process_device",
    "process_state",
    "read_index_lines",
    "read_manifest",
    "read_sidecar",
    "remove_temporary_files",
    "render_batches",
    "shape_groups",
    "shard",
]
