"""Shared geometry and config builders of small audio latent-diffusion components.

The random test pipelines (``tests/support/tiny_pipelines.py``) and the embedded tiny MusicLDM
(:mod:`sada_audio.tiny`) are both built from it: the audio geometry of AudioLDM / MusicLDM (16 kHz, 64 mel
bins, hop 160, a x4 VAE with 8 latent channels, a four-level UNet with attention in the three lower levels),
the RoBERTa tokenizer and the CLAP model and front end that condition them, and the DDIM settings the released
checkpoints ship. Sizes that differ between the two (widths, vocabulary, text length) are parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapTextConfig, RobertaTokenizer

__all__ = [
    "SAMPLE_RATE",
    "HOP_LENGTH",
    "N_MELS",
    "LATENT_CHANNELS",
    "NORM_GROUPS",
    "UNET_DOWN_BLOCK_TYPES",
    "UNET_UP_BLOCK_TYPES",
    "roberta_tokenizer",
    "clap_config",
    "clap_feature_extractor",
    "audio_vae",
    "ddim_scheduler",
    "real_size_audioldm_unet_config",
]

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_MELS = 64
LATENT_CHANNELS = 8
#: GroupNorm groups of the VAEs and UNets
NORM_GROUPS = 8
#: four UNet levels like the released models; the first one has no attention
UNET_DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
UNET_UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")

# VAE: three levels -> x4 downsampling, so 64 mel bins become 16 latent bins.
_VAE_CHANNELS = (16, 32, 64)
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def roberta_tokenizer(corpus: Iterable[str], *, vocab_size: int, model_max_length: int) -> RobertaTokenizer:
    """Byte-level BPE trained on ``corpus``, RoBERTa's special tokens at ids 0..4 (as the CLAP text config
    expects). Merges are handed over as tuples: transformers 5 rejects ``"a b"`` strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_ROBERTA_SPECIALS,
        # the full byte alphabet, so that no input text is ever out of vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(
        vocab=model["vocab"], merges=merges, add_prefix_space=True, model_max_length=model_max_length
    )


def clap_config(
    vocab_size: int, *, width: int, spec_size: int, max_text_length: int, projection_dim: int
) -> ClapConfig:
    """A two-layer CLAP of the given ``width`` (text hidden size and final Swin width). ``spec_size`` is the
    Swin tower's square input: 64 with 64 mel bins holds up to 64 frames, 128 folds up to 256 frames."""
    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        # RoBERTa positions start after the padding index, hence + 2
        max_position_embeddings=max_text_length + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = ClapAudioConfig(
        spec_size=spec_size,
        num_mel_bins=N_MELS,
        window_size=4,
        patch_size=4,
        patch_stride=4,
        patch_embeds_hidden_size=width // 2,
        # the final width of the Swin tower: patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        hidden_size=width,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
    )
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


def clap_feature_extractor(hop_length: int) -> ClapFeatureExtractor:
    """CLAP front end at 16 kHz for clips up to 10 s, repeat-padded, with ``hop_length`` samples per frame."""
    return ClapFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=SAMPLE_RATE,
        hop_length=hop_length,
        max_length_s=10,
        frequency_max=SAMPLE_RATE // 2,
        # "rand_trunc" leaves clips up to max_length_s untouched (no random crop, no random
        # ``is_longer`` flag as "fusion" sets), so waveform scoring is deterministic.
        truncation="rand_trunc",
        padding="repeatpad",
    )


def audio_vae() -> AutoencoderKL:
    """Mel-spectrogram VAE: x4 in time and frequency, ``LATENT_CHANNELS`` latent channels, tiny widths."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        layers_per_block=1,
        norm_num_groups=NORM_GROUPS,
        # untrained latents: unit scale (a trained VAE would use 1 / std of its latents)
        scaling_factor=1.0,
    )


def ddim_scheduler() -> DDIMScheduler:
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
        "down_block_types": list(UNET_DOWN_BLOCK_TYPES),
        "up_block_types": list(UNET_UP_BLOCK_TYPES),
        "block_out_channels": list(channels),
        "layers_per_block": 2,
        "cross_attention_dim": list(channels),  # self-attention only
        "attention_head_dim": 8,
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": 512,
        "class_embeddings_concat": True,
    }
