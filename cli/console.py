"""The command line's console: one-line errors, interruptions, logging, and the lazily loaded command group.

Imports nothing heavy (no torch, diffusers or transformers at import time), so that ``sada-audio --help``,
``--version`` and a mistyped command answer at once.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from sada_audio.errors import SADAError


class OneLineError(click.ClickException):
    """Bad input: shown as a single ``Error: ...`` line on stderr, exit status 2, no traceback."""

    exit_code = 2


def single_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class ResourceError(click.ClickException):
    """The machine ran out of something the user cannot change from the command line: one line, exit status 1."""

    exit_code = 1


# errors of the file system that the user can fix (free space, permissions, another folder), with the hint
_FIXABLE_OS_ERRORS = {
    errno.ENOSPC: "free some space or write to another disk",
    errno.EDQUOT: "free some space or write to another disk",
    errno.EACCES: "check the permissions or write to another folder",
    errno.EPERM: "check the permissions or write to another folder",
    errno.EROFS: "write to another folder",
}


# what torch's CPU allocator says when an allocation fails (a RuntimeError, not torch.OutOfMemoryError)
_ALLOCATION_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def _is_out_of_memory(error: BaseException) -> bool:
    # torch.OutOfMemoryError by name: this module must not import torch (the CLI starts without it)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(failure in str(error) for failure in _ALLOCATION_FAILURES)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn click usage errors, the library's :class:`SADAError`, full disks, missing permissions and exhausted
    memory into one ``Error:`` line: exit status 2 for what the user can change, 1 for running out of memory."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare command shows its help, as click does
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        raise OneLineError(single_line(error.format_message()) + hint) from error
    except SADAError as error:
        raise OneLineError(single_line(str(error))) from error
    except OSError as error:
        if error.errno not in _FIXABLE_OS_ERRORS:
            raise
        where = f" writing '{error.filename}'" if error.filename else ""
        raise OneLineError(f"{error.strerror or error}{where}: {_FIXABLE_OS_ERRORS[error.errno]}") from error
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        message = single_line(str(error))[:200] or "out of memory"
        raise ResourceError(
            f"out of memory ({message}); try fewer waveforms, a shorter duration, a smaller batch or --dtype float16"
        ) from error


class _Interrupted(SystemExit):
    """Ctrl-C or SIGTERM: unwinds (the atomic writes remove their temporary files), exit status 128 + signal."""


@contextlib.contextmanager
def interruptible(hint: str | None = None) -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C instead of killing at once; both end with ``hint`` (if any) and the shell's
    status for the signal (130, 143), not click's 'Aborted!' with 1 (which means a failure)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(128 + signum)

    handle_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if handle_term else None
    try:
        yield
    except (KeyboardInterrupt, _Interrupted) as error:
        status = error.code if isinstance(error, _Interrupted) else 128 + signal.SIGINT
        click.echo(f"Interrupted: {hint}." if hint else "Interrupted.", err=True)
        raise SystemExit(status) from None
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, previous)


class Group(click.Group):
    """A click group whose parameter and library errors are one line long (click's usage errors
    otherwise print the usage and a hint first), and which is :func:`interruptible` from the start: Ctrl-C
    while the arguments are parsed or a command's modules are imported exits with 130, not click's 'Aborted!'
    with 1."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with interruptible(), one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with interruptible(), one_line_errors():
            return super().invoke(ctx)


class _EchoHandler(logging.Handler):
    """Writes log records to the current stderr through click (which may be swapped by tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


# -v as given to the group; applied to diffusers and transformers by quiet_libraries when a command needs them
_VERBOSITY = {"level": 0}


def configure_logging(verbosity: int) -> None:
    """Route sada_audio's log records to stderr at the level ``verbosity`` asks for, and remember it for
    :func:`quiet_libraries` (the libraries are not imported here: argument errors must not wait for torch)."""
    _VERBOSITY["level"] = verbosity
    package_logger = logging.getLogger("sada_audio")
    for handler in [h for h in package_logger.handlers if isinstance(h, _EchoHandler)]:
        package_logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


def quiet_libraries() -> None:
    """Below -v, silence the loading bars and warnings of diffusers and transformers, so that the command's own
    progress bar is the only one on the terminal. Commands call it before they load models."""
    import diffusers.utils.logging
    import transformers.utils.logging

    quiet = _VERBOSITY["level"] == 0
    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity(logging.ERROR if quiet else logging.WARNING)
        (library.disable_progress_bar if quiet else library.enable_progress_bar)()


class LazyGroup(Group):
    """A :class:`Group` whose commands live in modules imported only when the command runs (they import torch and
    diffusers); its help lists them from ``commands``: name -> (module, one-line help)."""

    def __init__(self, *args: Any, commands: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy_commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands:
            return None
        module = importlib.import_module(self.lazy_commands[cmd_name][0])
        return getattr(module, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in self.lazy_commands.items()])
