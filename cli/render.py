"""``sada-audio render``: a manifest of clips into a folder, resumable, sharded under ``accelerate launch``."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sada_audio.choices import CLIP_FORMATS

from .common import (
    OutputPath,
    check_duration,
    check_text,
    compile_option,
    dtype_name,
    load_for_command,
    memory_option,
    model_options,
    sampling_options,
    seed_option,
    warn_if_memory_heavy,
)
from .console import interruptible
from .sada_choice import resolve_after_loading, resolve_before_loading, sada_choice, sada_options

if TYPE_CHECKING:
    from sada_audio.render import RenderProgress


def _progress_text(progress: RenderProgress | None) -> str | None:
    if progress is None:
        return None
    speedup = progress.mean_speedup_estimate
    text = f"{progress.rendered} rendered" + (f", {progress.failed} failed" if progress.failed else "")
    return text + ("" if speedup is None else f", mean speedup {speedup:.2f}x (est., vs 50 steps)")


def _changed_text(changed: dict[str, list[str]], rank: int, world: int) -> str:
    """The line that says how many clips are rendered again because their settings changed, and which."""
    counts: dict[str, int] = {}
    for keys in changed.values():
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    fields = ", ".join(f"{key}: {count}" for key, count in sorted(counts.items()))
    where = f" (process {rank + 1}/{world})" if world > 1 else ""
    clips = "clip" if len(changed) == 1 else "clips"
    return f"Rendering {len(changed)} {clips} again{where}: their settings changed ({fields})"


@click.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output-dir",
    "out_dir",
    required=True,
    type=OutputPath(path_type=Path, file_okay=False),
    metavar="OUT_DIR",
    help="Folder for the clips, their JSON sidecars, index.jsonl and index.html (a listening page; both created "
    "if missing, replaced at every run).",
)
@model_options
@sada_options
@sampling_options
@seed_option("Seed of rows without one.")
@click.option("--negative-prompt", callback=check_text, help="Negative prompt of rows without one.")
@click.option(
    "--format",
    "audio_format",
    type=click.Choice(CLIP_FORMATS),
    default="wav",
    show_default=True,
    help="Format of rows without one.",
)
@click.option(
    "--batch-size",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Clips per pipeline call; only rows with equal steps, duration and guidance share a call.",
)
@click.option("--skip-invalid", is_flag=True, help="Render the valid rows of a manifest that has invalid ones.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace files in OUT_DIR that render did not make (by default such a file stops the run before it starts).",
)
@compile_option
@memory_option
def render(
    manifest: Path,
    out_dir: Path,
    model: str,
    scheduler: str | None,
    accelerate: str,
    sada_level: str | None,
    sada_overrides: str | None,
    device: str,
    dtype: str,
    steps: int | None,
    duration: float | None,
    allow_long: bool,
    guidance: float,
    seed: int,
    negative_prompt: str | None,
    audio_format: str,
    batch_size: int,
    skip_invalid: bool,
    overwrite: bool,
    compile_mode: str,
    ignore_memory_estimate: bool,
) -> None:
    """Render every row of MANIFEST (JSONL or CSV) into OUT_DIR: NAME.wav (or .flac) and NAME.json per row,
    and index.jsonl with each row's status, and index.html to listen to the clips.

    \b
    Rows: name, prompt, and optionally negative_prompt, seed, duration, steps, guidance, format (wav/flac);
    the options give the values of the fields a row leaves out. A re-run skips the clips that are
    complete for the same row and settings, so an interrupted run is resumed by running it again.
    Exit status: 0 when every row rendered, 1 when some failed or were invalid, 2 for bad input,
    130 / 143 when interrupted (Ctrl-C / SIGTERM).

    \b
    Several processes (GPUs or machines, OUT_DIR on shared storage) split the rows:
      accelerate launch --num_processes 4 --no_python sada-audio render cues.jsonl -o out --device cuda
    On CPUs use 'accelerate launch --multi_gpu --num_processes N' ('--cpu' starts a single process).
    """
    # The library is imported here, not at the top: argument errors are reported without loading torch.
    from sada_audio.evaluation.html_report import write_render_index
    from sada_audio.generation import sampler_request
    from sada_audio.memory import DEFAULT_DURATION_S
    from sada_audio.pipelines import local_scheduler, resolve_model_id
    from sada_audio.render import (
        FAILED,
        INVALID,
        MISSING,
        RENDERED,
        SKIPPED,
        RenderDefaults,
        RenderJob,
        RenderRun,
        process_device,
        process_state,
        read_manifest,
    )

    with interruptible("run the same command again to render the rest"):
        choice = sada_choice(accelerate, sada_level, sada_overrides)
        # the SADA config and the sampler are part of every clip's request: resolved before loading (the family
        # from the model's name or folder), so that a run with nothing to do loads nothing; a model whose family
        # only loading tells is loaded first
        run_choice = resolve_before_loading(choice, model, steps, scheduler)
        defaults = RenderDefaults(seed, duration, run_choice.steps, guidance, audio_format, negative_prompt)
        cues = read_manifest(manifest, defaults)
        cues.check(skip_invalid)
        for row in cues.rows:
            check_duration(row.settings.duration, allow_long, f"the duration of row {row.name!r} (line {row.line})")
        state = process_state(device)
        device = process_device(device, state)
        dtype = dtype_name(dtype, device, model)
        if cues.rows:
            longest = max(
                DEFAULT_DURATION_S if row.settings.duration is None else row.settings.duration for row in cues.rows
            )
            batch = min(batch_size, len(cues.rows))
            hint = "put fewer clips in a call with --batch-size"
            warn_if_memory_heavy(batch, longest, dtype, device, hint, force=ignore_memory_estimate)
        loaded = None
        local = local_scheduler(model, run_choice.scheduler)  # the sampler, from a local model's config
        sampler = None if local is None else sampler_request(local)
        if (choice is not None and run_choice.family is None) or sampler is None:
            loaded = load_for_command(model, run_choice.scheduler, device, dtype, compile_mode)
            settled = resolve_after_loading(choice, run_choice, loaded[0], steps, scheduler)
            if settled.steps != run_choice.steps:  # the level's steps fill the rows that give none
                cues = read_manifest(manifest, dataclasses.replace(defaults, steps=settled.steps))
                cues.check(skip_invalid)
            run_choice, sampler = settled, sampler_request(loaded[0].scheduler)
        sada_config = run_choice.sada_config
        run = RenderRun(
            model,
            resolve_model_id(model),
            run_choice.scheduler,
            choice is not None,
            device,
            dtype,
            compile_mode,
            sada_config=None if sada_config is None else sada_config.to_dict(),
            sada_choice=None if choice is None else choice.to_dict(),
            sampler=sampler,
        )
        started = time.perf_counter()
        with RenderJob(cues, out_dir, run, batch_size=batch_size, state=state, overwrite=overwrite) as job:
            if job.plan.changed:
                click.echo(_changed_text(job.plan.changed, state.process_index, state.num_processes), err=True)
            if job.plan.pending:
                pipe, load_time = loaded or load_for_command(model, run_choice.scheduler, device, dtype, compile_mode)
                pipe.set_progress_bar_config(disable=True)
                label = f"Rendering {job.plan.pending} clips"
                if state.num_processes > 1:
                    label += f" of process 1/{state.num_processes}"
                if job.plan.done:
                    label += f" ({len(job.plan.done)} already done)"
                with click.progressbar(
                    length=job.plan.pending,
                    label=label,
                    show_pos=True,
                    item_show_func=_progress_text,
                    file=sys.stderr,
                    hidden=not state.is_main_process,
                ) as bar:
                    job.render(pipe, load_time, on_clip=lambda progress: bar.update(1, progress))
        summary = job.finish()
    counts = summary.counts
    if summary.index_path is not None:
        minutes = (time.perf_counter() - started) / 60
        rate = f", {counts.get(RENDERED, 0) / minutes:.1f} clips/min overall" if counts.get(RENDERED) else ""
        others = ", ".join(
            f"{counts[status]} {status}" for status in (SKIPPED, FAILED, INVALID, MISSING) if status in counts
        )
        page = write_render_index(out_dir)
        click.echo(
            f"Rendered {counts.get(RENDERED, 0)} clips into {out_dir}{rate}"
            + (f" ({others})" if others else "")
            + f"; index: {summary.index_path}, {page}"
        )
    if not summary.all_succeeded:
        raise SystemExit(1)
