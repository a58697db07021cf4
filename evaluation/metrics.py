"""Fidelity metrics of a test clip against a reference clip (same prompt, same seed).

Every metric is a small function of ``(reference, test)``: mono float waveforms for the waveform metrics,
log-mel spectrograms from :func:`log_mel_spectrogram` for the spectrogram metrics. Where a maintained
library computes a metric well it is used (torchmetrics: PSNR, SI-SDR; librosa: STFT and mel filters); the
metrics whose library versions hold whole spectrograms at once (SSIM as torchmetrics defines it, auraloss'
multi-resolution STFT distance and spectral convergence, the log-mel itself) are computed here in slices of
frames with the same definitions (the tests compare them with the libraries), so memory stays bounded on long
clips. :data:`METRICS` says which way each metric is better and where it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
from torchmetrics.functional.image import peak_signal_noise_ratio

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
# auraloss' MultiResolutionSTFTLoss defaults: (FFT size, hop, window length) per resolution, and its floor
_MR_STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
_STFT_EPS = 1e-8
# STFT frames per slice: long clips are transformed piecewise, so memory does not grow with their length
_STFT_SLICE_FRAMES = 8192


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
    "mel_ssim": MetricInfo(True, "", "SSIM as torchmetrics defines it, on log-mel, in slices"),
    "mr_stft": MetricInfo(False, "", "auraloss MultiResolutionSTFTLoss, in slices"),
    "spectral_convergence": MetricInfo(False, "", "auraloss STFTLoss (spectral convergence term only), in slices"),
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
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2)
    # librosa's melspectrogram (centred frames, zero padding), a slice of frames at a time: the complex STFT of a
    # whole long clip would dominate evaluate's memory
    samples = np.asarray(waveform, dtype=np.float32)
    padded = np.pad(samples, n_fft // 2)
    frames = 1 + len(samples) // hop
    mel = np.empty((n_mels, frames), dtype=np.float32)
    for start in range(0, frames, _STFT_SLICE_FRAMES):
        stop = min(start + _STFT_SLICE_FRAMES, frames)
        segment = padded[start * hop : (stop - 1) * hop + n_fft]
        magnitude = np.abs(librosa.stft(segment, n_fft=n_fft, hop_length=hop, center=False))
        mel[:, start:stop] = basis @ magnitude
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


_SSIM_SIGMA, _SSIM_RADIUS, _SSIM_K1, _SSIM_K2 = 1.5, 5, 0.01, 0.03
# output frames per slice of the SSIM map: memory stays a few MB whatever the clip's length
_SSIM_SLICE_FRAMES = 4096


def spectrogram_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """SSIM of two log-mel spectrograms (Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, borders
    reflect-padded, mean over the whole image); the dynamic range is the reference's. 1 for identical ones.

    The definition of torchmetrics' ``structural_similarity_index_measure``, computed over slices of time frames
    (the Gaussian window is separable), so memory stays bounded for clips of any length. In float64: variances are
    differences of large squares, and float32 puts identical spectrograms at 0.99999 instead of 1.
    """
    check_same_shape(reference, test)
    data_range = reference_range(reference)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    offsets = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64)
    gauss = torch.exp(-((offsets / _SSIM_SIGMA) ** 2) / 2)
    gauss = gauss / gauss.sum()
    rows, cols = gauss.view(1, 1, -1, 1).repeat(5, 1, 1, 1), gauss.view(1, 1, 1, -1).repeat(5, 1, 1, 1)
    pad = (_SSIM_RADIUS,) * 4
    preds = F.pad(torch.from_numpy(np.asarray(test, dtype=np.float64))[None, None], pad, mode="reflect")[0, 0]
    target = F.pad(torch.from_numpy(np.asarray(reference, dtype=np.float64))[None, None], pad, mode="reflect")[0, 0]
    frames = reference.shape[1]
    total = 0.0
    for start in range(0, frames, _SSIM_SLICE_FRAMES):
        stop = min(start + _SSIM_SLICE_FRAMES, frames) + 2 * _SSIM_RADIUS
        x, y = preds[:, start:stop], target[:, start:stop]
        stacked = torch.stack((x, y, x * x, y * y, x * y))[None]
        mu_x, mu_y, xx, yy, xy = F.conv2d(F.conv2d(stacked, rows, groups=5), cols, groups=5)[0]
        var_x, var_y = (xx - mu_x**2).clamp(min=0), (yy - mu_y**2).clamp(min=0)
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * (xy - mu_x * mu_y) + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        )
        total += float(ssim_map.sum())
    return total / reference.size


def _stft_magnitudes(waveform: np.ndarray, fft_size: int, hop: int, win_length: int) -> Iterator[torch.Tensor]:
    """Magnitudes ``sqrt(max(|STFT|^2, 1e-8))`` of centred, reflect-padded frames (torch.stft's and auraloss'
    convention, periodic Hann window), a slice of frames at a time, so memory stays bounded on long clips."""
    samples = torch.from_numpy(np.asarray(waveform, dtype=np.float32))
    padded = F.pad(samples[None, None], (fft_size // 2, fft_size // 2), mode="reflect")[0, 0]
    window = torch.hann_window(win_length)
    frames = 1 + len(samples) // hop
    for start in range(0, frames, _STFT_SLICE_FRAMES):
        stop = min(start + _STFT_SLICE_FRAMES, frames)
        segment = padded[start * hop : (stop - 1) * hop + fft_size]
        spectrum = torch.stft(segment, fft_size, hop, win_length, window, center=False, return_complex=True)
        yield torch.sqrt(torch.clamp(spectrum.real**2 + spectrum.imag**2, min=_STFT_EPS))


def _stft_distance(
    reference: np.ndarray, test: np.ndarray, fft_size: int, hop: int, win_length: int
) -> tuple[float, float]:
    """Spectral convergence ``||S_ref - S_test||_F / ||S_ref||_F`` and the mean absolute difference of the log
    magnitudes, accumulated over slices of frames (auraloss' STFTLoss terms, without holding whole spectrograms)."""
    difference_sq = reference_sq = log_l1 = 0.0
    count = 0
    for ref, est in zip(
        _stft_magnitudes(reference, fft_size, hop, win_length),
        _stft_magnitudes(test, fft_size, hop, win_length),
        strict=True,
    ):
        difference_sq += float(((ref - est).double() ** 2).sum())
        reference_sq += float((ref.double() ** 2).sum())
        log_l1 += float((torch.log(ref) - torch.log(est)).abs().double().sum())
        count += ref.numel()
    return math.sqrt(difference_sq) / math.sqrt(reference_sq), log_l1 / count


def multi_resolution_stft_distance(reference: np.ndarray, test: np.ndarray) -> float:
    """auraloss' multi-resolution STFT distance (``MultiResolutionSTFTLoss()``: FFT sizes 1024, 2048, 512): per
    resolution, the spectral convergence plus the mean absolute difference of the log magnitudes, averaged. 0 for
    identical clips. Computed in slices of frames (same value as auraloss, bounded memory)."""
    check_same_shape(reference, test)
    terms = [_stft_distance(reference, test, *resolution) for resolution in _MR_STFT_RESOLUTIONS]
    return sum(convergence + log_distance for convergence, log_distance in terms) / len(terms)


def spectral_convergence(reference: np.ndarray, test: np.ndarray) -> float:
    """``||S_ref - S_test||_F / ||S_ref||_F`` of the STFT magnitudes (1024-point FFT, hop 256). 0 for identical
    clips, 1 for a silent test clip or one at twice the reference's level."""
    check_same_shape(reference, test)
    return _stft_distance(reference, test, _SC_FFT, _SC_HOP, _SC_FFT)[0]


def si_sdr(reference: np.ndarray, test: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of ``test`` against ``reference`` in dB (no mean removal).

    A scaled copy of the reference scores above 100 dB (torchmetrics' epsilon keeps it finite).
    """
    check_same_shape(reference, test)
    ref = torch.from_numpy(np.asarray(reference, dtype=np.float64))
    est = torch.from_numpy(np.asarray(test, dtype=np.float64))
    return float(scale_invariant_signal_distortion_ratio(est, ref))
