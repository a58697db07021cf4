"""The architectures of the tiny MusicLDM, built from configs (training starts from these).

The geometry is that of :mod:`sada_audio.audio_ldm_parts`, shared with the random test MusicLDM (16 kHz,
64 mel bins, hop 160, a x4 VAE with 8 latent channels, a four-level UNet with self-attention in the three
lower levels and the text embedding entering through the class-embedding projection), with wider UNet
blocks, a wider CLAP and a HiFi-GAN large enough to be trained into a real vocoder.
"""

from __future__ import annotations

from collections.abc import Iterable

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    ClapFeatureExtractor,
    ClapModel,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

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
    roberta_tokenizer,
)

__all__ = [
    "CLAP_DIM",
    "TEXT_MAX_LENGTH",
    "UNET_CHANNELS",
    "UNET_SAMPLE_SIZE",
    "build_clap",
    "build_feature_extractor",
    "build_scheduler",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "build_vocoder",
]

#: joint CLAP embedding size, also the UNet's class-embedding input
CLAP_DIM = 64
TEXT_MAX_LENGTH = 40
UNET_CHANNELS = (32, 64, 96, 128)
#: 128 latent frames = 512 mel frames = 5.12 s, the pipeline's default length
UNET_SAMPLE_SIZE = 128
_TOKENIZER_VOCAB = 500


def build_tokenizer(captions: Iterable[str]) -> RobertaTokenizer:
    """Byte-level BPE over our captions, RoBERTa special tokens at ids 0..4 (as the CLAP text config expects)."""
    return roberta_tokenizer(captions, vocab_size=_TOKENIZER_VOCAB, model_max_length=TEXT_MAX_LENGTH)


def build_vae() -> AutoencoderKL:
    """The shared audio VAE: x4 in time and frequency, 8 latent channels."""
    return audio_vae()


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=UNET_DOWN_BLOCK_TYPES,
        up_block_types=UNET_UP_BLOCK_TYPES,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        norm_num_groups=NORM_GROUPS,
        # self-attention only (cross_attention_dim = block width, encoder_hidden_states=None); the text
        # embedding enters through the class-embedding projection, as in MusicLDM
        cross_attention_dim=UNET_CHANNELS,
        attention_head_dim=4,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=CLAP_DIM,
        class_embeddings_concat=True,
    )


def build_clap(vocab_size: int) -> ClapModel:
    """The shared CLAP layout at width 64; spec_size 128 with 64 mel bins lets the Swin tower fold up to 256
    frames (10 s at hop 640) into 128 x 128."""
    config = clap_config(vocab_size, width=64, spec_size=128, max_text_length=TEXT_MAX_LENGTH, projection_dim=CLAP_DIM)
    return ClapModel(config)


def build_feature_extractor() -> ClapFeatureExtractor:
    """CLAP front end: hop 640 (40 ms) and clips up to 10 s (251 frames), repeat-padded, never cropped at random."""
    return clap_feature_extractor(hop_length=640)


def build_vocoder() -> SpeechT5HifiGan:
    config = SpeechT5HifiGanConfig(
        model_in_dim=N_MELS,
        sampling_rate=SAMPLE_RATE,
        upsample_initial_channel=128,
        # 5 * 4 * 4 * 2 = 160 = hop length; kernel 11 on the rate-5 layer keeps the length exact
        upsample_rates=[5, 4, 4, 2],
        upsample_kernel_sizes=[11, 8, 8, 4],
        resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3], [1, 3]],
        normalize_before=False,
    )
    assert HOP_LENGTH == 5 * 4 * 4 * 2
    return SpeechT5HifiGan(config)


def build_scheduler() -> DDIMScheduler:
    """The released MusicLDM's DDIM settings (also the training noise schedule)."""
    return ddim_scheduler()
