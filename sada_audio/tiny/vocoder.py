"""Griffin-Lim as a pipeline vocoder: log-mel spectrogram in, waveform out, no learned weights.

The tiny MusicLDM ships this module in the vocoder slot when its trained HiFi-GAN does not beat Griffin-Lim
(see the model card). It is a diffusers ``ModelMixin`` so that ``save_pretrained`` / ``from_pretrained`` handle
it like any component: ``model_index.json`` names it by its module path, which diffusers resolves from
``sys.modules`` -- import this module (``load_pipeline`` does) before loading such a pipeline.

The mel spectrogram (natural log of the magnitude, :mod:`sada_audio.tiny.features`) is mapped back to a
linear-frequency magnitude by non-negative least squares (multiplicative updates), then the phase is
estimated with the fast Griffin-Lim algorithm (momentum 0.99, as librosa), from a fixed random start so that
equal inputs give equal waveforms.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from sada_audio.audio_ldm_parts import HOP_LENGTH, N_MELS, SAMPLE_RATE
from sada_audio.tiny.features import N_FFT, _mel_basis

__all__ = ["GriffinLimVocoder"]


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    """``(batch, frames, 64)`` or ``(frames, 64)`` log-mel -> ``(batch, frames * 160)`` or ``(frames * 160,)``."""

    @register_to_config
    def __init__(
        self,
        model_in_dim: int = N_MELS,
        sampling_rate: int = SAMPLE_RATE,
        # read by the pipelines: their product is the hop length (samples per mel frame)
        upsample_rates: tuple[int, ...] = (5, 4, 4, 2),
        n_fft: int = N_FFT,
        n_iter: int = 32,
        momentum: float = 0.99,
        nnls_iter: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if math.prod(upsample_rates) != HOP_LENGTH or n_fft != N_FFT or model_in_dim != N_MELS:
            raise ValueError("GriffinLimVocoder is built for 64 mel bins, n_fft 1024 and hop 160")
        # stored with the weights, so the saved folder is self-contained
        self.register_buffer("mel_basis", _mel_basis().clone())
        self.register_buffer("window", torch.hann_window(n_fft))

    def _linear_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """Non-negative least squares ``min ||B s - m||, s >= 0`` per frame, by multiplicative updates."""
        basis = self.mel_basis.to(mel.dtype)
        gram = basis.T @ basis
        target = basis.T @ mel  # (513, frames) per batch item, all >= 0
        spec = target / (gram.sum(dim=1, keepdim=True) + 1e-8)
        for _ in range(self.config.nnls_iter):
            spec = spec * target / (gram @ spec + 1e-10)
        return spec

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        single = log_mel.dim() == 2
        mel = log_mel.float().exp()
        if single:
            mel = mel[None]
        frames = mel.shape[1]
        magnitude = self._linear_magnitude(mel.transpose(1, 2))  # (batch, 513, frames)
        length = frames * HOP_LENGTH
        stft_args = {"n_fft": self.config.n_fft, "hop_length": HOP_LENGTH, "window": self.window, "center": True}
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)
        phase = torch.rand(magnitude.shape, generator=gen).to(magnitude.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(magnitude), phase)
        # the centred STFT of ``length`` samples has one frame more than the mel (features drop it)
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        angles = torch.cat([angles, angles[..., -1:]], dim=-1)
        previous = torch.zeros_like(angles)
        for _ in range(self.config.n_iter):
            wave = torch.istft(magnitude * angles, length=length, **stft_args)
            rebuilt = torch.stft(wave, return_complex=True, pad_mode="reflect", **stft_args)
            angles = rebuilt - (self.config.momentum / (1 + self.config.momentum)) * previous
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        wave = torch.istft(magnitude * angles, length=length, **stft_args)
        return wave[0] if single else wave
