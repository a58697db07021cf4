"""Evaluate a folder of test clips against a folder of reference clips (same prompts, same seeds).

Files are paired by name (``a.wav`` with ``a.flac`` too), each with its JSON sidecar when there is one.
A file that cannot be used -- unmatched, unreadable, empty, silent, too short, or whose metrics fail -- is
listed under ``problems`` and the run goes on. A test clip at another sample rate than its reference is
resampled to the reference's rate (``librosa.resample``), and the pair says so in its ``notes``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import librosa
import numpy as np
import soundfile as sf

from sada_audio.errors import SADAError

from . import sidecars
from .embeddings import set_metrics
from .lpips import LPIPS, SCALING_CONVENTION, load_lpips, spectrogram_lpips
from .metrics import (
    METRICS,
    SPECTROGRAM_CONVENTION,
    MetricUnavailableError,
    log_mel_l1,
    log_mel_spectrogram,
    multi_resolution_stft_distance,
    si_sdr,
    spectral_convergence,
    spectrogram_psnr,
    spectrogram_ssim,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_DURATION_S",
    "SILENCE_PEAK",
    "Progress",
    "no_progress",
    "Clip",
    "UnusableClipError",
    "Evaluation",
    "read_clip",
    "pair_files",
    "align",
    "pair_metrics",
    "evaluate_directories",
    "key_metric",
    "pool_frames",
    "THUMBNAIL_FRAMES",
]

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
#: Shorter clips are reported, not evaluated: AlexNet's pooling needs 31 spectrogram frames (0.31 s).
MIN_DURATION_S = 0.5
#: A clip whose peak is below one 16-bit step is silent.
SILENCE_PEAK = 1 / 32768
_RESAMPLER = "soxr_hq"

_Item = TypeVar("_Item")
#: Wraps the items of a long loop, e.g. in a progress bar: ``progress(items, label)`` is a context manager
#: that yields the items.
Progress = Callable[[Sequence[_Item], str], AbstractContextManager[Iterable[_Item]]]


def no_progress(items: Sequence[_Item], label: str) -> AbstractContextManager[Iterable[_Item]]:
    return contextlib.nullcontext(items)


class UnusableClipError(Exception):
    """A clip that cannot be evaluated; the message is the reason shown in the report."""


@dataclass
class Clip:
    """A readable, non-silent mono clip and its sidecar (None without one)."""

    path: Path
    waveform: np.ndarray
    sample_rate: int
    sidecar: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _read_sidecar(path: Path, notes: list[str]) -> dict[str, Any] | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        notes.append(f"sidecar {sidecar.name} ignored: {' '.join(str(error).split())}")
        return None
    if not isinstance(data, dict):
        notes.append(f"sidecar {sidecar.name} ignored: not a JSON object")
        return None
    return data


def read_clip(path: Path) -> Clip:
    """Read an audio file as a mono float32 clip (channels averaged), with its JSON sidecar.

    Raises:
        UnusableClipError: unreadable, empty, not finite, silent, or shorter than :data:`MIN_DURATION_S`.
    """
    try:
        if path.stat().st_size == 0:
            raise UnusableClipError("empty file (0 bytes)")
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except UnusableClipError:
        raise
    except Exception as error:  # libsndfile reports every format problem with its own exception types
        raise UnusableClipError(f"unreadable: {' '.join(str(error).split())}") from error
    notes: list[str] = []
    if data.size == 0:
        raise UnusableClipError("empty: no samples")
    if not np.isfinite(data).all():
        raise UnusableClipError("contains NaN or infinite samples")
    if data.shape[1] > 1:
        notes.append(f"{path.name}: mixed down from {data.shape[1]} channels")
    waveform = data.mean(axis=1)
    if float(np.abs(waveform).max()) < SILENCE_PEAK:
        raise UnusableClipError("silent: the peak is below one 16-bit step")
    if len(waveform) < MIN_DURATION_S * rate:
        raise UnusableClipError(f"too short: {len(waveform) / rate:.3f} s (the metrics need {MIN_DURATION_S} s)")
    return Clip(path, waveform, int(rate), _read_sidecar(path, notes), notes)


def _read_or_report(path: Path, problems: list[dict[str, str]]) -> Clip | None:
    try:
        return read_clip(path)
    except UnusableClipError as error:
        problems.append({"file": str(path), "reason": str(error)})
        return None


def _audio_files(directory: Path, role: str, problems: list[dict[str, str]]) -> list[Path]:
    if not directory.is_dir():
        raise SADAError(f"{role} directory '{directory}' does not exist or is not a directory")
    # hidden files include the temporary files of atomic writes in progress
    named = sorted(
        p for p in directory.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")
    )
    files = [p for p in named if p.is_file()]
    for path in named:
        if not path.is_file():
            problems.append({"file": str(path), "reason": "not a file (a directory or special file named like audio)"})
    if not files:
        raise SADAError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the {role} directory '{directory}'; "
            "pass the folders that hold the clips"
        )
    return files


def _by_name(files: list[Path], problems: list[dict[str, str]]) -> tuple[dict[str, Path], set[str]]:
    """The files by name, and the names several files share (reported as ambiguous, left out)."""
    counts = Counter(p.stem for p in files)
    for path in files:
        if counts[path.stem] > 1:
            others = ", ".join(p.name for p in files if p.stem == path.stem and p != path)
            problems.append({"file": str(path), "reason": f"ambiguous: {others} has the same name; keep one"})
    return {p.stem: p for p in files if counts[p.stem] == 1}, {name for name, count in counts.items() if count > 1}


def pair_files(reference_dir: Path, test_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[dict[str, str]]]:
    """Pair the audio files of two folders by name (the file name without its extension).

    Returns:
        ``(name, reference, test)`` triples sorted by name, and the problems: unmatched or ambiguous files, and
        entries named like audio that are no files.

    Raises:
        SADAError: a folder is missing or holds no audio files.
    """
    problems: list[dict[str, str]] = []
    references, ambiguous_references = _by_name(_audio_files(reference_dir, "reference", problems), problems)
    tests, ambiguous_tests = _by_name(_audio_files(test_dir, "test", problems), problems)
    for name in sorted(references.keys() - tests.keys()):
        reason = (
            "not evaluated: its test clip is ambiguous"
            if name in ambiguous_tests
            else "unmatched: no test clip of this name"
        )
        problems.append({"file": str(references[name]), "reason": reason})
    for name in sorted(tests.keys() - references.keys()):
        reason = (
            "not evaluated: its reference clip is ambiguous"
            if name in ambiguous_references
            else "unmatched: no reference clip of this name"
        )
        problems.append({"file": str(tests[name]), "reason": reason})
    return [(name, references[name], tests[name]) for name in sorted(references.keys() & tests.keys())], problems


def align(reference: Clip, test: Clip) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The two waveforms at the reference's rate and of equal length, and notes saying what was changed."""
    notes = reference.notes + test.notes + sidecars.mismatch_notes(reference.sidecar, test.sidecar)
    waveform = test.waveform
    if test.sample_rate != reference.sample_rate:
        waveform = librosa.resample(
            waveform, orig_sr=test.sample_rate, target_sr=reference.sample_rate, res_type=_RESAMPLER
        )
        notes.append(
            f"test resampled from {test.sample_rate} Hz to the reference's {reference.sample_rate} Hz "
            f"(librosa.resample, {_RESAMPLER})"
        )
    length = min(len(reference.waveform), len(waveform))
    if len(reference.waveform) != len(waveform):
        rate = reference.sample_rate
        notes.append(
            f"lengths differ (reference {len(reference.waveform) / rate:.3f} s, test {len(waveform) / rate:.3f} s): "
            f"both cut to {length / rate:.3f} s"
        )
    return reference.waveform[:length], waveform[:length], notes


def pair_metrics(
    reference: np.ndarray,
    test: np.ndarray,
    sample_rate: int,
    lpips_model: LPIPS | None,
    mels: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every fidelity metric of one aligned pair (LPIPS only with a model); ``mels``: the pair's log-mel
    spectrograms if the caller has them already."""
    if mels is None:
        mels = log_mel_spectrogram(reference, sample_rate), log_mel_spectrogram(test, sample_rate)
    ref_mel, test_mel = mels
    values = {
        "log_mel_l1": log_mel_l1(ref_mel, test_mel),
        "mel_psnr": spectrogram_psnr(ref_mel, test_mel),
        "mel_ssim": spectrogram_ssim(ref_mel, test_mel),
        "mr_stft": multi_resolution_stft_distance(reference, test),
        "spectral_convergence": spectral_convergence(reference, test),
        "si_sdr": si_sdr(reference, test),
    }
    if lpips_model is not None:
        values = {"lpips": spectrogram_lpips(lpips_model, ref_mel, test_mel), **values}
    return values


def _summary(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for metric, info in METRICS.items():
        scored = [(pair["metrics"][metric], pair["name"]) for pair in pairs if metric in pair["metrics"]]
        if not scored:
            continue
        values = np.array([value for value, _ in scored])
        worst = min(scored) if info.higher_is_better else max(scored)
        summary[metric] = {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "worst": worst[0],
            "worst_clip": worst[1],
            "count": len(scored),
            "higher_is_better": info.higher_is_better,
        }
    return summary


def key_metric(summary: dict[str, Any]) -> str | None:
    """The metric that ranks pairs for the figures: LPIPS when it ran, else the log-mel L1."""
    return next((m for m in ("lpips", "log_mel_l1") if m in summary), None)


def _set_metrics(evaluated: list[tuple[dict[str, Any], Clip, Clip]], embedding: str | None) -> dict[str, Any]:
    """The set metrics' summary; each pair's CLAP scores go into its record."""
    if not evaluated:
        return {"embedding": None}
    summary, scores = set_metrics(
        embedding,
        [(ref.waveform, ref.sample_rate) for _, ref, _ in evaluated],
        [(test.waveform, test.sample_rate) for _, _, test in evaluated],
        [sidecars.prompt(ref.sidecar, test.sidecar) for _, ref, test in evaluated],
    )
    for (record, _, _), score in zip(evaluated, scores, strict=True):
        if score is not None:
            record["clap_score"] = score
    return summary


def _load_lpips_or_reason(backbone: str | None, heads: str | None) -> tuple[LPIPS | None, dict[str, Any]]:
    try:
        model = load_lpips(backbone, heads)
    except MetricUnavailableError as error:
        logger.warning("LPIPS unavailable: %s", error)
        return None, {"status": f"unavailable: {error}"}
    return model, {"status": "ok", "backbone": backbone or "torch hub cache (alexnet-owt-7be5be79.pth)", "heads": heads}


@dataclass
class Evaluation:
    """The report (JSON-ready) and the spectrograms of the pairs the figures show (``worst``, ``median``).

    ``thumbnails``: every pair's reference and test log-mel spectrogram, time pooled to at most
    :data:`THUMBNAIL_FRAMES` frames, float16 (for the HTML report); ``test_stats``: the SADA statistics of
    the test clips whose sidecars have them (step modes, sparsity map).
    """

    report: dict[str, Any]
    figure_pairs: dict[str, tuple[str, np.ndarray, np.ndarray]]
    thumbnails: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    test_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Time frames of a pair's spectrogram thumbnail (10 ms frames are averaged beyond this).
THUMBNAIL_FRAMES = 256


def pool_frames(mel: np.ndarray, frames: int = THUMBNAIL_FRAMES) -> np.ndarray:
    """``mel`` (bins, frames) with its frames averaged in consecutive groups down to at most ``frames``."""
    if mel.shape[1] <= frames:
        return mel
    return np.stack([group.mean(axis=1) for group in np.array_split(mel, frames, axis=1)], axis=1)


def evaluate_directories(
    reference_dir: Path,
    test_dir: Path,
    *,
    lpips_backbone: str | None = None,
    lpips_heads: str | None = None,
    embedding: str | None = None,
    progress: Progress = no_progress,
) -> Evaluation:
    """Pair the clips of two folders, compute the fidelity metrics per pair, their summary, and the set metrics.

    Args:
        reference_dir, test_dir: folders of audio files (and JSON sidecars), paired by file name.
        lpips_backbone, lpips_heads: LPIPS weights (see :func:`~sada_audio.evaluation.lpips.load_lpips`).
        embedding: CLAP embedding for FAD and CLAP score (see
            :func:`~sada_audio.evaluation.embeddings.load_clap_embedding`); None for the embedded model's.
        progress: wraps the loop over pairs (a progress bar in the CLI).

    Raises:
        SADAError: a folder is missing or has no audio files.
    """
    pairs, problems = pair_files(reference_dir, test_dir)
    lpips_model, lpips_status = _load_lpips_or_reason(lpips_backbone, lpips_heads)
    evaluated: list[tuple[dict[str, Any], Clip, Clip]] = []
    thumbnails: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    test_stats: dict[str, dict[str, Any]] = {}
    with progress(pairs, "Evaluating pairs") as items:
        for name, ref_path, test_path in items:
            reference, test = _read_or_report(ref_path, problems), _read_or_report(test_path, problems)
            if reference is None or test is None:
                continue
            try:
                ref_wave, test_wave, notes = align(reference, test)
                mels = (
                    log_mel_spectrogram(ref_wave, reference.sample_rate),
                    log_mel_spectrogram(test_wave, reference.sample_rate),
                )
                metrics = pair_metrics(ref_wave, test_wave, reference.sample_rate, lpips_model, mels)
            except ValueError as error:
                problems.append({"file": str(test_path), "reason": f"metrics failed: {error}"})
                continue
            record = {
                "name": name,
                "reference": str(ref_path),
                "test": str(test_path),
                "sample_rate": reference.sample_rate,
                "duration_s": len(ref_wave) / reference.sample_rate,
                "prompt": sidecars.prompt(reference.sidecar, test.sidecar),
                "cost": {"reference": _cost(reference.sidecar), "test": _cost(test.sidecar)},
                "metrics": metrics,
                "notes": notes,
            }
            evaluated.append((record, reference, test))
            thumbnails[name] = (pool_frames(mels[0]).astype(np.float16), pool_frames(mels[1]).astype(np.float16))
            stats = (test.sidecar or {}).get("sada_stats")
            if isinstance(stats, dict):
                test_stats[name] = stats
    summary = _summary([record for record, _, _ in evaluated])
    report = {
        "reference_dir": str(reference_dir),
        "test_dir": str(test_dir),
        "conventions": {
            "lpips_scaling": SCALING_CONVENTION,
            "spectrogram": SPECTROGRAM_CONVENTION,
            "alignment": f"test resampled to the reference's rate (librosa.resample, {_RESAMPLER}); "
            "both cut to the shorter length",
        },
        "lpips": lpips_status,
        "pairs_evaluated": len(evaluated),
        "summary": summary,
        "set_metrics": _set_metrics(evaluated, embedding),
        "speed": sidecars.speed([(ref.sidecar, test.sidecar) for _, ref, test in evaluated]),
        "step_modes": {
            record["name"]: modes for record, _, test in evaluated if (modes := sidecars.step_modes(test.sidecar))
        },
        "problems": problems,
        "pairs": [record for record, _, _ in evaluated],
    }
    return Evaluation(report, _figure_pairs(evaluated, key_metric(summary)), thumbnails, test_stats)


def _cost(sidecar: sidecars.Sidecar) -> dict[str, Any] | None:
    cost = sidecars.clip_cost(sidecar)
    return None if cost is None else {"wall_time_s": cost[0], "nfe": cost[1]}


def _figure_pairs(
    evaluated: list[tuple[dict[str, Any], Clip, Clip]], metric: str | None
) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Spectrograms of the worst and the median pair by ``metric`` (recomputed for these two rather than kept
    for every pair)."""
    if metric is None:
        return {}
    ranked = sorted(evaluated, key=lambda item: item[0]["metrics"][metric], reverse=METRICS[metric].higher_is_better)
    chosen = {"worst": ranked[-1], "median": ranked[len(ranked) // 2]}
    figures = {}
    for label, (record, reference, test) in chosen.items():
        ref_wave, test_wave, _ = align(reference, test)
        ref_mel = log_mel_spectrogram(ref_wave, reference.sample_rate)
        figures[label] = (record["name"], ref_mel, log_mel_spectrogram(test_wave, reference.sample_rate))
    return figures
