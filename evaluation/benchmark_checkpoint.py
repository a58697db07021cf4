"""The finished blocks of a ``sada-audio benchmark`` run, kept on disk so that a stopped run resumes.

A run is cut into blocks, each saved as soon as it is finished: on the quality workload a sampler's clip (the
baseline and every method on one prompt and seed, in the interleaved order) or, with a compiled denoiser, a
sampler's method (every clip); on the step-cost workload one latent size. ``--resume`` loads the finished blocks
and runs the others, so a resumed run's records equal an uninterrupted one's (timings aside): every clip starts
from its own seed, whatever ran before it.

The folder (:data:`PROGRESS_DIR` inside the output folder) holds ``run.json`` (what was asked: the settings, the
model, the machine's device and precision; a resume with other settings is refused), one JSON file per finished
block and, with a compiled denoiser, the baseline's waveforms (``.npy``) that the later methods are compared
with. It is removed once the results are written. Plain files and numpy: importable without torch.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sada_audio.audio import write_atomically, write_text
from sada_audio.errors import SADAError

__all__ = ["PROGRESS_DIR", "BenchmarkProgress"]

logger = logging.getLogger(__name__)

#: The folder of a run's finished blocks, inside the benchmark's output folder.
PROGRESS_DIR = "progress"
_RUN_FILE = "run.json"


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (``json.dumps``'s ``default``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(obj: Any) -> str:
    # infinities and NaN as JSON's extensions (a metric can be inf): json.loads reads them back as floats
    return json.dumps(obj, default=_plain, ensure_ascii=False) + "\n"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")[:80] or "-"


class BenchmarkProgress:
    """A run's finished blocks in ``directory`` (see the module's docstring); ``run`` is what identifies the run."""

    def __init__(self, directory: Path, run: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.run = json.loads(_dumps(run))  # as it reads back from run.json

    @classmethod
    def start(cls, directory: Path, run: dict[str, Any]) -> BenchmarkProgress:
        """A new run: an earlier run's blocks in ``directory`` are removed."""
        progress = cls(directory, run)
        if directory.is_symlink() or directory.is_file():
            directory.unlink()
        elif directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        write_text(directory / _RUN_FILE, _dumps(progress.run))
        return progress

    @classmethod
    def resume(cls, directory: Path, run: dict[str, Any]) -> BenchmarkProgress:
        """The stopped run in ``directory``, to be continued.

        Raises:
            SADAError: there is no stopped run, or it was asked for with other settings (the message names them).
        """
        progress = cls(directory, run)
        try:
            earlier = json.loads((directory / _RUN_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SADAError(f"nothing to resume: '{directory.parent}' holds no stopped benchmark run") from None
        except (OSError, ValueError) as error:
            raise SADAError(f"cannot read the stopped run in '{directory}': {error}") from error
        if earlier != progress.run:
            keys = _differences(earlier, progress.run)
            raise SADAError(
                f"the stopped run in '{directory.parent}' was asked for with other settings ({', '.join(keys)}): "
                "resume it with its own command line, or start over with --overwrite"
            )
        return progress

    def _block_path(self, part: str, position: int, key: str) -> Path:
        return self.directory / _safe(part) / f"{position:04d}-{_safe(key)}.json"

    def load(self, part: str, position: int, key: str) -> dict[str, Any] | None:
        """The saved block ``key`` (at ``position`` of ``part``'s plan), or None if it did not finish."""
        path = self._block_path(part, position, key)
        try:
            block = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # written atomically, so only a damaged disk or a hand edit
            logger.warning("benchmark: block %s of %s is unreadable (%s); running it again", key, part, error)
            return None
        return block if isinstance(block, dict) and block.get("key") == key else None

    def save(self, part: str, position: int, key: str, block: dict[str, Any]) -> None:
        """Save a finished block (atomically: a run stopped while saving leaves the block unfinished)."""
        path = self._block_path(part, position, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, _dumps({**block, "key": key}))

    def save_waveform(self, part: str, name: str, waveform: np.ndarray) -> None:
        path = self.directory / _safe(part) / f"{_safe(name)}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda file: np.save(file, np.asarray(waveform), allow_pickle=False))

    def load_waveform(self, part: str, name: str) -> np.ndarray:
        return np.load(self.directory / _safe(part) / f"{_safe(name)}.npy", allow_pickle=False)

    def finish(self) -> None:
        """The results are written: the blocks are no longer needed."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(a.keys() | b.keys()):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            keys.append(prefix + key)
    return keys
