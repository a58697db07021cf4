"""The fidelity metrics against known values: ideal values for identical inputs, hand-computed values for
known perturbations, symmetry where it should hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sada_audio.evaluation.embeddings import clap_scores, frechet_distance
from sada_audio.evaluation.metrics import (
    MEL_FLOOR,
    METRICS,
    N_MELS,
    MetricUnavailableError,
    log_mel_l1,
    log_mel_spectrogram,
    multi_resolution_stft_distance,
    si_sdr,
    spectral_convergence,
    spectrogram_psnr,
    spectrogram_ssim,
)

SR = 16_000


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """One second of white noise at RMS 0.1: every mel bin and STFT bin is far above the floors."""
    return (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)


@pytest.fixture(scope="module")
def spectrogram() -> np.ndarray:
    return np.random.default_rng(1).normal(-4.0, 2.0, size=(N_MELS, 120)).astype(np.float32)


def test_log_mel_shape_and_floor() -> None:
    spec = log_mel_spectrogram(np.zeros(SR, np.float32), SR)
    assert spec.shape == (N_MELS, 101)  # a centred STFT with a 10 ms hop: 1 + 16000 // 160 frames
    assert spec.dtype == np.float32
    np.testing.assert_allclose(spec, math.log(MEL_FLOOR), rtol=1e-6)
    # the window and hop are in seconds, so another rate gives the same frame count
    assert log_mel_spectrogram(np.zeros(44_100, np.float32), 44_100).shape == (N_MELS, 101)


def test_log_mel_l1_of_a_louder_copy_is_log_2(noise: np.ndarray) -> None:
    reference, louder = log_mel_spectrogram(noise, SR), log_mel_spectrogram(2 * noise, SR)
    assert log_mel_l1(reference, reference) == 0.0
    assert log_mel_l1(reference, louder) == pytest.approx(math.log(2), rel=1e-5)
    assert log_mel_l1(louder, reference) == log_mel_l1(reference, louder)


def test_psnr_of_a_constant_offset(spectrogram: np.ndarray) -> None:
    data_range = float(spectrogram.max() - spectrogram.min())
    assert spectrogram_psnr(spectrogram, spectrogram) == math.inf
    # MSE = 0.25**2, so PSNR = 10 log10(range**2 / 0.0625)
    expected = 10 * math.log10(data_range**2 / 0.25**2)
    assert spectrogram_psnr(spectrogram, spectrogram + 0.25) == pytest.approx(expected, rel=1e-6)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """The SSIM formula with an 11 x 11 Gaussian window (sigma 1.5), the image mirrored at its borders
    (torch's "reflect" is scipy's "mirror"), averaged over the whole image."""
    offsets = np.arange(11) - 5
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def local_mean(image: np.ndarray) -> np.ndarray:
        return ndimage.correlate(image, window, mode="mirror")

    mx, my = local_mean(x), local_mean(y)
    vx, vy, cxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def test_ssim_matches_the_formula(spectrogram: np.ndarray) -> None:
    assert spectrogram_ssim(spectrogram, spectrogram) == pytest.approx(1.0, abs=1e-9)
    reference = spectrogram.astype(np.float64)
    test = reference + np.random.default_rng(2).normal(0.0, 1.0, reference.shape)
    expected = _ssim_by_hand(reference, test, float(reference.max() - reference.min()))
    assert spectrogram_ssim(reference, test) == pytest.approx(expected, rel=1e-6)
    assert 0 < expected < 0.9


def test_constant_reference_has_no_range(spectrogram: np.ndarray) -> None:
    flat = np.zeros_like(spectrogram)
    with pytest.raises(ValueError, match="constant"):
        spectrogram_psnr(flat, spectrogram)
    with pytest.raises(ValueError, match="constant"):
        spectrogram_ssim(flat, spectrogram)


def test_mr_stft_of_identical_and_doubled_clips(noise: np.ndarray) -> None:
    assert multi_resolution_stft_distance(noise, noise) == pytest.approx(0.0, abs=1e-6)
    # every resolution: spectral convergence || |Y| - 2|Y| || / || |Y| || = 1, log-magnitude L1 = log 2
    assert multi_resolution_stft_distance(noise, 2 * noise) == pytest.approx(1 + math.log(2), rel=1e-4)


def test_spectral_convergence_known_values(noise: np.ndarray) -> None:
    assert spectral_convergence(noise, noise) == pytest.approx(0.0, abs=1e-6)
    assert spectral_convergence(noise, 2 * noise) == pytest.approx(1.0, rel=1e-5)
    assert spectral_convergence(noise, 1.5 * noise) == pytest.approx(0.5, rel=1e-5)
    assert spectral_convergence(noise, np.zeros_like(noise)) == pytest.approx(1.0, rel=1e-3)


def test_si_sdr_known_values(noise: np.ndarray) -> None:
    reference = noise.astype(np.float64)
    assert si_sdr(reference, 0.5 * reference) > 100  # scale-invariant: a scaled copy is perfect
    assert si_sdr(reference, -3 * reference) > 100
    # noise orthogonal to the reference at a tenth of its norm: exactly 20 dB
    disturbance = np.random.default_rng(3).standard_normal(reference.shape)
    disturbance -= disturbance @ reference / (reference @ reference) * reference
    disturbance *= 0.1 * np.linalg.norm(reference) / np.linalg.norm(disturbance)
    assert si_sdr(reference, reference + disturbance) == pytest.approx(20.0, abs=1e-6)


@pytest.mark.parametrize(
    "metric", [log_mel_l1, spectrogram_psnr, spectrogram_ssim, multi_resolution_stft_distance, si_sdr]
)
def test_shape_mismatch_is_an_error(metric, noise: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metric(noise[:8000], noise)


def test_every_metric_has_a_direction_and_a_source() -> None:
    assert {name for name, info in METRICS.items() if info.higher_is_better} == {"mel_psnr", "mel_ssim", "si_sdr"}
    assert all(info.source for info in METRICS.values())


def test_frechet_distance_known_values() -> None:
    rng = np.random.default_rng(4)
    first = rng.standard_normal((50, 6))
    assert frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # equal covariances: only the squared distance of the means remains
    assert frechet_distance(first, first + shift) == pytest.approx(shift @ shift, rel=1e-9)
    # a set and its c-fold scaled copy: (1 - c)^2 tr(S) + (1 - c)^2 |mu|^2
    centred = first - first.mean(axis=0)
    trace = np.trace(np.cov(centred, rowvar=False))
    assert frechet_distance(centred, 3 * centred) == pytest.approx(4 * trace, rel=1e-9)
    second = rng.standard_normal((40, 6)) * 2 + 1
    assert frechet_distance(first, second) == pytest.approx(frechet_distance(second, first), rel=1e-9)


def test_frechet_distance_needs_two_clips_per_set() -> None:
    with pytest.raises(MetricUnavailableError, match="at least two clips"):
        frechet_distance(np.ones((1, 4)), np.ones((5, 4)))


def test_clap_scores_are_cosines() -> None:
    audio = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    text = np.array([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(clap_scores(audio, text), [1.0, 0.0, -1.0], atol=1e-12)


def test_sliced_metrics_equal_the_libraries_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    import auraloss
    import librosa
    from torchmetrics.functional.image import structural_similarity_index_measure

    from sada_audio.evaluation import metrics

    # slices far shorter than the clip, so that every metric is really assembled from several slices
    monkeypatch.setattr(metrics, "_STFT_SLICE_FRAMES", 37)
    monkeypatch.setattr(metrics, "_SSIM_SLICE_FRAMES", 29)
    rng = np.random.default_rng(3)
    samples = 16000 * 2 + 77
    reference = (0.3 * np.sin(np.arange(samples) * 0.05) + 0.1 * rng.normal(size=samples)).astype(np.float32)
    test = (reference + 0.05 * rng.normal(size=samples)).astype(np.float32)

    def batch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x)[None, None]

    expected_mr = float(auraloss.freq.MultiResolutionSTFTLoss()(batch(test), batch(reference)))
    assert metrics.multi_resolution_stft_distance(reference, test) == pytest.approx(expected_mr, rel=1e-5)
    single = auraloss.freq.STFTLoss(fft_size=1024, hop_size=256, win_length=1024, w_sc=1.0, w_log_mag=0.0)
    expected_sc = float(single(batch(test), batch(reference)))
    assert metrics.spectral_convergence(reference, test) == pytest.approx(expected_sc, rel=1e-5)
    mel = librosa.feature.melspectrogram(
        y=reference, sr=16000, n_fft=1024, hop_length=160, n_mels=64, power=1.0, fmin=0.0, fmax=8000
    )
    log_mel = metrics.log_mel_spectrogram(reference, 16000)
    np.testing.assert_allclose(log_mel, np.log(np.maximum(mel, metrics.MEL_FLOOR)), atol=1e-5)
    test_mel = metrics.log_mel_spectrogram(test, 16000)
    expected_ssim = structural_similarity_index_measure(
        torch.from_numpy(test_mel.astype(np.float64))[None, None],
        torch.from_numpy(log_mel.astype(np.float64))[None, None],
        data_range=float(log_mel.max() - log_mel.min()),
    )
    assert metrics.spectrogram_ssim(log_mel, test_mel) == pytest.approx(float(expected_ssim), abs=1e-6)
