"""Tiny, randomly initialised audio diffusion pipelines built from configs (no downloads).

The pipelines use the same classes as the released models (MusicLDM, AudioLDM, AudioLDM 2) and the same
audio geometry -- 16 kHz, 64 mel bins, hop 160, a x4 VAE with 8 latent channels and a 4-level UNet with
attention in the three lower levels -- but with tiny widths, so a 2.56 s clip has the RECTANGULAR latent
8 x 64 x 16 (time x frequency), exactly as at real size, and a 50-step run takes about a second. Odd latent
lengths (e.g. 8 x 25 x 16 for 1 s) work too: the UNets pass explicit upsample sizes.

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

Measured on the 2-core development CPU (torch 2.13 CPU), 50 DDIM steps with guidance 2.5 (100 UNet
evaluations), ``audio_length_in_s=2.56`` (latent 8 x 64 x 16), whole pipeline call, best of 5 after a
warm-up (the machine was shared; load average about 2):

=================  ==========  ===========  ========  =========
pipeline           parameters  UNet params  1 thread  2 threads
=================  ==========  ===========  ========  =========
tiny MusicLDM      2.04 M      1.27 M       0.70 s    0.65 s
tiny AudioLDM      2.02 M      1.27 M       0.71 s    0.85 s
tiny AudioLDM 2    3.01 M      2.21 M       1.35 s    1.28 s
=================  ==========  ===========  ========  =========

At these widths a second thread barely helps, and under contention two threads can be 10x slower
(OpenMP spinning): prefer ``torch.set_num_threads(1)`` for tests and benchmarks on a busy machine.

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

import json
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
    DDIMScheduler,
    MusicLDMPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    ClapTextModelWithProjection,
    GPT2Config,
    GPT2Model,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
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
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_MELS = 64
LATENT_CHANNELS = 8

# VAE: three levels -> x4 downsampling, so 64 mel bins become 16 latent bins.
_VAE_CHANNELS = (16, 32, 64)
# UNet: four levels like the released models; the first one has no attention.
_UNET_CHANNELS = (16, 32, 32, 64)
_UNET_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_UNET_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
_UNET_HEADS = 2  # diffusers' ``attention_head_dim`` is in fact the number of heads
_NORM_GROUPS = 8
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
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _roberta_tokenizer() -> RobertaTokenizer:
    """Byte-level BPE trained on the built-in corpus, with RoBERTa's special tokens at ids 0..4."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_ROBERTA_SPECIALS,
        # the full byte alphabet, so that no input text is ever out of vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(
        vocab=model["vocab"], merges=merges, add_prefix_space=True, model_max_length=_TEXT_MAX_LENGTH
    )


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


def _clap_config(vocab_size: int) -> ClapConfig:
    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        # RoBERTa positions start after the padding index, hence + 2
        max_position_embeddings=_TEXT_MAX_LENGTH + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = ClapAudioConfig(
        spec_size=64,
        num_mel_bins=N_MELS,
        window_size=4,
        patch_size=4,
        patch_stride=4,
        patch_embeds_hidden_size=16,
        # the final width of the Swin tower: patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
    )
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=_CLAP_PROJECTION_DIM)


def _clap_feature_extractor() -> ClapFeatureExtractor:
    """CLAP front end at 16 kHz: 10 s of audio give 63 frames, within the tiny audio tower's 64."""
    return ClapFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=SAMPLE_RATE,
        hop_length=2560,
        max_length_s=10,
        frequency_max=SAMPLE_RATE // 2,
        # "rand_trunc" leaves clips up to max_length_s untouched (no random crop, no random
        # ``is_longer`` flag as "fusion" sets), so waveform scoring is deterministic.
        truncation="rand_trunc",
        padding="repeatpad",
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        layers_per_block=1,
        norm_num_groups=_NORM_GROUPS,
        # untrained latents: unit scale (a trained VAE would use 1 / std of its latents)
        scaling_factor=1.0,
    )


def _unet_geometry() -> dict[str, Any]:
    """Latent and block layout shared by the tiny UNets of all three families."""
    return {
        "sample_size": _UNET_SAMPLE_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": _UNET_DOWN,
        "up_block_types": _UNET_UP,
        "block_out_channels": _UNET_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": _NORM_GROUPS,
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


def _ddim() -> DDIMScheduler:
    """The DDIM settings of the released AudioLDM / MusicLDM / AudioLDM 2 checkpoints."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


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
        vae = _vae()
        _seeded(seed, 3)
        unet = _musicldm_unet()
        _seeded(seed, 4)
        vocoder = _vocoder()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": _ddim(),
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
        vae = _vae()
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
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=t5_dim,
                d_kv=16,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu",  # as in FLAN-T5, which AudioLDM 2 uses
                pad_token_id=0,
                eos_token_id=1,
            )
        )
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
        scheduler=_ddim(),
        vocoder=vocoder,
    )
    return _finish(pipe, repair)


def real_size_audioldm_unet_config() -> dict[str, Any]:
    """Config of the released AudioLDM / MusicLDM ``UNet2DConditionModel`` (about 185 M parameters).

    Build it with ``UNet2DConditionModel(**real_size_audioldm_unet_config())`` for random-weight
    benchmarks at real compute cost.
    """
    channels = (128, 256, 384, 640)
    return {
        "sample_size": 128,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": list(_UNET_DOWN),
        "up_block_types": list(_UNET_UP),
        "block_out_channels": list(channels),
        "layers_per_block": 2,
        "cross_attention_dim": list(channels),  # self-attention only
        "attention_head_dim": 8,
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": 512,
        "class_embeddings_concat": True,
    }
