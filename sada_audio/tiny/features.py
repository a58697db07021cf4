"""Log-mel spectrograms as AudioLDM / MusicLDM compute them: 16 kHz mono, 64 mel bins, hop 160.

STFT with a 1024-point Hann window, magnitude (not power), Slaney mel filters from 0 to 8 kHz, natural log
of the magnitude floored at 1e-5. A clip of ``n`` samples gives ``n // 160`` frames (the centred STFT's last
frame is dropped), so that the vocoder's 160 samples per frame give back exactly ``n`` samples.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import torch

from sada_audio.audio_ldm_parts import HOP_LENGTH, N_MELS, SAMPLE_RATE

__all__ = ["N_FFT", "LOG_FLOOR", "log_mel", "num_frames"]

N_FFT = 1024
#: log(1e-5): the value of silence
LOG_FLOOR = float(np.log(1e-5))


@functools.cache
def _mel_basis() -> torch.Tensor:
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(basis).float()


def num_frames(num_samples: int) -> int:
    """Mel frames of a clip of ``num_samples`` samples."""
    return num_samples // HOP_LENGTH


def log_mel(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Log-mel spectrogram of ``(..., samples)`` audio as ``(..., frames, 64)`` float32 (frames = samples // 160)."""
    wave = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform).float()
    lead, samples = wave.shape[:-1], wave.shape[-1]
    spec = torch.stft(
        wave.reshape(-1, samples),
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        window=torch.hann_window(N_FFT, device=wave.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()
    mel = torch.matmul(_mel_basis().to(wave.device), spec)[..., : num_frames(samples)]
    return torch.log(mel.clamp_min(1e-5)).transpose(-1, -2).reshape(*lead, -1, N_MELS)
