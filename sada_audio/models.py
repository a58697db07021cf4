"""Model adapters: where a pipeline's denoiser is, which blocks carry tokens, how tokens are laid out.

Adding a model family means adding one adapter here (plus a preset and a tiny-pipeline test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UnsupportedModelError


def spatial_grid(sample: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of a ``(batch, channels, H, W)`` latent: the token grid of UNet-style denoisers."""
    return int(sample.shape[-2]), int(sample.shape[-1])


@dataclass(frozen=True)
class TokenBlock:
    """A transformer block whose input is ``(batch, tokens, channels)`` over a row-major grid."""

    name: str
    module: nn.Module
    level: int
    """Resolution level of its token grid: 0 is the latent grid, each level halves both axes."""


class ModelAdapter:
    """Base class of the adapters; one per denoiser family."""

    pipeline_classes: dict[str, str] = {}
    """Pipeline class name -> preset name of the family."""
    denoiser_attribute = "unet"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.family = self.pipeline_classes[type(pipe).__name__]

    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.denoiser_attribute)

    def token_blocks(self) -> list[TokenBlock]:
        raise NotImplementedError

    def latent_grid(self, sample: torch.Tensor) -> tuple[int, int]:
        """Token grid ``(H, W)`` of the denoiser's input latent."""
        return spatial_grid(sample)

    def wrap_output(self, sample: torch.Tensor, return_dict: bool) -> Any:
        raise NotImplementedError


class AudioUNetAdapter(ModelAdapter):
    """UNet2DConditionModel of MusicLDM / AudioLDM and the AudioLDM2 UNet.

    Their transformer blocks sit in ``down_blocks``, ``mid_block`` and ``up_blocks``; a down block
    at index i works at level i, the mid block at the lowest level, and up block i at level
    ``len(up_blocks) - 1 - i`` (its attentions run before its upsampler). Spectrogram latents are
    ``(batch, channels, time, frequency)``, flattened row-major into tokens by Transformer2DModel.
    """

    pipeline_classes = {
        "MusicLDMPipeline": "musicldm",
        "AudioLDMPipeline": "audioldm",
        "AudioLDM2Pipeline": "audioldm2",
    }

    def token_blocks(self) -> list[TokenBlock]:
        return unet_token_blocks(self.denoiser())

    def wrap_output(self, sample: torch.Tensor, return_dict: bool) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


def unet_token_blocks(unet: nn.Module) -> list[TokenBlock]:
    """The ``BasicTransformerBlock`` modules of a diffusers-style UNet, with their resolution levels."""
    levels = len(unet.down_blocks)
    stages = [(f"down_blocks.{i}", block, i) for i, block in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        stages.append(("mid_block", unet.mid_block, levels - 1))
    stages += [(f"up_blocks.{i}", block, len(unet.up_blocks) - 1 - i) for i, block in enumerate(unet.up_blocks)]
    return [
        TokenBlock(f"{stage}.{name}", module, level)
        for stage, stage_module, level in stages
        for name, module in stage_module.named_modules()
        if type(module).__name__ == "BasicTransformerBlock"
    ]


MODEL_ADAPTERS: tuple[type[ModelAdapter], ...] = (AudioUNetAdapter,)


def supported_pipelines() -> list[str]:
    return [name for adapter in MODEL_ADAPTERS for name in adapter.pipeline_classes]


def model_adapter_for(pipe: Any) -> ModelAdapter:
    for adapter_cls in MODEL_ADAPTERS:
        if adapter_cls.matches(pipe):
            return adapter_cls(pipe)
    raise UnsupportedModelError(
        f"SADA does not support {type(pipe).__name__}; supported pipelines: {', '.join(supported_pipelines())}"
    )
