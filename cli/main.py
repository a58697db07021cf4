"""The ``sada-audio`` command line: click commands only, every piece of logic lives in the library."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import diffusers.utils.logging
import numpy as np
import torch
import transformers.utils.logging

from sada_audio import apply_sada
from sada_audio.audio import check_output_path, pipeline_sample_rate, write_audio, write_json
from sada_audio.errors import SADAError
from sada_audio.pipelines import (
    MODEL_ALIASES,
    SCHEDULER_CHOICES,
    load_pipeline,
    parse_device,
    parse_dtype,
    resolve_model_id,
    set_scheduler,
)

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("float32", "float16", "bfloat16")
_VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "sada-audio")


class _OneLineError(click.ClickException):
    """Bad input: shown as a single ``Error: ...`` line on stderr, exit status 2, no traceback."""

    exit_code = 2


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn click usage errors and the library's :class:`SADAError` into :class:`_OneLineError`."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare command shows its help, as click does
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        raise _OneLineError(_single_line(error.format_message()) + hint) from error
    except SADAError as error:
        raise _OneLineError(_single_line(str(error))) from error


def _single_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class _Group(click.Group):
    """A click group whose parameter and library errors are one line long (click's usage errors
    otherwise print the usage and a hint first)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


class _EchoHandler(logging.Handler):
    """Writes log records to the current stderr through click (which may be swapped by tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def _configure_logging(verbosity: int) -> None:
    """Route sada_audio's log records to stderr; below -v, silence the loading bars and warnings of
    diffusers and transformers, so that the denoising bar is the only one on the terminal."""
    quiet = verbosity == 0
    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity(logging.ERROR if quiet else logging.WARNING)
        (library.disable_progress_bar if quiet else library.enable_progress_bar)()
    package_logger = logging.getLogger("sada_audio")
    for handler in [h for h in package_logger.handlers if isinstance(h, _EchoHandler)]:
        package_logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


def _check_prompt(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("the prompt is empty", ctx=ctx, param=param)
    return value


def _waveform_paths(output: Path, count: int) -> list[Path]:
    """``OUT.wav`` for the first waveform, then ``OUT_1.wav``, ``OUT_2.wav``, ... for the others."""
    return [output] + [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(1, count)]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sada-audio")
@click.option("-v", "--verbose", count=True, help="Log more: -v for progress details, -vv for debugging.")
def main(verbose: int) -> None:
    """Training-free SADA acceleration of audio diffusion models (MusicLDM, AudioLDM, AudioLDM2)."""
    _configure_logging(verbose)


@main.command()
@click.argument("prompt", callback=_check_prompt)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="OUT",
    help="Audio file to write, .wav or .flac (chosen by the extension). A JSON sidecar with every "
    "setting, the SADA statistics and the wall time is written next to it (OUT.json).",
)
@click.option(
    "-m",
    "--model",
    required=True,
    metavar="MODEL",
    help=f"Hugging Face hub id, local pipeline directory, or short name ({', '.join(MODEL_ALIASES)}).",
)
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial noise.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Length of the clip in seconds.  [default: the model's own]",
)
@click.option(
    "--guidance",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Classifier-free guidance scale.",
)
@click.option(
    "--scheduler",
    type=click.Choice(list(SCHEDULER_CHOICES)),
    help="Sampler to use instead of the model's own.  [default: the model's own]",
)
@click.option(
    "--accelerate",
    type=click.Choice(["sada", "none"]),
    default="sada",
    show_default=True,
    help="'sada' applies the preset of the model family; 'none' runs the unmodified pipeline.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Torch device, e.g. cpu, cuda, cuda:1.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPE_CHOICES),
    default="float32",
    show_default=True,
    help="Precision of the weights and the computation.",
)
@click.option("--negative-prompt", help="What the clip should not sound like.")
@click.option(
    "--num-waveforms",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Waveforms to generate. The first (the best by CLAP score, for pipelines that rank them) "
    "goes to OUT.wav, the others to OUT_1.wav, OUT_2.wav, ...",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def generate(
    prompt: str,
    output: Path,
    model: str,
    steps: int,
    seed: int,
    duration: float | None,
    guidance: float,
    scheduler: str | None,
    accelerate: str,
    device: str,
    dtype: str,
    negative_prompt: str | None,
    num_waveforms: int,
    overwrite: bool,
) -> None:
    """Generate audio for PROMPT and write it to OUT (-o), with a JSON sidecar OUT.json.

    \b
    Example:
      sada-audio generate "slow piano arpeggio in A minor" --model musicldm -o clip.wav
    """
    # Everything that can be checked is checked before the (slow) model load.
    audio_paths = [check_output_path(path, overwrite) for path in _waveform_paths(output, num_waveforms)]
    sidecar = check_output_path(output.with_suffix(".json"), overwrite, extensions=(".json",))
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype)

    # A missing directory or an unknown name fails here at once, before any weights are read.
    started = time.perf_counter()
    pipe = load_pipeline(model, device=torch_device, dtype=torch_dtype)
    load_time = time.perf_counter() - started
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(desc="Denoising", unit="step")
    generator = torch.Generator(device=torch_device).manual_seed(seed)

    with apply_sada(pipe) if accelerate == "sada" else contextlib.nullcontext() as handle:
        started = time.perf_counter()
        try:
            result = pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=steps,
                audio_length_in_s=duration,
                guidance_scale=guidance,
                num_waveforms_per_prompt=num_waveforms,
                generator=generator,
                output_type="np",
            )
        except SADAError:
            raise
        except ValueError as error:  # the pipeline's own input checks, e.g. a too short duration
            logger.debug("the pipeline rejected the input", exc_info=True)
            raise SADAError(f"the pipeline rejected the input: {error}") from error
        wall_time = time.perf_counter() - started
        sada_config = None if handle is None else handle.config.to_dict()
        sada_stats = None if handle is None else handle.stats.to_dict()

    waveforms = np.asarray(result.audios)
    sample_rate = pipeline_sample_rate(pipe)
    for path, waveform in zip(audio_paths, waveforms, strict=True):
        write_audio(path, waveform, sample_rate)
    write_json(
        sidecar,
        {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "model": model,
            "model_id": resolve_model_id(model),
            "pipeline_class": type(pipe).__name__,
            "scheduler_class": type(pipe.scheduler).__name__,
            "steps": steps,
            "duration_s": waveforms.shape[-1] / sample_rate,
            "requested_duration_s": duration,
            "guidance_scale": guidance,
            "num_waveforms": num_waveforms,
            "sample_rate": sample_rate,
            "files": [path.name for path in audio_paths],
            "accelerate": accelerate,
            "sada_config": sada_config,
            "sada_stats": sada_stats,
            "wall_time_s": wall_time,
            "load_time_s": load_time,
            "device": str(torch_device),
            "dtype": dtype,
            "versions": {package: version(package) for package in _VERSIONED_PACKAGES},
        },
    )
    calls = "" if sada_stats is None else f", {sada_stats['model_calls']} model calls"
    click.echo(
        f"Wrote {', '.join(map(str, audio_paths))} ({waveforms.shape[-1] / sample_rate:.2f} s at "
        f"{sample_rate} Hz) and {sidecar}: {steps} steps{calls} in {wall_time:.1f} s."
    )
