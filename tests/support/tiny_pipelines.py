"""Tiny, randomly initialised audio diffusion pipelines built from configs (no downloads).

The pipelines use the same classes as the released models (MusicLDM, AudioLDM, AudioLDM 2) and the same
audio geometry -- 16 kHz, 64 mel bins, hop 160, a x4 VAE with 8 latent channels and a 4-level UNet with
attention in the three lower levels -- but with tiny widths, so a 2.56 s clip has the RECTANGULAR latent
8 x 64 x 16 (time x frequency), exactly as at real size. Odd latent lengths (e.g. 8 x 25 x 16 for 1 s) work
too: the UNets pass explicit upsample sizes.
The geometry and the tokenizer, CLAP, VAE and DDIM builders come from :mod:`sada_audio.audio_ldm_parts`,
shared with the embedded tiny MusicLDM.

The AudioLDM 2 UNet has, like the released conversion (``extra_self_attn_layer``), three transformer
blocks per attention layer: a self-attention, a cross-attention to the GPT-2 states and one to the T5
states. Its language model is a ``GPT2Model`` as in the released checkpoint; diffusers' type hint says
``GPT2LMHeadModel`` and logs "Expected types for language_model" on load -- harmless.

Tokenizers are built in memory from a handful of built-in sentences:
a byte-level BPE for RoBERTa (special tokens ``<s> <pad> </s> <unk> <mask>`` = ids 0..4, as the CLAP
text config expects) and a Unigram model for T5 (``<pad> </s> <unk>`` = 0..2, log-frequency scores counted
from the corpus, because the UnigramTrainer is not reproducible across processes), handed to transformers 5's
``RobertaTokenizer(vocab=..., merges=[(a, b), ...])`` and ``T5Tokenizer(vocab=[(piece, score), ...],
extra_ids=0)``. Both survive ``save_pretrained`` / ``from_pretrained`` (as ``tokenizer.json``). Merges must
be tuples: transformers 5 rejects ``"a b"`` strings here.

Their speed is in BENCHMARKS.md ("Measurements the code refers to"): prefer ``torch.set_num_threads(1)`` for
tests and benchmarks on a busy machine.

Everything is float32, in ``.eval()`` mode (CLAP's dropout would otherwise make runs differ) and uses
the DDIM scheduler settings the released checkpoints ship. The weights are random: outputs are noise-like
and only useful for shape, determinism and speed tests, never for quality. The vocoder is initialised
with std 0.1 (instead of 0.01) so that waveforms have an audio-like level (RMS ~3e-3, peak ~0.03).

The builders return pipelines already passed through :func:`sada_audio.pipelines.repair_pipeline`
(MusicLDM and AudioLDM 2 do not run under transformers 5 without it); ``repair=False`` skips that.

``real_size_audioldm_unet_config`` gives the configuration of the released AudioLDM / MusicLDM UNet
(about 185 M parameters) for benchmarks that need real-size compute with random weights.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AudioLDMPipeline,
    AutoencoderKL,
    AutoencoderOobleck,
    ControlNetModel,
    CosineDPMSolverMultistepScheduler,
    DDIMScheduler,
    EDMDPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    MusicLDMPipeline,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_audio import StableAudioProjectionModel
from tokenizers import pre_tokenizers
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    GPT2Config,
    GPT2Model,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from sada_audio.analytic import sd_betas_config
from sada_audio.audio_ldm_parts import (
    HOP_LENGTH,
    LATENT_CHANNELS,
    N_MELS,
    NORM_GROUPS,
    SAMPLE_RATE,
    UNET_DOWN_BLOCK_TYPES,
    UNET_UP_BLOCK_TYPES,
    audio_vae,
    clap_config,
    clap_feature_extractor,
    ddim_scheduler,
    real_size_audioldm_unet_config,
    roberta_tokenizer,
)
from sada_audio.pipelines import repair_pipeline

__all__ = [
    "SAMPLE_RATE",
    "HOP_LENGTH",
    "N_MELS",
    "LATENT_CHANNELS",
    "tiny_musicldm_pipeline",
    "tiny_audioldm_pipeline",
    "tiny_audioldm2_pipeline",
    "real_size_audioldm_unet_config",
    "IMAGE_SIZE",
    "STABLE_AUDIO_FRAMES",
    "tiny_sd2_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_controlnet_pipeline",
    "tiny_flux_pipeline",
    "tiny_stable_audio_pipeline",
    "stable_audio_open_scheduler",
    "TINY_PIPELINES",
    "image_call_kwargs",
]

logger = logging.getLogger(__name__)

_UNET_CHANNELS = (16, 32, 32, 64)
_UNET_HEADS = 2  # diffusers' ``attention_head_dim`` is in fact the number of heads
# 64 latent frames * 4 (VAE) * 10 ms (hop) = 2.56 s, the pipelines' default length.
_UNET_SAMPLE_SIZE = 64
# CLAP joint embedding size; the UNet's class-embedding input must match it.
_CLAP_PROJECTION_DIM = 32
_TEXT_MAX_LENGTH = 32

_CORPUS = (
    "a calm piano melody with soft strings",
    "upbeat techno music with a strong kick drum and high melodic riffs",
    "a dog barking in the rain while cars pass by",
    "jazz guitar solo over a walking bass line",
    "the sound of a hammer hitting a wooden surface",
    "ambient synth pads, slow tempo, relaxing",
    "rock song with distorted electric guitars and loud drums",
    "birds singing in a forest at dawn",
    "a man speaking on the radio, 120 bpm hip hop beat in the background",
    "orchestral film score with brass, choir and timpani",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'\"-()",
)
_T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _roberta_tokenizer() -> RobertaTokenizer:
    """The test pipelines' RoBERTa tokenizer: byte-level BPE over the built-in corpus."""
    return roberta_tokenizer(_CORPUS, vocab_size=400, model_max_length=_TEXT_MAX_LENGTH)


def _t5_tokenizer() -> T5Tokenizer:
    """Unigram (sentencepiece-style) model over the built-in corpus; ``<pad> </s> <unk>`` = ids 0..2.

    Built by counting, not with ``tokenizers``' UnigramTrainer: that trainer's scores vary by ~1e-4 from
    process to process, which could change segmentations and hence outputs between runs.
    """
    counts: Counter[str] = Counter()
    for sentence in _CORPUS:
        for word in sentence.lower().split() + sentence.split():
            counts["\u2581" + word] += 1  # whole words with the sentencepiece word-start mark
            counts.update(word)  # single characters, so that every in-alphabet text can be segmented
    counts["\u2581"] += len(_CORPUS)
    total = sum(counts.values())
    pieces = sorted(counts, key=lambda piece: (-counts[piece], piece))
    vocab = [(piece, 0.0) for piece in _T5_SPECIALS]
    vocab += [(piece, math.log(counts[piece] / total)) for piece in pieces]
    # extra_ids=0: the sentinel tokens are only used for T5's span-corruption pre-training
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=_TEXT_MAX_LENGTH)


def _t5_encoder(vocab_size: int, width: int) -> T5EncoderModel:
    """A one-layer T5 encoder with gated-GELU feed-forward (as FLAN-T5 and T5 v1.1)."""
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _clap_config(vocab_size: int) -> ClapConfig:
    """The test pipelines' CLAP: width 32, a 64 x 64 Swin input (up to 64 frames)."""
    return clap_config(
        vocab_size, width=32, spec_size=64, max_text_length=_TEXT_MAX_LENGTH, projection_dim=_CLAP_PROJECTION_DIM
    )


def _clap_feature_extractor() -> ClapFeatureExtractor:
    """The test pipelines' CLAP front end: hop 2560 gives 63 frames for 10 s, within the tiny audio tower's 64."""
    return clap_feature_extractor(hop_length=2560)


def _unet_geometry() -> dict[str, Any]:
    """Latent and block layout shared by the tiny UNets of all three families."""
    return {
        "sample_size": _UNET_SAMPLE_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": UNET_DOWN_BLOCK_TYPES,
        "up_block_types": UNET_UP_BLOCK_TYPES,
        "block_out_channels": _UNET_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": NORM_GROUPS,
    }


def _musicldm_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        **_unet_geometry(),
        # self-attention only: cross_attention_dim equals each block's width and the pipelines pass
        # encoder_hidden_states=None; the text enters through the class embedding instead
        cross_attention_dim=_UNET_CHANNELS,
        attention_head_dim=_UNET_HEADS,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=_CLAP_PROJECTION_DIM,
        class_embeddings_concat=True,
    )


def _vocoder() -> SpeechT5HifiGan:
    config = SpeechT5HifiGanConfig(
        model_in_dim=N_MELS,
        sampling_rate=SAMPLE_RATE,
        upsample_initial_channel=32,
        # 5 * 4 * 4 * 2 = 160 = hop length; kernel 11 on the rate-5 layer keeps the length exact
        upsample_rates=[5, 4, 4, 2],
        upsample_kernel_sizes=[11, 8, 8, 4],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
        # the default init (std 0.01) gives waveforms of RMS ~1e-9; 0.1 gives RMS ~3e-3, peak ~0.03,
        # the level of real audio, so that level-dependent metrics behave sensibly
        initializer_range=0.1,
    )
    return SpeechT5HifiGan(config)


def _seeded(seed: int, offset: int) -> None:
    # one offset per component, so that changing one component's config leaves the others' weights alone
    torch.manual_seed(seed * 1000 + offset)


def _finish(pipe: Any, repair: bool) -> Any:
    """Put every module in eval mode and float32, silence the progress bar, optionally repair."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            # cast only when needed: diffusers warns on every ``.to(dtype)`` call
            if any(p.dtype != torch.float32 for p in component.parameters() if p.is_floating_point()):
                component.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return repair_pipeline(pipe) if repair else pipe


def _clap_conditioned_parts(seed: int, text_encoder_from_config: Callable[[ClapConfig], Any]) -> dict[str, Any]:
    """The components MusicLDM and AudioLDM share; they differ only in the CLAP text encoder class."""
    tokenizer = _roberta_tokenizer()
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, 1)
        text_encoder = text_encoder_from_config(_clap_config(len(tokenizer)))
        _seeded(seed, 2)
        vae = audio_vae()
        _seeded(seed, 3)
        unet = _musicldm_unet()
        _seeded(seed, 4)
        vocoder = _vocoder()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": ddim_scheduler(),
        "vocoder": vocoder,
    }


def tiny_musicldm_pipeline(seed: int = 0, *, repair: bool = True) -> MusicLDMPipeline:
    """A tiny random ``MusicLDMPipeline`` (ClapModel text encoder, self-attention UNet, HiFi-GAN).

    Deterministic from ``seed``; the global torch RNG state is left as it was. ``repair=False`` returns it
    as ``from_pretrained`` would, without :func:`~sada_audio.pipelines.repair_pipeline`.
    """
    parts = _clap_conditioned_parts(seed, ClapModel)
    return _finish(MusicLDMPipeline(**parts, feature_extractor=_clap_feature_extractor()), repair)


def tiny_audioldm_pipeline(seed: int = 0, *, repair: bool = True) -> AudioLDMPipeline:
    """A tiny random ``AudioLDMPipeline`` (ClapTextModelWithProjection text encoder, as released).

    Deterministic from ``seed``; the global torch RNG state is left as it was. ``repair=False`` returns it
    as ``from_pretrained`` would, without :func:`~sada_audio.pipelines.repair_pipeline`.
    """
    parts = _clap_conditioned_parts(seed, lambda config: ClapTextModelWithProjection(config.text_config))
    return _finish(AudioLDMPipeline(**parts), repair)


def tiny_audioldm2_pipeline(seed: int = 0, *, repair: bool = True) -> AudioLDM2Pipeline:
    """A tiny random ``AudioLDM2Pipeline`` (CLAP + T5 encoders, GPT-2, two cross-attentions per block).

    Deterministic from ``seed``; the global torch RNG state is left as it was. ``repair=False`` returns it
    as ``from_pretrained`` would, without :func:`~sada_audio.pipelines.repair_pipeline`.
    """
    tokenizer = _roberta_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    t5_dim, gpt_dim = 32, 32
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, 1)
        text_encoder = ClapModel(_clap_config(len(tokenizer)))
        _seeded(seed, 2)
        vae = audio_vae()
        _seeded(seed, 3)
        unet = AudioLDM2UNet2DConditionModel(
            **_unet_geometry(),
            # per block: a self-attention (None), then cross-attention to the GPT-2 states (the
            # ``encoder_hidden_states``), then to the T5 states (``encoder_hidden_states_1``)
            cross_attention_dim=tuple((None, gpt_dim, t5_dim) for _ in _UNET_CHANNELS),
            attention_head_dim=_UNET_HEADS,
        )
        _seeded(seed, 4)
        vocoder = _vocoder()
        _seeded(seed, 5)
        text_encoder_2 = _t5_encoder(len(tokenizer_2), t5_dim)
        _seeded(seed, 6)
        language_model = GPT2Model(
            GPT2Config(
                n_embd=gpt_dim, n_layer=1, n_head=2, n_positions=64, vocab_size=16, bos_token_id=0, eos_token_id=0
            )
        )
        _seeded(seed, 7)
        projection_model = AudioLDM2ProjectionModel(
            text_encoder_dim=_CLAP_PROJECTION_DIM, text_encoder_1_dim=t5_dim, langauge_model_dim=gpt_dim
        )
    # the pipeline reads the number of generated GPT-2 states from here (8, as the released model)
    language_model.config.max_new_tokens = 8
    pipe = AudioLDM2Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        projection_model=projection_model,
        language_model=language_model,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        feature_extractor=_clap_feature_extractor(),
        unet=unet,
        scheduler=ddim_scheduler(),
        vocoder=vocoder,
    )
    return _finish(pipe, repair)


# -- image and transformer families (SD-2, SDXL, ControlNet, Flux, Stable Audio) --------------------------
#
# Same idea at tiny widths: the released pipeline classes, built from configs. The image VAEs downsample
# x2 (two levels), so a 32 x 48 image has a 16 x 24 latent (rectangular on purpose); Flux packs it 2 x 2
# into an 8 x 12 token grid. The Stable Audio DiT sees a 1-D latent of ``STABLE_AUDIO_FRAMES`` frames.

IMAGE_SIZE = (32, 48)
"""(height, width) of the tiny image pipelines' default output; divisible by 4 for Flux's packing."""
STABLE_AUDIO_FRAMES = 37
"""Latent frames of the tiny Stable Audio DiT (odd, not a multiple of the token window)."""

_CLIP_WIDTH = 32
_CLIP_MAX_LENGTH = 77
_CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
# Stable Audio Open's released noise range and parameterisation
_STABLE_AUDIO_SIGMAS = {
    "sigma_min": 0.3,
    "sigma_max": 500,
    "sigma_data": 1.0,
    "sigma_schedule": "exponential",
    "prediction_type": "v_prediction",
}


def _clip_tokenizer() -> CLIPTokenizer:
    """Character-level CLIP tokenizer: every byte-level symbol, alone and word-final (``</w>``), no merges.

    Nothing is ever out of vocabulary, and no training is involved; ``<|startoftext|>`` = 0 and
    ``<|endoftext|>`` = 1 (also the padding token, as in Stable Diffusion).
    """
    symbols = pre_tokenizers.ByteLevel.alphabet()
    pieces = _CLIP_SPECIALS + sorted(symbols) + sorted(symbol + "</w>" for symbol in symbols)
    return CLIPTokenizer(
        vocab={piece: index for index, piece in enumerate(pieces)}, merges=[], model_max_length=_CLIP_MAX_LENGTH
    )


def _clip_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_CLIP_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        projection_dim=_CLIP_WIDTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _image_vae(latent_channels: int, **extra: Any) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=NORM_GROUPS,
        sample_size=IMAGE_SIZE[0],
        scaling_factor=1.0,
        **extra,
    )


def _image_unet(xl: bool) -> UNet2DConditionModel:
    """SD-2-like (attention from the latent grid on, linear projections) or SDXL-like (no attention at
    full resolution, two text encoders, ``text_time`` added conditioning)."""
    common: dict[str, Any] = {
        "sample_size": IMAGE_SIZE[0] // 2,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": NORM_GROUPS,
        "attention_head_dim": 2,
        "use_linear_projection": True,
    }
    if not xl:
        return UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_CLIP_WIDTH,
        )
    time_embed_dim = 8
    return UNet2DConditionModel(
        **common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=2 * _CLIP_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six size / crop ids, plus the pooled projection of the second text encoder
        projection_class_embeddings_input_dim=6 * time_embed_dim + _CLIP_WIDTH,
    )


def _controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    # one stride-2 stage in the conditioning embedding: the control image goes to the x2 latent grid
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16), load_weights_from_unet=False)


def _stable_diffusion_parts(seed: int, xl: bool, controlnet: bool) -> dict[str, Any]:
    tokenizer = _clip_tokenizer()
    parts: dict[str, Any] = {"tokenizer": tokenizer}
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, 1)
        parts["text_encoder"] = CLIPTextModel(_clip_config(len(tokenizer)))
        _seeded(seed, 2)
        parts["vae"] = _image_vae(4)
        _seeded(seed, 3)
        parts["unet"] = _image_unet(xl)
        if xl:
            _seeded(seed, 4)
            parts["text_encoder_2"] = CLIPTextModelWithProjection(_clip_config(len(tokenizer)))
            parts["tokenizer_2"] = tokenizer
        if controlnet:
            _seeded(seed, 5)
            parts["controlnet"] = _controlnet(parts["unet"])
    if xl:
        # the released SDXL ships Euler (epsilon)
        parts["scheduler"] = EulerDiscreteScheduler(
            **sd_betas_config("epsilon"), timestep_spacing="leading", steps_offset=1
        )
        parts["add_watermarker"] = False
    else:
        # SD 2 (768-v) is a v-prediction model; DDIM with its released settings
        parts["scheduler"] = DDIMScheduler(
            **sd_betas_config("epsilon") | {"prediction_type": "v_prediction"},
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return parts


def tiny_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny random ``StableDiffusionPipeline`` shaped like SD 2 (v-prediction DDIM, CLIP text encoder)."""
    return _finish(StableDiffusionPipeline(**_stable_diffusion_parts(seed, xl=False, controlnet=False)), repair=False)


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny random ``StableDiffusionXLPipeline`` (two CLIP encoders, Euler, no attention at full resolution)."""
    return _finish(StableDiffusionXLPipeline(**_stable_diffusion_parts(seed, xl=True, controlnet=False)), repair=False)


def tiny_controlnet_pipeline(seed: int = 0, *, xl: bool = False) -> Any:
    """A tiny random ``StableDiffusionControlNetPipeline`` (``xl=True``: ``StableDiffusionXLControlNetPipeline``).

    Call it with ``image=`` a control image of the output size, e.g. ``torch.rand(1, 3, *IMAGE_SIZE)``.
    """
    parts = _stable_diffusion_parts(seed, xl=xl, controlnet=True)
    pipeline_class = StableDiffusionXLControlNetPipeline if xl else StableDiffusionControlNetPipeline
    return _finish(pipeline_class(**parts), repair=False)


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny random ``FluxPipeline``: one double- and one single-stream block, CLIP + T5 text encoders,
    flow-matching Euler with FLUX.1-dev's dynamic shifting. Pass a short ``max_sequence_length`` (e.g. 16)."""
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    t5_dim = 32
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, 1)
        text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))
        _seeded(seed, 2)
        vae = _image_vae(4, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
        _seeded(seed, 3)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels x the 2 x 2 packing
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            pooled_projection_dim=_CLIP_WIDTH,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        )
        _seeded(seed, 5)
        text_encoder_2 = _t5_encoder(len(tokenizer_2), t5_dim)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return _finish(pipe, repair=False)


def tiny_stable_audio_pipeline(seed: int = 0) -> StableAudioPipeline:
    """A tiny random ``StableAudioPipeline`` (T5 encoder, DiT over ``STABLE_AUDIO_FRAMES`` latent frames,
    Oobleck VAE with hop 8) and the scheduler class the pipeline declares, ``EDMDPMSolverMultistepScheduler``
    (the ODE solver, on Stable Audio Open's sigma range); :func:`stable_audio_open_scheduler` gives the
    SDE scheduler the released model ships (needs ``torchsde``)."""
    tokenizer = _t5_tokenizer()
    t5_dim, conditioning_dim, latent_channels = 32, 32, 8
    with torch.random.fork_rng(devices=[]):
        _seeded(seed, 1)
        text_encoder = _t5_encoder(len(tokenizer), t5_dim)
        _seeded(seed, 2)
        vae = AutoencoderOobleck(
            encoder_hidden_size=8,
            downsampling_ratios=[2, 4],
            channel_multiples=[1, 2],
            decoder_channels=8,
            decoder_input_channels=latent_channels,
            audio_channels=2,
            sampling_rate=SAMPLE_RATE,
        )
        _seeded(seed, 3)
        transformer = StableAudioDiTModel(
            sample_size=STABLE_AUDIO_FRAMES,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_layers=2,
            attention_head_dim=8,  # the pipeline's rotary table covers half of it: must stay divisible by 4
            num_attention_heads=2,
            num_key_value_attention_heads=1,
            cross_attention_dim=conditioning_dim,
            time_proj_dim=16,
            # the start and end seconds embeddings, concatenated
            global_states_input_dim=2 * conditioning_dim,
            cross_attention_input_dim=conditioning_dim,
        )
        _seeded(seed, 4)
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=t5_dim, conditioning_dim=conditioning_dim, min_value=0, max_value=512
        )
    scheduler = EDMDPMSolverMultistepScheduler(**_STABLE_AUDIO_SIGMAS)
    pipe = StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection_model,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
    )
    return _finish(pipe, repair=False)


def stable_audio_open_scheduler() -> Any:
    """``CosineDPMSolverMultistepScheduler`` with Stable Audio Open's released settings (needs ``torchsde``)."""
    return CosineDPMSolverMultistepScheduler(**_STABLE_AUDIO_SIGMAS, solver_order=2, rho=7.0, final_sigmas_type="zero")


#: The tiny pipeline of every SADA preset family, by family name.
TINY_PIPELINES: dict[str, Callable[[], Any]] = {
    "musicldm": tiny_musicldm_pipeline,
    "audioldm": tiny_audioldm_pipeline,
    "audioldm2": tiny_audioldm2_pipeline,
    "sd2": tiny_sd2_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "controlnet": tiny_controlnet_pipeline,
    "flux": tiny_flux_pipeline,
    "stable-audio": tiny_stable_audio_pipeline,
}


def image_call_kwargs(pipe: Any) -> dict[str, Any]:
    """What a call of a tiny image pipeline needs besides the prompt and the steps: the image size, Flux's text
    length, a ControlNet's control image (seeded, the same every time)."""
    name = type(pipe).__name__
    kwargs: dict[str, Any] = {"height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]}
    if name == "FluxPipeline":
        kwargs["max_sequence_length"] = 16
    if "ControlNet" in name:
        kwargs["image"] = torch.rand(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    return kwargs
