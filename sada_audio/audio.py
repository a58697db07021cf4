"""Small, predictable audio and file helpers: format checks, atomic WAV / FLAC / JSON writes.

Every write goes to a temporary file in the destination directory, is flushed and fsynced, and
then renamed over the destination with :func:`os.replace`. A reader therefore sees either the old
file or the complete new one, never a partial file, and an exception leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from sada_audio.errors import SADAError, UnsupportedModelError

logger = logging.getLogger(__name__)

#: Audio file extensions (lower case) mapped to their soundfile container format.
AUDIO_FORMATS: dict[str, str] = {".wav": "WAV", ".flac": "FLAC"}

# 16-bit PCM: readable everywhere, and FLAC has no float subtype.
_SUBTYPE = "PCM_16"


def audio_format(path: str | os.PathLike[str]) -> str:
    """Return the soundfile format ("WAV" or "FLAC") chosen by the extension of ``path``.

    Raises:
        SADAError: the extension is not one of :data:`AUDIO_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_FORMATS:
        raise SADAError(
            f"unsupported audio file extension {suffix or '(none)'!r} in '{path}'; "
            f"use one of {', '.join(AUDIO_FORMATS)}"
        )
    return AUDIO_FORMATS[suffix]


def utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (it holds a lone surrogate: bytes that were not UTF-8 text, or a
    broken JSON escape such as ``"\\udc80"``), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"holds {text[error.start]!r}, which is no character (bytes that are not UTF-8 text?)"
    return None


def check_output_path(
    path: str | os.PathLike[str], overwrite: bool, extensions: Collection[str] = tuple(AUDIO_FORMATS)
) -> Path:
    """Check that ``path`` can be written, before any expensive work is done.

    Args:
        path: the file to be written.
        overwrite: whether an existing file at ``path`` may be replaced.
        extensions: the accepted extensions, lower case with the dot (default: the audio formats).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SADAError: with a one-line message if the extension is not accepted, the path is a
            directory, the file exists and ``overwrite`` is false, the parent directory does
            not exist or is not writable, or the name (with the temporary file's additions) is longer
            than the file system takes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in extensions:
        raise SADAError(
            f"unsupported output file extension {suffix or '(none)'!r} in '{path}'; use one of {', '.join(extensions)}"
        )
    if path.is_dir():
        raise SADAError(f"output path '{path}' is a directory")
    if path.exists() and not overwrite:
        raise SADAError(f"output file '{path}' already exists (use --overwrite to replace it)")
    parent = path.parent
    if not parent.is_dir():
        raise SADAError(f"output directory '{parent}' does not exist or is not a directory")
    name_max = _name_max(parent)
    if len(temporary_path(path).name.encode("utf-8", "replace")) > name_max:
        raise SADAError(
            f"output file name '{path.name}' is too long for the file system: "
            f"{len(path.name.encode('utf-8', 'replace'))} bytes, at most {name_max - _TEMPORARY_EXTRA} here"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SADAError(f"output directory '{parent}' is not writable")
    return path


# what temporary_path adds to a name: "." + "." + 12 hex digits + ".tmp"
_TEMPORARY_EXTRA = 18


def temporary_path(path: Path) -> Path:
    """The hidden file next to ``path`` that :func:`write_atomically` writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _name_max(directory: Path) -> int:
    """The longest file name, in bytes, the file system of ``directory`` takes (255 where it does not say)."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
        return 255


def write_audio(path: str | os.PathLike[str], waveform: np.ndarray, sample_rate: int) -> Path:
    """Write ``waveform`` atomically as 16-bit WAV or FLAC, chosen by the extension of ``path``.

    Args:
        path: destination; its extension must be one of :data:`AUDIO_FORMATS`.
        waveform: float samples in [-1, 1], shape ``(samples,)`` (mono) or ``(samples, channels)``.
            Samples outside [-1, 1] are clipped (with a warning).
        sample_rate: samples per second, positive.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SADAError: unsupported extension, or a waveform that is empty or not finite.
        ValueError: a waveform of the wrong rank or a non-positive sample rate.
    """
    path = Path(path)
    file_format = audio_format(path)
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"waveform must have shape (samples,) or (samples, channels), got {data.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if data.size == 0:
        raise SADAError(f"refusing to write an empty waveform to '{path}'")
    if not np.isfinite(data).all():
        raise SADAError(f"refusing to write '{path}': the waveform contains NaN or infinite values")
    peak = float(np.abs(data).max())
    if peak > 1.0:
        logger.warning("waveform peak %.3f exceeds 1.0; clipping before writing %s", peak, path)
        data = np.clip(data, -1.0, 1.0)
    # encoded in memory, then written in one piece: a full disk is then one OSError from a plain write, not
    # errors raised inside libsndfile's callbacks (which it reports as ignored exceptions or assertion failures)
    encoded = io.BytesIO()
    sf.write(encoded, data, sample_rate, format=file_format, subtype=_SUBTYPE)
    write_atomically(path, lambda f: f.write(encoded.getbuffer()))
    logger.info("wrote %s (%d samples at %d Hz)", path, data.shape[0], sample_rate)
    return path


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` atomically as indented UTF-8 JSON (with a trailing newline) to ``path``.

    Raises:
        TypeError: ``obj`` is not JSON-serialisable (nothing is written).
    """
    path = Path(path)
    # Serialise first, so an unserialisable object fails before any file is touched.
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_text(path, text)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` atomically as UTF-8 to ``path``."""
    path = Path(path)
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    logger.info("wrote %s", path)
    return path


def pipeline_sample_rate(pipe: Any) -> int:
    """Return the output sample rate of an audio diffusion pipeline (read from its vocoder).

    Raises:
        UnsupportedModelError: the pipeline has no vocoder with a ``sampling_rate``.
    """
    rate = getattr(getattr(getattr(pipe, "vocoder", None), "config", None), "sampling_rate", None)
    if rate is None:
        raise UnsupportedModelError(f"cannot tell the sample rate of {type(pipe).__name__}: it has no vocoder")
    return int(rate)


_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (to the handlers that were in place).

    An exception raised by a signal inside a C library's callback (soundfile writes through Python callbacks) can
    corrupt the library's state; deferred to the end of the block, it lands at a safe point. Outside the main
    thread signals cannot be caught, and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in _DEFERRED_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Run ``write`` on a temporary binary file next to ``path``, fsync it, then rename it to ``path``.

    A reader sees the old file or the complete new one; if ``write`` raises, nothing is left behind. Ctrl-C and
    SIGTERM wait until the write is complete or undone (:func:`deferred_signals`).
    """
    path = Path(path)
    tmp = temporary_path(path)
    with deferred_signals():
        # O_EXCL never clobbers anything; mode 0o666 lets the umask decide, as for an ordinary file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, OSError) and error.filename is None:
                error.filename = str(path)  # a failed write() names no file: the error names the destination
            raise
        _fsync_directory(path.parent)


def write_all_or_nothing(writes: Collection[Callable[[], Path]]) -> list[Path]:
    """Run ``writes`` (each writes one file atomically and returns its path) in order; if one fails, remove the
    files the earlier ones wrote, so that a clip's audio never stands without its sidecar. Returns the paths.

    A file an earlier write replaced stays replaced: the caller decides beforehand what may be overwritten.
    """
    written: list[Path] = []
    try:
        for write in writes:
            written.append(write())
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def write_clip(
    audio: Sequence[tuple[str | os.PathLike[str], np.ndarray]],
    sample_rate: int,
    sidecar: str | os.PathLike[str],
    meta: Any,
    *,
    first: Sequence[Callable[[], Path]] = (),
) -> list[Path]:
    """Write a clip: its audio files (``(path, waveform)`` pairs, :func:`write_audio`), then its JSON sidecar
    (:func:`write_json`), all or nothing (:func:`write_all_or_nothing`), so that no audio stands without the
    sidecar that describes it. ``first``: writes to run before them (render's claim on the clip). Returns the
    paths written."""
    writes = [
        *first,
        *(functools.partial(write_audio, path, waveform, sample_rate) for path, waveform in audio),
        functools.partial(write_json, sidecar, meta),
    ]
    return write_all_or_nothing(writes)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; elsewhere the rename is enough)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
