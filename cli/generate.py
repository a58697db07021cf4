"""``sada-audio generate``: one prompt into one clip (or a few waveforms) with its JSON sidecar."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from .common import (
    OutputPath,
    check_prompt,
    check_steps_before_loading,
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

logger = logging.getLogger(__name__)


def _waveform_paths(output: Path, count: int) -> list[Path]:
    """``OUT.wav`` for the first waveform, then ``OUT_1.wav``, ``OUT_2.wav``, ... for the others."""
    return [output] + [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(1, count)]


@click.command()
@click.argument("prompt", callback=check_prompt)
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputPath(path_type=Path),
    metavar="OUT",
    help="Audio file to write, .wav or .flac (chosen by the extension). A JSON sidecar with every "
    "setting, the SADA statistics and the wall time is written next to it (OUT.json).",
)
@model_options
@sada_options
@sampling_options
@seed_option("Seed of the initial noise.")
@click.option("--negative-prompt", callback=check_text, help="What the clip should not sound like.")
@click.option(
    "--num-waveforms",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Waveforms to generate. The first (the best by CLAP score, for pipelines that rank them) "
    "goes to OUT.wav, the others to OUT_1.wav, OUT_2.wav, ...",
)
@click.option(
    "--sparsity-map",
    type=OutputPath(path_type=Path, dir_okay=False),
    metavar="PATH.png",
    help="Also draw where SADA saved work: every step's mode and, for pruned steps, which latent time frames "
    "and frequency bands were recomputed (needs --accelerate sada).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@compile_option
@memory_option
def generate(
    prompt: str,
    output: Path,
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
    num_waveforms: int,
    sparsity_map: Path | None,
    overwrite: bool,
    compile_mode: str,
    ignore_memory_estimate: bool,
) -> None:
    """Generate audio for PROMPT and write it to OUT (-o), with a JSON sidecar OUT.json.

    \b
    Example:
      sada-audio generate "slow piano arpeggio in A minor" -o clip.wav
    """
    # The library is imported here, not at the top: argument errors are reported without loading torch.
    from sada_audio.audio import check_output_path, write_clip
    from sada_audio.evaluation.sparsity_figure import write_sparsity_png
    from sada_audio.generation import ClipRequest, SamplingSettings, clip_metadata, generate_batch, run_metadata
    from sada_audio.pipelines import resolve_model_id

    # Everything that can be checked is checked before the (slow) model load.
    audio_paths = [check_output_path(path, overwrite) for path in _waveform_paths(output, num_waveforms)]
    sidecar = check_output_path(output.with_suffix(".json"), overwrite, extensions=(".json",))
    if sparsity_map is not None:
        if accelerate != "sada":
            raise click.UsageError("--sparsity-map needs --accelerate sada: without SADA every step runs in full")
        check_output_path(sparsity_map, overwrite, extensions=(".png",))
    choice = sada_choice(accelerate, sada_level, sada_overrides)
    run = resolve_before_loading(choice, model, steps, scheduler)
    check_steps_before_loading(model, run.scheduler, run.steps)
    dtype = dtype_name(dtype, device, model)
    hint = "generate fewer with --num-waveforms"
    warn_if_memory_heavy(num_waveforms, duration, dtype, device, hint, force=ignore_memory_estimate)
    with interruptible():
        pipe, load_time = load_for_command(model, run.scheduler, device, dtype, compile_mode)
        pipe.set_progress_bar_config(desc="Denoising", unit="step")
        run = resolve_after_loading(choice, run, pipe, steps, scheduler)

        clip = ClipRequest(prompt=prompt, seed=seed, negative_prompt=negative_prompt)
        settings = SamplingSettings(steps=run.steps, duration=duration, guidance=guidance, num_waveforms=num_waveforms)
        batch = generate_batch(pipe, [clip], settings, accelerate=choice is not None, sada_config=run.sada_config)

        metadata = clip_metadata(clip, settings, batch, [path.name for path in audio_paths])
        run_info = run_metadata(pipe, model, resolve_model_id(model), device, dtype, compile_mode)
        metadata.update(run_info, load_time_s=load_time, **(choice.to_dict() if choice is not None else {}))
        # the sparsity map is one of the clip's files: written first, removed again if the audio or sidecar fails
        figure = []
        if sparsity_map is not None and batch.sada_stats is not None:
            figure.append(functools.partial(write_sparsity_png, sparsity_map, batch.sada_stats, title=prompt))
        audio = list(zip(audio_paths, batch.waveforms[0], strict=True))
        write_clip(audio, batch.sample_rate, sidecar, metadata, first=figure)
    seconds = batch.waveforms.shape[-1] / batch.sample_rate
    calls = "" if batch.model_calls is None else f", {batch.model_calls} model calls"
    figure = "" if sparsity_map is None else f" and {sparsity_map}"
    click.echo(
        f"Wrote {', '.join(map(str, audio_paths))} ({seconds:.2f} s at {batch.sample_rate} Hz), {sidecar}{figure}: "
        f"{run.steps} steps{calls} in {batch.wall_time_s:.1f} s."
    )
