"""``sada-audio evaluate``: fidelity of accelerated clips against their baseline, with a report and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from sada_audio.config import MAX_SEED
from sada_audio.levels import DEFAULT_STEPS

from .common import (
    OutputPath,
    check_steps_before_loading,
    dtype_name,
    load_for_command,
    model_options,
    new_folders_removed_on_failure,
    prepare_clip_dirs,
    progress_bar,
    sampling_options,
    seed_option,
)
from .console import interruptible, quiet_libraries
from .sada_choice import SADA_OPTION_NAMES, resolve_after_loading, resolve_before_loading, sada_choice, sada_options

# Options that only make sense when the command generates the clips itself.
_GENERATION_OPTIONS = (
    "model",
    "scheduler",
    "accelerate",
    *SADA_OPTION_NAMES,
    "device",
    "dtype",
    "steps",
    "duration",
    "guidance",
    "seed",
)


def _check_arguments(ctx: click.Context, reference_dir: Path | None, test_dir: Path | None, generating: bool) -> None:
    if generating and (reference_dir or test_dir):
        raise click.UsageError("pass either REF_DIR TEST_DIR or --generate PROMPTS_FILE, not both", ctx=ctx)
    if not generating:
        if reference_dir is None or test_dir is None:
            raise click.UsageError("pass the folders REF_DIR and TEST_DIR, or --generate PROMPTS_FILE", ctx=ctx)
        given = [name for name in _GENERATION_OPTIONS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            options = {param.name: max(param.opts, key=len) for param in ctx.command.params}
            flags = ", ".join(options[name] for name in given)
            raise click.UsageError(f"{flags} only apply with --generate PROMPTS_FILE", ctx=ctx)


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Create the output folder; refuse to replace an earlier report unless ``overwrite``."""
    from sada_audio.audio import check_output_path
    from sada_audio.evaluation.report import FIGURE_NAMES, FIGURES_DIR, HTML_NAME, REPORT_NAME
    from sada_audio.render.plan import prepare_output_dir

    if output_dir.exists() and not output_dir.is_dir():
        raise click.BadParameter(f"'{output_dir}' is a file, not a folder", param_hint="-o/--output-dir")
    prepare_output_dir(output_dir)
    check_output_path(output_dir / REPORT_NAME, overwrite, extensions=(".md",))
    check_output_path(output_dir / HTML_NAME, overwrite, extensions=(".html",))
    for name in FIGURE_NAMES.values():
        figure = output_dir / FIGURES_DIR / name
        if figure.exists() and not overwrite:
            raise click.UsageError(f"figure '{figure}' already exists (use --overwrite to replace it)")


@click.command()
@click.argument("reference_dir", required=False, type=click.Path(path_type=Path), metavar="[REF_DIR")
@click.argument("test_dir", required=False, type=click.Path(path_type=Path), metavar="TEST_DIR]")
@click.option(
    "--generate",
    "prompts_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    metavar="PROMPTS_FILE",
    help="Generate the clips first: one prompt per line, each run without SADA (reference) and with it (test) "
    "on the same seed, into OUTPUT_DIR/reference and OUTPUT_DIR/test. Speedup in wall time and NFE is reported.",
)
@click.option(
    "-o",
    "--output-dir",
    type=OutputPath(path_type=Path),
    default=Path("sada-evaluation"),
    show_default=True,
    help="Folder for report.md, report.html (listening report: players, spectrograms, sparsity maps) and figures/ "
    "(and the generated clips).",
)
@click.option(
    "--json", "json_path", type=OutputPath(path_type=Path), metavar="PATH", help="Also write the JSON report."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier report, figures and generated clips.")
@click.option(
    "--lpips-backbone",
    metavar="FILE|URL",
    help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth) as a file or URL.  "
    "[default: the torch hub cache, else a download]",
)
@click.option("--lpips-heads", metavar="FILE", help="LPIPS v0.1 linear heads.  [default: the copy in torchmetrics]")
@click.option(
    "--embedding",
    metavar="HUB_ID|PATH",
    help="CLAP model for FAD and CLAP score: hub id (e.g. laion/larger_clap_music), ClapModel folder or pipeline "
    "folder with a ClapModel text encoder.  [default: the tiny-musicldm CLAP]",
)
@model_options
@sada_options
@sampling_options
@seed_option("Seed of the first prompt; +1 per line.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    reference_dir: Path | None,
    test_dir: Path | None,
    prompts_file: Path | None,
    output_dir: Path,
    json_path: Path | None,
    overwrite: bool,
    lpips_backbone: str | None,
    lpips_heads: str | None,
    embedding: str | None,
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
) -> None:
    """Compare TEST_DIR's clips with REF_DIR's (paired by file name), or generate both with --generate.

    Writes OUTPUT_DIR/report.md, report.html (listening report) and PNG figures (and --json PATH):
    spectrogram-LPIPS, log-mel L1, PSNR and SSIM, multi-resolution STFT distance, spectral convergence and
    SI-SDR per pair, with mean, median and worst;
    Frechet Audio Distance and CLAP score of the sets. Unusable files are listed, never fatal.

    \b
    Examples:
      sada-audio evaluate baseline/ accelerated/ -o eval --json eval/report.json
      sada-audio evaluate --generate samples/prompts.txt -o eval
    """
    # The library is imported here, not at the top: argument errors are reported without loading torch.
    from sada_audio.audio import check_output_path
    from sada_audio.evaluation.evaluate import evaluate_directories
    from sada_audio.evaluation.generate import generate_pair_folders, read_prompts
    from sada_audio.evaluation.report import write_outputs
    from sada_audio.generation import SamplingSettings, run_metadata
    from sada_audio.pipelines import resolve_model_id

    _check_arguments(ctx, reference_dir, test_dir, prompts_file is not None)
    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    if prompts is not None:  # checked before any folder is made, so that a refusal leaves nothing behind
        dtype = dtype_name(dtype, device, model)  # the sidecars record what ran, not 'auto'
        choice = sada_choice(accelerate, sada_level, sada_overrides)
        run = resolve_before_loading(choice, model, steps, scheduler)
        reference_steps = DEFAULT_STEPS if steps is None else steps
        for count in sorted({run.steps, reference_steps}):
            check_steps_before_loading(model, run.scheduler, count)
        if seed + len(prompts) - 1 > MAX_SEED:
            raise click.BadParameter(f"with {len(prompts)} prompts the seeds run past {MAX_SEED}", param_hint="--seed")
    # a run refused or failed before it wrote anything leaves no folder behind
    with new_folders_removed_on_failure(output_dir / "reference", output_dir / "test"):
        _prepare_output_dir(output_dir, overwrite)
        if json_path is not None:  # after the output folder exists: the JSON often goes into it
            check_output_path(json_path, overwrite, extensions=(".json",))
        if prompts is not None:
            reference_dir, test_dir = output_dir / "reference", output_dir / "test"
            prepare_clip_dirs([reference_dir, test_dir], overwrite)
            with interruptible():
                pipe, load_time = load_for_command(model, run.scheduler, device, dtype)
                pipe.set_progress_bar_config(disable=True)  # one bar: ours
                run = resolve_after_loading(choice, run, pipe, steps, scheduler)
                run_info = run_metadata(pipe, model, resolve_model_id(model), device, dtype)
                generate_pair_folders(
                    pipe,
                    prompts,
                    # the reference is the unaccelerated run of the same sampler at --steps (50 when not given)
                    SamplingSettings(steps=reference_steps, duration=duration, guidance=guidance),
                    seed=seed,
                    reference_dir=reference_dir,
                    test_dir=test_dir,
                    accelerate=choice is not None,
                    sada_config=run.sada_config,
                    test_steps=run.steps,
                    run_info={**run_info, "load_time_s": load_time},
                    progress=progress_bar,
                )
        assert reference_dir is not None and test_dir is not None  # checked by _check_arguments
        quiet_libraries()  # CLAP and LPIPS come from transformers and torch hub
        evaluation = evaluate_directories(
            reference_dir,
            test_dir,
            lpips_backbone=lpips_backbone,
            lpips_heads=lpips_heads,
            embedding=embedding,
            progress=progress_bar,
        )
        report_path = write_outputs(evaluation, output_dir, json_path)
        _echo_summary(evaluation.report, report_path, json_path)


def _echo_summary(report: dict[str, Any], report_path: Path, json_path: Path | None) -> None:
    from sada_audio.evaluation.report import HTML_NAME

    headline = [f"{report['pairs_evaluated']} pairs evaluated, {len(report['problems'])} problems"]
    for metric in ("lpips", "log_mel_l1", "si_sdr"):
        stats = report["summary"].get(metric)
        if stats is not None:
            headline.append(f"{metric} mean {stats['mean']:.4g} (worst {stats['worst']:.4g}: {stats['worst_clip']})")
    speed = report["speed"]
    if speed is not None and speed["speedup"] is not None:
        headline.append(f"speedup {speed['speedup']:.2f}x, NFE {speed['test_nfe']}/{speed['reference_nfe']}")
    click.echo("; ".join(headline) + ".")
    written = [str(report_path), str(report_path.with_name(HTML_NAME))]
    written += [str(json_path)] if json_path is not None else []
    click.echo(f"Report: {', '.join(written)}")
