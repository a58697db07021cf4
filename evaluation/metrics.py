"""Fidelity metrics of a test clip against a reference clip (same prompt, same seed).

Every metric is a small function of ``(reference, test)``: mono float waveforms for the waveform metrics,
log-mel spectrograms from :func:`log_mel_spectrogram` for the spectrogram metrics. Where a maintained
library computes a metric well it is used (torchmetrics: PSNR, SSIM, SI-SDR; auraloss: multi-resolution
STFT distance, spectral convergence; librosa: mel spectrograms); the log-mel L1 distance is one line
written here. :data:`METRICS` says which way each metric is better and where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import auraloss
import librosa
import numpy as np
import torch
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from sada_audio.errors import SADAError

__all__ = [
    "METRICS",
    "MetricInfo",
    "MetricUnavailableError",
    "N_MELS",
    "SPECTROGRAM_CONVENTION",
    "check_same_shape",
    "reference_range",
    "log_mel_spectrogram",
    "log_mel_l1",
    "spectrogram_psnr",
    "spectrogram_ssim",
    "multi_resolution_stft_distance",
    "spectral_convergence",
    "si_sdr",
]

#: Mel bins of the evaluation spectrograms (as AudioLDM and MusicLDM use).
N_MELS = 64
# STFT window and hop in seconds: 1024 / 160 samples at 16 kHz, AudioLDM's front end, at any rate.
_WINDOW_S = 0.064
_HOP_S = 0.01
#: Magnitudes are floored here before the log (log(1e-5) is the value of silence).
MEL_FLOOR = 1e-5
#: How the evaluation spectrograms are computed, as every report states it.
SPECTROGRAM_CONVENTION = (
    f"log-mel, {N_MELS} Slaney bins from 0 Hz to Nyquist, magnitude, {_WINDOW_S * 1e3:.0f} ms Hann window, "
    f"{_HOP_S * 1e3:.0f} ms hop, natural log floored at {MEL_FLOOR:g}"
)
# Spectral convergence resolution (auraloss' single-resolution default).
_SC_FFT, _SC_HOP = 1024, 256


class MetricUnavailableError(SADAError):
    """A metric cannot be computed here (weights not found, too few clips); the message says why in one line."""

    @classmethod
    def caused_by(cls, message: str, error: BaseException) -> MetricUnavailableError:
        """``message: <the error in one line>``, for failures of other libraries (I/O, network, unpickling)."""
        reason = " ".join(str(error).split()) or type(error).__name__
        return cls(f"{message}: {reason[:300]}")


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: which direction is better, its unit, the library that computes it."""

    higher_is_better: bool
    unit: str
    source: str


METRICS: dict[str, MetricInfo] = {
    "lpips": MetricInfo(False, "", "in-house AlexNet (plain torch) with the LPIPS v0.1 linear heads"),
    "log_mel_l1": MetricInfo(False, "", "librosa mel spectrogram, L1 written here"),
    "mel_psnr": MetricInfo(True, "dB", "torchmetrics peak_signal_noise_ratio on log-mel"),
    "mel_ssim": MetricInfo(True, "", "torchmetrics structural_similarity_index_measure on log-mel"),
    "mr_stft": MetricInfo(False, "", "auraloss MultiResolutionSTFTLoss"),
    "spectral_convergence": MetricInfo(False, "", "auraloss STFTLoss (spectral convergence term only)"),
    "si_sdr": MetricInfo(True, "dB", "torchmetrics scale_invariant_signal_distortion_ratio"),
}


def _stft_geometry(sample_rate: int) -> tuple[int, int]:
    return round(_WINDOW_S * sample_rate), round(_HOP_S * sample_rate)


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """Log-mel spectrogram of a mono waveform, shape ``(n_mels, frames)``, float32.

    Magnitude (not power) mel spectrogram with Slaney filters from 0 Hz to Nyquist, a 64 ms Hann window and a
    10 ms hop, natural log of the magnitude floored at :data:`MEL_FLOOR` -- AudioLDM's front end at any rate.
    """
    n_fft, hop = _stft_geometry(sample_rate)
    mel = librosa.feature.melspectrogram(
        y=np.asarray(waveform, dtype=np.float32),
        sr=sample_rate,
        n_fft=n_fft,
        hop_length=hop,
        n_mels=n_mels,
        power=1.0,
        fmin=0.0,
        fmax=sample_rate / 2,
    )
    return np.log(np.maximum(mel, MEL_FLOOR)).astype(np.float32)


def check_same_shape(reference: np.ndarray, test: np.ndarray) -> None:
    """Raise ValueError unless the two arrays have the same shape."""
    if reference.shape != test.shape:
        raise ValueError(f"reference and test differ in shape: {reference.shape} vs {test.shape}")


def reference_range(reference: np.ndarray) -> float:
    """``max - min`` of a reference spectrogram; ValueError if it is constant (nothing to scale by)."""
    span = float(reference.max() - reference.min())
    if span <= 0:
        raise ValueError("the reference spectrogram is constant, so it has no range to scale by")
    return span


def _image(spectrogram: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(spectrogram, dtype=np.float64))[None, None]


def log_mel_l1(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean absolute difference of two log-mel spectrograms (0 for identical ones; symmetric)."""
    check_same_shape(reference, test)
    return float(np.mean(np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64))))


def spectrogram_psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of ``test`` against ``reference`` log-mel spectrograms; the peak is the reference's range
    (max - min), so the value does not depend on the log floor. ``inf`` for identical spectrograms."""
    check_same_shape(reference, test)
    value = peak_signal_noise_ratio(_image(test), _image(reference), data_range=reference_range(reference))
    return float(value)


def spectrogram_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """SSIM of two log-mel spectrograms (Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, borders
    reflect-padded, mean over the whole image); the dynamic range is the reference's. 1 for identical ones."""
    check_same_shape(reference, test)
    value = structural_similarity_index_measure(_image(test), _image(reference), data_range=reference_range(reference))
    return float(value)


def _waveform_batch(waveform: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(waveform, dtype=np.float32))[None, None]


def multi_resolution_stft_distance(reference: np.ndarray, test: np.ndarray) -> float:
    """auraloss' multi-resolution STFT distance (FFT sizes 1024, 2048, 512): per resolution, the spectral
    convergence plus the mean absolute difference of the log magnitudes, averaged. 0 for identical clips."""
    check_same_shape(reference, test)
    loss = auraloss.freq.MultiResolutionSTFTLoss()
    return float(loss(_waveform_batch(test), _waveform_batch(reference)))


def spectral_convergence(reference: np.ndarray, test: np.ndarray) -> float:
    """``||S_ref - S_test||_F / ||S_ref||_F`` of the STFT magnitudes (1024-point FFT, hop 256). 0 for identical
    clips, 1 for a silent test clip or one at twice the reference's level."""
    check_same_shape(reference, test)
    loss = auraloss.freq.STFTLoss(fft_size=_SC_FFT, hop_size=_SC_HOP, win_length=_SC_FFT, w_sc=1.0, w_log_mag=0.0)
    return float(loss(_waveform_batch(test), _waveform_batch(reference)))


def si_sdr(reference: np.ndarray, test: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of ``test`` against ``reference`` in dB (no mean removal).

    A scaled copy of the reference scores above 100 dB (torchmetrics' epsilon keeps it finite).
    """
    check_same_shape(reference, test)
    ref = torch.from_numpy(np.asarray(reference, dtype=np.float64))
    est = torch.from_numpy(np.asarray(test, dtype=np.float64))
    return float(scale_invariant_signal_distortion_ratio(est, ref))
