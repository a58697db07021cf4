"""Spectrogram-LPIPS: LPIPS (AlexNet backbone, the v0.1 learned linear heads) on log-mel spectrograms.

The network is plain torch, laid out like torchvision's ``alexnet().features`` so that torchvision's
``alexnet-owt-7be5be79.pth`` loads as it is (its ``classifier.*`` weights are ignored); the five linear heads
are LPIPS v0.1's (``lin{i}.model.1.weight``), by default the copy that ships inside torchmetrics. With the same
weights it computes what the ``lpips`` package computes (``lpips.LPIPS(net="alex")``).

Scaling convention (:data:`SCALING_CONVENTION`): LPIPS compares images in [-1, 1], and its value moves with
how spectrograms are mapped there. Both clips of a pair are min-max scaled with the *reference* clip's range,
so a louder or quieter test clip shows up as a difference instead of being normalised away.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from torch import nn

from .metrics import MetricUnavailableError, check_same_shape, reference_range

__all__ = [
    "ALEXNET_URL",
    "SCALING_CONVENTION",
    "AlexNetFeatures",
    "LPIPS",
    "load_lpips",
    "spectrogram_images",
    "spectrogram_lpips",
]

logger = logging.getLogger(__name__)

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
_ALEXNET_FILE = ALEXNET_URL.rsplit("/", 1)[1]
_HEADS_FILE = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"

SCALING_CONVENTION = (
    "log-mel spectrograms (64 bins, natural log of the magnitude), both clips min-max scaled to [-1, 1] with the "
    "reference clip's range (test values outside it clipped), repeated to three channels"
)

# Output channels of the five ReLU taps (after conv1 .. conv5) and their indices in ``features``.
_TAP_CHANNELS = (64, 192, 384, 256, 256)
_TAPS = (1, 4, 7, 9, 11)
# LPIPS' input normalisation (ImageNet statistics, expressed for inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional trunk up to the fifth ReLU, in torchvision's ``features.N`` key layout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each of the five ReLUs, for ``(batch, 3, H, W)`` images."""
        taps = []
        for index, layer in enumerate(self.features):
            images = layer(images)
            if index in _TAPS:
                taps.append(images)
        return taps


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)


class _Head(nn.Module):
    """One linear head, keyed ``model.1.weight`` as in LPIPS (whose ``model.0`` is a dropout, inactive in eval)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


class LPIPS(nn.Module):
    """LPIPS distance: per layer, unit-normalised channel vectors, squared difference, a learned 1 x 1 head,
    spatial mean; summed over the five layers. Symmetric, 0 for identical images, never negative."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        self.heads = nn.ModuleDict({f"lin{i}": _Head(channels) for i, channels in enumerate(_TAP_CHANNELS)})
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Distances of ``(batch, 3, H, W)`` image pairs in [-1, 1], shape ``(batch,)``."""
        taps_a = self.net((first - self.shift) / self.scale)
        taps_b = self.net((second - self.shift) / self.scale)
        total = torch.zeros(first.shape[0], dtype=first.dtype, device=first.device)
        for head, a, b in zip(self.heads.values(), taps_a, taps_b, strict=True):
            total = total + head((_unit_channels(a) - _unit_channels(b)).pow(2)).mean(dim=(1, 2, 3))
        return total


def _read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """A state dict from a URL (downloaded into the torch hub cache) or a local ``.pth`` / ``.safetensors`` file."""
    if source.startswith(("http://", "https://", "file://")):
        # the official file's name carries a hash prefix; other URLs are taken as they are
        return torch.hub.load_state_dict_from_url(
            source, map_location="cpu", check_hash=source == ALEXNET_URL, weights_only=True, progress=False
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _backbone_source(backbone: str | None) -> str:
    if backbone is not None:
        return backbone
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_FILE
    return str(cached) if cached.is_file() else ALEXNET_URL


def _load_part(module: nn.Module, source: str, what: str, prefix: str = "") -> None:
    try:
        state = _read_state_dict(source)
    except Exception as error:  # any I/O, network or unpickling failure: the metric is unavailable
        raise MetricUnavailableError.caused_by(f"cannot read the {what} from {source}", error) from error
    if not isinstance(state, dict):
        raise MetricUnavailableError(f"{source} does not hold a state dict for the {what}")
    try:
        module.load_state_dict({k: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    except RuntimeError as error:
        raise MetricUnavailableError.caused_by(f"{source} does not fit the {what}", error) from error


def load_lpips(backbone: str | None = None, heads: str | None = None) -> LPIPS:
    """Build LPIPS (AlexNet) and load its weights, in eval mode on the CPU.

    Args:
        backbone: torchvision's AlexNet state dict: a local file, a URL, or None for the torch hub cache
            (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``), downloaded from :data:`ALEXNET_URL`
            (hash-checked) if it is not there yet.
        heads: the LPIPS v0.1 linear heads (``lin0.model.1.weight`` ...); None for the copy in torchmetrics.

    Raises:
        MetricUnavailableError: weights not found, unreadable, or of the wrong layout (one-line reason).
    """
    model = LPIPS()
    _load_part(model.net, _backbone_source(backbone), "AlexNet backbone", prefix="features.")
    _load_part(model.heads, str(_HEADS_FILE) if heads is None else heads, "LPIPS linear heads")
    logger.info("LPIPS: AlexNet from %s", _backbone_source(backbone))
    return model.eval()


def spectrogram_images(reference: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Map two log-mel spectrograms ``(mels, frames)`` to ``(1, 3, mels, frames)`` images in [-1, 1] following
    :data:`SCALING_CONVENTION`."""
    low, span = float(reference.min()), reference_range(reference)

    def image(spectrogram: np.ndarray) -> torch.Tensor:
        scaled = torch.from_numpy(np.asarray(spectrogram, dtype=np.float32)).sub(low).mul(2 / span).sub(1)
        return scaled.clamp(-1, 1).expand(1, 3, *spectrogram.shape)

    return image(reference), image(test)


def spectrogram_lpips(model: LPIPS, reference: np.ndarray, test: np.ndarray) -> float:
    """Spectrogram-LPIPS of two log-mel spectrograms (same shape; at least 31 frames for AlexNet's pooling)."""
    check_same_shape(reference, test)
    with torch.no_grad():
        return float(model(*spectrogram_images(reference, test))[0])
