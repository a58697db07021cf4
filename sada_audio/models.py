"""Model adapters: where a pipeline's denoiser is, which blocks carry tokens, how tokens are laid out.

Adding a model family means adding one adapter here (plus a preset and a tiny-pipeline test); the
method (``sada_audio.method``) never sees a diffusers class. An adapter says:

- which pipeline classes it serves and the preset of each (``pipeline_classes``);
- which modules only feed the denoiser (``feeder_modules``, e.g. a ControlNet, whose output is
  useless on a skipped step); the denoiser itself is found by :func:`denoiser_of`;
- its :class:`DenoiserLayout`: the token grid of a denoiser call, how the solver's latent maps onto
  it (the engine works on ``(batch, channels, H, W)``) and how the denoiser's output is wrapped;
- the transformer blocks that carry grid tokens (``token_blocks``), each with a :class:`BlockLayout`
  that says where its grid tokens sit in its call and output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import UnsupportedModelError

Grid = tuple[int, int]


def spatial_grid(sample: torch.Tensor) -> Grid:
    """``(H, W)`` of a ``(batch, channels, H, W)`` latent: the token grid of UNet-style denoisers."""
    return int(sample.shape[-2]), int(sample.shape[-1])


class BlockLayout:
    """Where a transformer block's call carries its grid tokens; this base fits ``BasicTransformerBlock``.

    The block's input ``hidden_states`` (first positional or keyword argument) is ``(batch, tokens,
    channels)``: ``prefix_tokens`` leading tokens that are not on the grid (always computed), then
    the grid tokens, row-major. A pruned call gets the prefix plus the kept grid tokens, and the
    rotary table (if the block takes one) is cut to the same rows.
    """

    prefix_tokens = 0
    output_index: int | None = None
    """The block returns its hidden states directly (None) or at this index of a tuple."""
    rotary_argument: str | None = None
    """Keyword argument holding a ``(cos, sin)`` rotary table over the attention sequence."""

    def prunable(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this call can run on a subset of tokens: not with an attention mask over all tokens,
        nor with a rotary table passed by position (only one passed by name is cut to the kept rows)."""
        # Runs inside a possibly compiled denoiser: len() rather than a tuple's truth value, which dynamo
        # cannot trace.
        if self.rotary_argument is not None and len(args) > 0:
            return False
        return kwargs.get("attention_mask") is None and (len(args) == 0 or args[0] is None)

    def rotary_offset(self, kwargs: dict[str, Any]) -> int:
        """Rows of the rotary table that come before this block's own hidden states."""
        return 0

    def pruned_kwargs(self, kwargs: dict[str, Any], kept: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of a call on the prefix plus the ``kept`` grid tokens: the rotary rows of
        the leading tokens and of the kept tokens (their own positions)."""
        table = kwargs.get(self.rotary_argument) if self.rotary_argument else None
        if table is None:
            return kwargs
        offset = self.rotary_offset(kwargs) + self.prefix_tokens
        rows = torch.cat([torch.arange(offset, device=kept.device), kept + offset])
        selected = table[rows] if isinstance(table, torch.Tensor) else tuple(part[rows] for part in table)
        return {**kwargs, self.rotary_argument: selected}

    def hidden_output(self, output: Any) -> torch.Tensor:
        return output if self.output_index is None else output[self.output_index]

    def with_hidden_output(self, output: Any, hidden: torch.Tensor) -> Any:
        if self.output_index is None:
            return hidden
        return (*output[: self.output_index], hidden, *output[self.output_index + 1 :])


class FluxBlockLayout(BlockLayout):
    """Flux double- and single-stream blocks: ``(encoder_hidden_states, hidden_states)`` out, image tokens
    in ``hidden_states`` only, a rotary table over ``text + image`` tokens (text first)."""

    output_index = 1
    rotary_argument = "image_rotary_emb"

    def prunable(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return super().prunable(args, kwargs) and "encoder_hidden_states" in kwargs

    def rotary_offset(self, kwargs: dict[str, Any]) -> int:
        return int(kwargs["encoder_hidden_states"].shape[1])


class StableAudioBlockLayout(BlockLayout):
    """``StableAudioDiTBlock``: the global conditioning token comes first, then the latent's time steps;
    the rotary table covers both."""

    prefix_tokens = 1
    rotary_argument = "rotary_embedding"


BASIC_BLOCK = BlockLayout()


@dataclass(frozen=True)
class TokenBlock:
    """A transformer block whose grid tokens SADA may prune."""

    name: str
    module: nn.Module
    level: int
    """Resolution level of its token grid: 0 is the latent grid, each level halves both axes."""
    layout: BlockLayout = field(default=BASIC_BLOCK)


class DenoiserLayout:
    """How a denoiser's latent maps to the engine's token grid, and how its output is wrapped.

    This base fits a plain ``(batch, channels, H, W)`` denoiser returning a tensor (custom loops).
    """

    def latent_grid(self, sample: torch.Tensor, kwargs: dict[str, Any]) -> Grid:
        """Token grid ``(H, W)`` of a denoiser call with latent ``sample`` and keyword arguments ``kwargs``."""
        return spatial_grid(sample)

    def to_grid(self, latent: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The solver's latent as a ``(batch, channels, H, W)`` view (the engine's layout)."""
        return latent

    def from_grid(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_grid`."""
        return latent

    def wrap_output(self, sample: torch.Tensor, return_dict: bool) -> Any:
        return sample


class UNetLayout(DenoiserLayout):
    def wrap_output(self, sample: torch.Tensor, return_dict: bool) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


class TransformerLayout(DenoiserLayout):
    def wrap_output(self, sample: torch.Tensor, return_dict: bool) -> Any:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)


class FluxLayout(TransformerLayout):
    """2x2-packed latent tokens ``(batch, H/16 * W/16, 64)`` of the image, row-major.

    The grid is read from the call's ``img_ids`` (row, column of every token), so any image size works.
    """

    def latent_grid(self, sample: torch.Tensor, kwargs: dict[str, Any]) -> Grid:
        ids = kwargs.get("img_ids")
        if ids is None:
            raise UnsupportedModelError("SADA needs the Flux transformer's img_ids passed by name")
        ids = ids[0] if ids.ndim == 3 else ids
        height, width = (int(value) + 1 for value in ids[:, 1:3].amax(dim=0).tolist())
        if height * width != sample.shape[1]:
            raise UnsupportedModelError(
                f"Flux img_ids describe a {height}x{width} grid but the latent has {sample.shape[1]} tokens"
            )
        return height, width

    def to_grid(self, latent: torch.Tensor, grid: Grid) -> torch.Tensor:
        return latent.transpose(1, 2).unflatten(2, grid)

    def from_grid(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.flatten(2).transpose(1, 2)


class SequenceLayout(TransformerLayout):
    """A 1-D latent ``(batch, channels, time)``: one token per time step, the grid is ``(time, 1)``."""

    def latent_grid(self, sample: torch.Tensor, kwargs: dict[str, Any]) -> Grid:
        return int(sample.shape[-1]), 1

    def to_grid(self, latent: torch.Tensor, grid: Grid) -> torch.Tensor:
        return latent.unsqueeze(-1)

    def from_grid(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.squeeze(-1)


def denoiser_of(pipe: Any) -> nn.Module:
    """A pipeline's denoiser: ``pipe.transformer`` if it has one (Flux, Stable Audio), else ``pipe.unet``.

    It reads attributes only, so it also serves pipeline-shaped objects that no adapter matches (the
    benchmark's bare-denoiser bench, which the peer accelerators attach to); :meth:`ModelAdapter.denoiser`
    is this.
    """
    denoiser = getattr(pipe, "transformer", None)
    return denoiser if denoiser is not None else pipe.unet


class ModelAdapter:
    """Base class of the adapters; one per denoiser family."""

    pipeline_classes: dict[str, str] = {}
    """Pipeline class name -> preset name of the family."""
    feeder_attributes: tuple[str, ...] = ()
    """Pipeline attributes holding modules whose outputs only feed the denoiser."""
    layout: DenoiserLayout = UNetLayout()

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.family = self.pipeline_classes[type(pipe).__name__]

    def denoiser(self) -> nn.Module:
        return denoiser_of(self.pipe)

    def feeder_modules(self) -> list[nn.Module]:
        return [module for name in self.feeder_attributes if (module := getattr(self.pipe, name, None)) is not None]

    def token_blocks(self) -> list[TokenBlock]:
        raise NotImplementedError

    def deep_blocks(self) -> list[nn.Module]:
        """The blocks a shallow step reuses instead of running (none: the family has no shallow steps)."""
        return []


class UNetAdapter(ModelAdapter):
    """``UNet2DConditionModel`` (and the AudioLDM2 UNet): audio LDMs, Stable Diffusion 2, SDXL, ControlNet.

    Their transformer blocks sit in ``down_blocks``, ``mid_block`` and ``up_blocks``; a down block
    at index i works at level i, the mid block at the lowest level, and up block i at level
    ``len(up_blocks) - 1 - i`` (its attentions run before its upsampler). Latents are
    ``(batch, channels, H, W)`` (time x frequency for spectrograms), flattened row-major into tokens
    by Transformer2DModel. A ControlNet needs nothing of its own: its residuals are UNet inputs, and
    on a skipped step (whose UNet output is rebuilt) the ControlNet call is skipped too.
    """

    pipeline_classes = {
        "MusicLDMPipeline": "musicldm",
        "AudioLDMPipeline": "audioldm",
        "AudioLDM2Pipeline": "audioldm2",
        "StableDiffusionPipeline": "sd2",
        "StableDiffusionXLPipeline": "sdxl",
        "StableDiffusionControlNetPipeline": "controlnet",
        # its UNet is SDXL's, so it takes SDXL's token settings
        "StableDiffusionXLControlNetPipeline": "sdxl",
    }
    feeder_attributes = ("controlnet",)

    def token_blocks(self) -> list[TokenBlock]:
        return unet_token_blocks(self.denoiser())

    def deep_blocks(self) -> list[nn.Module]:
        return unet_deep_blocks(self.denoiser())


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


def unet_deep_blocks(unet: nn.Module) -> list[nn.Module]:
    """The blocks below a diffusers-style UNet's outermost level: ``down_blocks[1:]``, the mid block and
    ``up_blocks[:-1]``. On a shallow step they return their cached outputs, so the UNet's own forward runs
    ``conv_in``, the time embedding, ``down_blocks[0]``, ``up_blocks[-1]`` (on the cached input of the last up
    block: the deep features) and ``conv_out``; the other blocks' cached outputs only keep its plumbing
    (residual lists, ControlNet additions) in shape."""
    mid = [] if unet.mid_block is None else [unet.mid_block]
    return [*unet.down_blocks[1:], *mid, *unet.up_blocks[:-1]]


class FluxAdapter(ModelAdapter):
    """``FluxTransformer2DModel``: every double- and single-stream block works on the one token grid
    of the packed latent (level 0)."""

    pipeline_classes = {"FluxPipeline": "flux"}
    layout = FluxLayout()

    def token_blocks(self) -> list[TokenBlock]:
        transformer, layout = self.denoiser(), FluxBlockLayout()
        return [
            TokenBlock(f"{stage}.{i}", block, 0, layout)
            for stage in ("transformer_blocks", "single_transformer_blocks")
            for i, block in enumerate(getattr(transformer, stage))
        ]


class StableAudioAdapter(ModelAdapter):
    """``StableAudioDiTModel`` on a ``(batch, channels, time)`` latent: ``sx`` is the window along time
    and ``sy`` should be 1 (the grid is one token wide)."""

    pipeline_classes = {"StableAudioPipeline": "stable-audio"}
    layout = SequenceLayout()

    def token_blocks(self) -> list[TokenBlock]:
        layout = StableAudioBlockLayout()
        return [
            TokenBlock(f"transformer_blocks.{i}", block, 0, layout)
            for i, block in enumerate(self.denoiser().transformer_blocks)
        ]


MODEL_ADAPTERS: tuple[type[ModelAdapter], ...] = (UNetAdapter, FluxAdapter, StableAudioAdapter)


def supported_pipelines() -> list[str]:
    return [name for adapter in MODEL_ADAPTERS for name in adapter.pipeline_classes]


def model_adapter_for(pipe: Any) -> ModelAdapter:
    for adapter_cls in MODEL_ADAPTERS:
        if adapter_cls.matches(pipe):
            return adapter_cls(pipe)
    raise UnsupportedModelError(
        f"SADA does not support {type(pipe).__name__}; supported pipelines: {', '.join(supported_pipelines())}"
    )
