"""``sada-audio benchmark``: SADA against its peers on one model, prompts, seeds and machine, in one run."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from sada_audio.choices import BENCHMARK_CLIPS_DIR, BENCHMARK_RESULT_FILES
from sada_audio.config import MAX_SEED, SADAConfig

from .common import (
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    DTYPE_HELP,
    SCHEDULER_OPTION_CHOICES,
    FiniteFloatRange,
    OutputPath,
    compile_option,
    dtype_name,
    load_for_command,
    new_folders_removed_on_failure,
    prepare_clip_dirs,
    resolve_scheduler_option,
)
from .console import interruptible

#: What ``--quick`` sets: a smoke run of every method in a few minutes (the test suite runs it).
QUICK = {
    "steps": 20,
    "duration": 2.56,
    "latent_frames": (32,),
    "cost_repeats": 1,
    "fewer_steps": (10,),
    "converged_steps": 40,
}
QUICK_PROMPTS = 2


def _integers(value: str, example: str, ctx: click.Context, param: click.Parameter) -> tuple[int, ...]:
    """The integers of a comma-separated list, at least one."""
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        message = f"{value!r} is not a comma-separated list of integers, e.g. {example}"
        raise click.BadParameter(message, ctx, param) from None
    if not numbers:
        raise click.BadParameter(f"give at least one, e.g. {example}", ctx, param)
    return numbers


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    seeds = _integers(value, "0,1", ctx, param)
    if not all(0 <= seed <= MAX_SEED for seed in seeds):
        raise click.BadParameter(f"seeds must be in 0..{MAX_SEED}, got {value!r}", ctx, param)
    return seeds


def _step_counts(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of step counts (>= 1), ``none`` for none; None when the option is not given."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    counts = _integers(value, "10,18,25", ctx, param)
    if min(counts) < 1:
        raise click.BadParameter(f"step counts must be >= 1, got {value!r}", ctx, param)
    return counts


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return () if value is None else tuple(part.strip() for part in value.split(",") if part.strip())


def _time_left(seconds: float) -> str:
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"


@contextlib.contextmanager
def _progress(items: Sequence[Any], label: str) -> Iterator[Any]:
    """The benchmark's progress (the evaluation's ``Progress``), on stderr: on a terminal a bar with the sampler
    and its blocks done (``label``), the clip and method running (an item that is text) and the time left; in a
    log, one line per finished item with the same and the estimated time left."""
    if sys.stderr.isatty():
        show = lambda item: item if isinstance(item, str) else None  # noqa: E731
        with click.progressbar(items, label=label, file=sys.stderr, show_pos=True, item_show_func=show) as bar:
            yield bar
        return

    def lines() -> Iterator[Any]:
        click.echo(f"{label}: {len(items)} to run", err=True)
        started = time.perf_counter()
        for done, item in enumerate(items, start=1):
            yield item
            left = (time.perf_counter() - started) / done * (len(items) - done)
            what = f": {item}" if isinstance(item, str) else ""
            click.echo(f"{label}: {done}/{len(items)} done{what}; {_time_left(left)}", err=True)

    yield lines()


@click.command()
@click.option(
    "-o",
    "--output-dir",
    type=OutputPath(path_type=Path, file_okay=False),
    required=True,
    help=f"Folder for {', '.join(BENCHMARK_RESULT_FILES.values())}.",
)
@click.option(
    "-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Hub id, local pipeline folder or short name."
)
@click.option(
    "--scheduler",
    "schedulers",
    multiple=True,
    type=click.Choice(SCHEDULER_OPTION_CHOICES),
    callback=resolve_scheduler_option,
    help="Sampler to compare on (repeatable).  [default: ddim and dpm++]",
)
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=4), help="Denoising steps.")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="One prompt per line.  [default: 16 built-in captions in the embedded model's style]",
)
@click.option("--seeds", default="0,1", show_default=True, callback=_seeds, help="Comma-separated seeds per prompt.")
@click.option(
    "--methods",
    callback=_names,
    help="Comma-separated method families to run besides the baseline (e.g. SADA,DeepCache).  [default: all]",
)
@click.option("--preset", help="SADA preset.  [default: the model family's]")
@click.option(
    "--sada-variant",
    "sada_variants",
    multiple=True,
    metavar="OVERRIDES",
    help="A further SADA setting to compare, as overrides of the preset in JSON values, e.g. "
    "'acc_range=[6, 48]; lagrange_int=5' (repeatable).",
)
@click.option(
    "--fewer-steps",
    callback=_step_counts,
    metavar="N,N,...",
    help="Step counts of the fewer-steps peer (the unmodified sampler with fewer steps, on a grid that starts where "
    "the baseline's starts), or 'none'.  [default: 8,10,12,15,18,22,25,30]",
)
@click.option(
    "--sada-steps",
    callback=_step_counts,
    metavar="N,N,...",
    help="Shorter base runs on which SADA's preset and every --sada-variant also run.  [default: none]",
)
@click.option(
    "--converged-steps",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps of the converged reference (DPM++ 2M) every clip is also compared with; 0 = none.",
)
@click.option("--duration", default=5.12, show_default=True, type=FiniteFloatRange(min=0, min_open=True))
@click.option("--guidance", default=2.0, show_default=True, type=FiniteFloatRange(min=0))
@click.option(
    "--frames",
    "latent_frames",
    multiple=True,
    type=click.IntRange(min=8),
    help="Latent length of a real-size step-cost workload (repeatable; 256 = 10.24 s).  [default: 256 and 1024]",
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP)
@click.option(
    "--quick",
    is_flag=True,
    help="Smoke run in a few minutes: 2 prompts, 1 seed, 20 steps, 2.56 s, step costs at latent length 32 "
    "(--steps, --duration, --frames, --fewer-steps and --converged-steps given with it are kept).",
)
@click.option(
    "--clips/--no-clips",
    "keep_clips",
    default=True,
    show_default=True,
    help=f"Keep every clip of the quality workload as FLAC in OUTPUT_DIR/{BENCHMARK_CLIPS_DIR}/ for report.html's "
    "players.",
)
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in the output folder.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the stopped run in the output folder with the same command line: its finished blocks (a "
    "sampler's clip with every method, or, compiled, a sampler's method; a latent size's step costs) are kept.",
)
@compile_option
def benchmark(
    output_dir: Path,
    model: str,
    schedulers: tuple[str, ...],
    steps: int,
    prompts_file: Path | None,
    seeds: tuple[int, ...],
    methods: tuple[str, ...],
    preset: str | None,
    sada_variants: tuple[str, ...],
    fewer_steps: tuple[int, ...] | None,
    sada_steps: tuple[int, ...] | None,
    converged_steps: int,
    duration: float,
    guidance: float,
    latent_frames: tuple[int, ...],
    device: str,
    dtype: str,
    quick: bool,
    keep_clips: bool,
    overwrite: bool,
    resume: bool,
    compile_mode: str,
) -> None:
    """Benchmark SADA against DeepCache, ToMe, PAB, AdaptiveDiffusion (and, on transformers, First Block Cache,
    TaylorSeer, cache-dit) on the same prompts and seeds, in interleaved order.

    Writes OUTPUT_DIR/results.json, results.md (speed, fidelity against the baseline, step costs on the
    real-size MusicLDM UNet, the targets), speedup_fidelity.png (with the Pareto front) and report.html (the
    plot with links to every method's clips and a representative clip per method to listen to).

    \b
    Examples:
      sada-audio benchmark -o bench
      sada-audio benchmark -o bench-quick --quick
      sada-audio benchmark -o bench --methods SADA,DeepCache --scheduler ddim --frames 256
      sada-audio benchmark -o bench-gpu --device cuda --compile reduce-overhead

    With --compile the quality workload runs method by method (each compiled once, its first call timed
    apart) instead of interleaved clip by clip; the real-size step costs are measured without compiling.
    """
    # overrides are checked before the model loads (against the default model's family unless --preset names one)
    base = SADAConfig.preset(preset or "musicldm")
    for variant in sada_variants:
        base.with_overrides(variant)
    # Every mistake in the arguments is answered before the library that needs torch is imported.
    from sada_audio.audio import check_output_path
    from sada_audio.evaluation.benchmark_checkpoint import PROGRESS_DIR, BenchmarkProgress
    from sada_audio.evaluation.prompts import read_prompts

    if output_dir.exists() and not output_dir.is_dir():
        raise click.BadParameter(f"'{output_dir}' is a file, not a folder", param_hint="-o/--output-dir")
    prompts_read = tuple(read_prompts(prompts_file)) if prompts_file is not None else None
    stopped = (output_dir / PROGRESS_DIR).exists()
    if resume and overwrite:
        raise click.UsageError("--resume continues a stopped run, --overwrite starts over: pass one of them")
    if resume and not stopped:
        raise click.UsageError(f"nothing to resume: '{output_dir}' holds no stopped benchmark run")
    if stopped and not (resume or overwrite):
        raise click.UsageError(
            f"'{output_dir}' holds a stopped benchmark run: --resume continues it, --overwrite starts over"
        )
    if output_dir.is_dir():  # a new folder is checked once it exists
        for name in BENCHMARK_RESULT_FILES.values():
            check_output_path(output_dir / name, overwrite or resume, extensions=(Path(name).suffix,))

    from sada_audio.evaluation.benchmark import BenchmarkSettings, accelerators_for, run_benchmark
    from sada_audio.evaluation.benchmark_report import target_checks, write_benchmark_outputs
    from sada_audio.pipelines import check_compile_mode, parse_device, resolve_model_id
    from sada_audio.render.plan import prepare_output_dir

    check_compile_mode(compile_mode, parse_device(device))
    # a run refused or failed before it wrote anything leaves no folder behind
    with new_folders_removed_on_failure(output_dir / BENCHMARK_CLIPS_DIR):
        prepare_output_dir(output_dir)
        for name in BENCHMARK_RESULT_FILES.values():
            check_output_path(output_dir / name, overwrite or resume, extensions=(Path(name).suffix,))
        clip_dir = None
        if keep_clips:
            clip_dir = output_dir / BENCHMARK_CLIPS_DIR
            if not resume:  # a resumed run keeps the clips of its finished blocks
                prepare_clip_dirs([clip_dir], overwrite, recursive=True)
        prompts = prompts_read or BenchmarkSettings.prompts
        settings = BenchmarkSettings(
            schedulers=schedulers or BenchmarkSettings.schedulers,
            steps=steps,
            prompts=prompts,
            seeds=seeds,
            duration=duration,
            guidance=guidance,
            methods=methods,
            preset=preset,
            sada_variants=sada_variants,
            sada_steps=sada_steps or (),
            fewer_steps=BenchmarkSettings.fewer_steps if fewer_steps is None else fewer_steps,
            converged_steps=converged_steps or None,
            latent_frames=latent_frames or BenchmarkSettings.latent_frames,
            compile_mode=compile_mode,
        )
        if quick:
            # what the command line names explicitly (--steps, --duration, --frames, ...) stays as given
            ctx = click.get_current_context()
            quick_settings = {
                key: value
                for key, value in QUICK.items()
                if key not in ctx.params or ctx.get_parameter_source(key) != ParameterSource.COMMANDLINE
            }
            settings = dataclasses.replace(settings, **quick_settings, prompts=prompts[:QUICK_PROMPTS], seeds=seeds[:1])
        # what identifies the run: a resume must ask for the same
        run = {
            "settings": settings.to_dict(),
            "model": resolve_model_id(model),
            "device": device,
            "dtype": dtype_name(dtype, device, model),
            "clips": keep_clips,
        }
        progress_dir = output_dir / PROGRESS_DIR
        resumed = BenchmarkProgress.resume(progress_dir, run) if resume else None
        with interruptible("run the same command with --resume to continue it"):
            pipe, _ = load_for_command(model, None, device, dtype, compile_mode)
            accelerators_for(pipe, settings)  # unknown --methods fail here, before the progress folder is made
            # a new run's progress folder once the model is there: a model that fails to load leaves nothing
            checkpoint = resumed or BenchmarkProgress.start(progress_dir, run)
            pipe.set_progress_bar_config(disable=True)  # one bar: ours
            results = run_benchmark(pipe, settings, progress=_progress, clip_dir=clip_dir, checkpoint=checkpoint)
        command = shlex.join(["sada-audio", "benchmark", *sys.argv[2:]]) if sys.argv[1:2] == ["benchmark"] else ""
        paths = write_benchmark_outputs(results, output_dir, command or "sada-audio benchmark")
        checkpoint.finish()
    if quick:
        click.echo("The targets are defined for the full workload (50 steps, 16 prompts x 2 seeds);")
        click.echo("--quick only checks that every method runs, so its speedups are not comparable with them.")
    for check in target_checks(results):
        click.echo(f"{check['scheduler']}: {check['target']}: {check['value']} ({'met' if check['met'] else 'MISSED'})")
    click.echo(f"Results: {', '.join(str(path) for path in paths.values())}")
