"""What every ``sada-audio`` command shares: one-line errors, logging, and the model and sampling options."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import diffusers.utils.logging
import transformers.utils.logging

from sada_audio.errors import SADAError
from sada_audio.pipelines import (
    MODEL_ALIASES,
    SCHEDULER_CHOICES,
    load_pipeline,
    parse_device,
    parse_dtype,
    set_scheduler,
)

DTYPE_CHOICES = ("float32", "float16", "bfloat16")
DEFAULT_MODEL = "tiny-musicldm"

_Command = TypeVar("_Command", bound=Callable[..., Any])


class OneLineError(click.ClickException):
    """Bad input: shown as a single ``Error: ...`` line on stderr, exit status 2, no traceback."""

    exit_code = 2


def single_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn click usage errors and the library's :class:`SADAError` into :class:`OneLineError`."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare command shows its help, as click does
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        raise OneLineError(single_line(error.format_message()) + hint) from error
    except SADAError as error:
        raise OneLineError(single_line(str(error))) from error


class Group(click.Group):
    """A click group whose parameter and library errors are one line long (click's usage errors
    otherwise print the usage and a hint first)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


class _EchoHandler(logging.Handler):
    """Writes log records to the current stderr through click (which may be swapped by tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    """Route sada_audio's log records to stderr; below -v, silence the loading bars and warnings of
    diffusers and transformers, so that the command's own progress bar is the only one on the terminal."""
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


@contextlib.contextmanager
def progress_bar(items: Sequence[Any], label: str) -> Iterator[Any]:
    """A progress bar over ``items`` (the evaluation's ``Progress``); click draws it only on a terminal, on
    stderr, so that stdout stays the result summary."""
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar


def prepare_clip_dir(directory: Path, overwrite: bool, suffixes: Collection[str], *, recursive: bool = False) -> Path:
    """A folder for generated clips: new, or emptied (with ``overwrite``) of an earlier run's files whose
    suffixes are in ``suffixes`` (lower case, with the dot), also in subfolders if ``recursive``.

    Raises:
        click.UsageError: earlier clips are there and ``overwrite`` is false.
    """
    directory.mkdir(exist_ok=True)
    files = directory.rglob("*") if recursive else directory.iterdir()
    earlier = [path for path in files if path.suffix.lower() in suffixes and path.is_file()]
    if earlier and not overwrite:
        raise click.UsageError(f"'{directory}' already holds clips of an earlier run (use --overwrite to replace them)")
    for path in earlier:
        path.unlink()
    return directory


def check_prompt(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("the prompt is empty", ctx=ctx, param=param)
    return value


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
                type=click.Choice(list(SCHEDULER_CHOICES)),
                help="Sampler to use instead of the model's own.  [default: the model's own]",
            ),
            click.option(
                "--accelerate",
                type=click.Choice(["sada", "none"]),
                default="sada",
                show_default=True,
                help="'sada' applies the preset of the model family; 'none' runs the unmodified pipeline.",
            ),
            click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda, cuda:1."),
            click.option(
                "--dtype",
                type=click.Choice(DTYPE_CHOICES),
                default="float32",
                show_default=True,
                help="Precision of the weights and the computation.",
            ),
        ],
    )


def sampling_options(command: _Command) -> _Command:
    """``--steps --duration --guidance``: the settings every clip of a run shares unless told otherwise."""
    return _apply_options(
        command,
        [
            click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1), help="Denoising steps."),
            click.option(
                "--duration",
                type=click.FloatRange(min=0, min_open=True),
                metavar="SECONDS",
                help="Length of the clip in seconds.  [default: the model's own]",
            ),
            click.option(
                "--guidance",
                default=2.0,
                show_default=True,
                type=click.FloatRange(min=0),
                help="Classifier-free guidance scale.",
            ),
        ],
    )


def load_for_command(model: str, scheduler: str | None, device: str, dtype: str) -> tuple[Any, float]:
    """Load ``model`` onto ``device`` in ``dtype``, swap in ``scheduler`` if given; return it and the load time.

    A missing directory or an unknown name fails at once, before any weights are read.
    """
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype)
    started = time.perf_counter()
    pipe = load_pipeline(model, device=torch_device, dtype=torch_dtype)
    load_time = time.perf_counter() - started
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    return pipe, load_time
