"""What every ``sada-audio`` command shares: one-line errors, logging, and the model and sampling options."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from sada_audio.choices import (
    COMPILE_MODES,
    MODEL_ALIASES,
    SCHEDULER_ALIASES,
    SCHEDULER_CHOICES,
    resolve_scheduler_name,
)

from .console import quiet_libraries

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
DTYPE_HELP = (
    "Precision of the weights and the computation; 'auto': float16 on CUDA for the families that run in it "
    "(MusicLDM, AudioLDM, AudioLDM 2, Stable Audio, SD 2), bfloat16 for the others, float32 off CUDA."
)
COMPILE_HELP = (
    "torch.compile the denoiser ('reduce-overhead' adds CUDA graphs, CUDA only); SADA's decisions stay outside "
    "the compiled graph. The first call compiles (minutes on a GPU)."
)
DEFAULT_MODEL = "tiny-musicldm"

_Command = TypeVar("_Command", bound=Callable[..., Any])


class OutputPath(click.Path):
    """A ``click.Path`` for what a command writes: an empty value (an unset shell variable) is refused rather than
    taken for the current folder."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty (an unset shell variable?)", param, ctx)
        return super().convert(value, param, ctx)


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf`` (``nan`` passes every range check)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: What ``--scheduler`` accepts: the samplers' names and their aliases.
SCHEDULER_OPTION_CHOICES = [*SCHEDULER_CHOICES, *SCHEDULER_ALIASES]


def resolve_scheduler_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--scheduler``'s value (or values) with aliases resolved, so that sidecars and results name the sampler
    one way (``edm`` becomes ``euler-karras``)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(resolve_scheduler_name(name) for name in value)
    return resolve_scheduler_name(value)


@contextlib.contextmanager
def progress_bar(items: Sequence[Any], label: str) -> Iterator[Any]:
    """A progress bar over ``items`` (the evaluation's ``Progress``); click draws it only on a terminal, on
    stderr, so that stdout stays the result summary."""
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar


def prepare_clip_dirs(directories: Sequence[Path], overwrite: bool, *, recursive: bool = False) -> None:
    """Folders for generated clips (their parent exists): each new, or (with ``overwrite``) cleared of an earlier
    run's clips, also in subfolders if ``recursive``. All are checked before any is touched, and only files a
    sada-audio command made are ever removed (:func:`sada_audio.render.guard.check_clip_folder`).

    Raises:
        SADAError: a folder holds a file sada-audio did not make, or an earlier run's clips without ``overwrite``.
    """
    from sada_audio.render.guard import check_clip_folder

    earlier = [check_clip_folder(directory, overwrite, recursive=recursive) for directory in directories]
    for directory, files in zip(directories, earlier, strict=True):
        for path in files:
            path.unlink(missing_ok=True)
        directory.mkdir(exist_ok=True)


@contextlib.contextmanager
def new_folders_removed_on_failure(*paths: Path) -> Iterator[None]:
    """If the block fails (an error, Ctrl-C), remove the folders among ``paths`` and their parents that did not
    exist before it and are still empty, so that a refused or failed run leaves nothing behind."""
    from sada_audio.render.plan import missing_folders, remove_empty_folders

    created = {folder for path in paths for folder in missing_folders(path)}
    try:
        yield
    except BaseException:
        remove_empty_folders(sorted(created, key=lambda folder: len(folder.parts), reverse=True))
        raise


def check_prompt(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("the prompt is empty", ctx=ctx, param=param)
    return check_text(ctx, param, value)


def check_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse text that cannot be written to a sidecar as UTF-8 (e.g. ``$'\\xff'`` from a shell)."""
    from sada_audio.audio import utf8_problem

    problem = None if value is None else utf8_problem(value)
    if problem is not None:
        raise click.BadParameter(f"the text {problem}", ctx=ctx, param=param)
    return value


def seed_option(help_text: str) -> Callable[[_Command], _Command]:
    """``--seed N``: a whole number in 0..2**63-1 (what ``torch.Generator.manual_seed`` takes without wrapping)."""
    from sada_audio.config import MAX_SEED

    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED), help=help_text)


def _apply_options(command: _Command, options: list[Callable[[_Command], _Command]]) -> _Command:
    for option in reversed(options):
        command = option(command)
    return command


def model_options(command: _Command) -> _Command:
    """``--model --scheduler --accelerate --device --dtype``: which pipeline runs, where, and how."""
    return _apply_options(
        command,
        [
            click.option(
                "-m",
                "--model",
                default=DEFAULT_MODEL,
                show_default=True,
                metavar="MODEL",
                help=f"Hugging Face hub id, local pipeline directory, or short name ({', '.join(MODEL_ALIASES)}).",
            ),
            click.option(
                "--scheduler",
                type=click.Choice(SCHEDULER_OPTION_CHOICES),
                callback=resolve_scheduler_option,
                help="Sampler to use instead of the model's own.  [default: the SADA level's (unipc for the audio "
                "models' default level); the model's own with --accelerate none]",
            ),
            click.option(
                "--accelerate",
                type=click.Choice(["sada", "none"]),
                default="sada",
                show_default=True,
                help="'sada' runs SADA's level (--sada-level) for the model's family; 'none' runs the unmodified "
                "pipeline.",
            ),
            click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda, cuda:1."),
            click.option(
                "--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP
            ),
        ],
    )


# Clips longer than this are refused unless --allow-long: the models were trained on ~10 s clips, and a UNet
# call's time and memory grow with the latent's length (a 1000 s clip takes tens of minutes on a CPU).
DURATION_LIMIT_S = 120.0


def check_duration(duration: float | None, allow_long: bool, what: str = "--duration") -> None:
    """Refuse a clip longer than :data:`DURATION_LIMIT_S` seconds unless ``allow_long``."""
    if duration is not None and duration > DURATION_LIMIT_S and not allow_long:
        raise click.BadParameter(
            f"{duration:g} s is longer than the {DURATION_LIMIT_S:g} s limit: these models were trained on ~10 s "
            "clips, and time and memory grow with the length; pass --allow-long to generate it anyway",
            param_hint=what,
        )


def _check_duration_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    check_duration(value, bool(ctx.params.get("allow_long")))
    return value


def warn_if_memory_heavy(
    waveforms: int, duration: float | None, dtype: str, device: str, hint: str, force: bool = False
) -> None:
    """Before the model loads: refuse one pipeline call of ``waveforms`` waveforms of ``duration`` seconds that
    needs more memory than ``device`` has in all (unless ``force``: ``--ignore-memory-estimate``), and warn on
    stderr when it will not fit in the memory free there; ``hint`` says which option lowers it."""
    from sada_audio.memory import memory_refusal, memory_warning

    refusal = None if force else memory_refusal(waveforms, duration, dtype, device)
    if refusal is not None:
        raise click.UsageError(f"{refusal}; {hint}, or pass --ignore-memory-estimate to try anyway")
    warning = memory_warning(waveforms, duration, dtype, device)
    if warning is not None:
        click.echo(f"Warning: {warning}; {hint}.", err=True)


def memory_option(command: _Command) -> _Command:
    """``--ignore-memory-estimate``: run a request that the memory estimate says cannot fit (``generate``,
    ``render``)."""
    return click.option(
        "--ignore-memory-estimate",
        is_flag=True,
        help="Run even when the estimated memory of one pipeline call exceeds what the device has in all "
        "(the estimate is rough; without this flag such a request is refused before the model loads).",
    )(command)


def compile_option(command: _Command) -> _Command:
    """``--compile``: how the denoiser is compiled (``generate``, ``render``, ``benchmark``)."""
    return click.option(
        "--compile",
        "compile_mode",
        type=click.Choice(COMPILE_MODES),
        default="none",
        show_default=True,
        help=COMPILE_HELP,
    )(command)


def dtype_name(dtype: str, device: str, model: str) -> str:
    """``--dtype`` as the run uses it (``auto`` resolved for ``device`` and ``model``), e.g. ``"float16"``."""
    from sada_audio.pipelines import parse_device, resolve_dtype

    return str(resolve_dtype(dtype, parse_device(device), model)).removeprefix("torch.")


def sampling_options(command: _Command) -> _Command:
    """``--steps --duration --guidance --allow-long``: the settings every clip of a run shares unless told
    otherwise."""
    return _apply_options(
        command,
        [
            click.option(
                "--steps",
                type=click.IntRange(min=1),
                help="Denoising steps.  [default: the SADA level's (25 for the audio models' default level); 50 with "
                "--accelerate none]",
            ),
            click.option(
                "--allow-long",
                is_flag=True,
                is_eager=True,  # read before --duration, whose check depends on it
                help=f"Allow clips longer than {DURATION_LIMIT_S:g} s.",
            ),
            click.option(
                "--duration",
                type=FiniteFloatRange(min=0, min_open=True),
                metavar="SECONDS",
                callback=_check_duration_option,
                help="Length of the clip in seconds.  [default: the model's own]",
            ),
            click.option(
                "--guidance",
                default=2.0,
                show_default=True,
                type=FiniteFloatRange(min=0),
                help="Classifier-free guidance scale.",
            ),
        ],
    )


def load_pipeline(*args: Any, **kwargs: Any) -> Any:
    """:func:`sada_audio.pipelines.load_pipeline`, imported when a command loads its model: the command line
    builds its options and reports argument errors without torch."""
    from sada_audio.pipelines import load_pipeline as load

    return load(*args, **kwargs)


def check_steps_before_loading(model: str, scheduler: str | None, steps: int) -> None:
    """Reject a step count the model's scheduler cannot run, before any weights load (where its config is on
    disk: local directories and the embedded model; Hub models are checked once loaded)."""
    from sada_audio.pipelines import check_steps, local_scheduler

    local = local_scheduler(model, scheduler)
    if local is not None:
        check_steps(local, steps)


def load_for_command(
    model: str, scheduler: str | None, device: str, dtype: str, compile_mode: str = "none"
) -> tuple[Any, float]:
    """Load ``model`` onto ``device`` in ``dtype`` (``auto`` resolved), swap in ``scheduler`` if given, compile
    the denoiser in ``compile_mode``; return the pipeline and the load time.

    A missing directory or an unknown name fails at once, before any weights are read.
    """
    from sada_audio.pipelines import check_compile_mode, compile_denoiser, parse_device, resolve_dtype, set_scheduler

    quiet_libraries()
    torch_device = parse_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, model)
    check_compile_mode(compile_mode, torch_device)
    started = time.perf_counter()
    pipe = load_pipeline(model, device=torch_device, dtype=torch_dtype)
    load_time = time.perf_counter() - started
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    compile_denoiser(pipe, compile_mode)
    return pipe, load_time
