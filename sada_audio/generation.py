"""Running a text-to-audio pipeline on one or many prompts, with or without SADA.

Shared by ``sada-audio generate``, ``sada-audio render`` and ``sada-audio evaluate --generate``, so that
every command seeds, batches and records its clips the same way.

Seeding: every clip gets its own ``torch.Generator`` seeded with the clip's seed, so a clip's initial
noise does not depend on which other clips share its batch (``diffusers.utils.torch_utils.randn_tensor``
draws one sample per generator). A batch of clips with one waveform each therefore starts from exactly
the noise the clips would get alone. With several waveforms per prompt a single clip draws all its
waveforms from one generator, as the pipelines do for a plain ``generator=``.

One upstream exception: AudioLDM 2's GPT-2 generates its conditioning after the *padded* prompt, so a
prompt batched with a longer one is conditioned differently (BENCHMARKS.md, "Measurements the code refers
to"). Its prompts batch exactly only when they have the same token length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from diffusers import AudioLDMPipeline, MusicLDMPipeline

from sada_audio._compat import encode_prompt_alone, execution_device
from sada_audio.apply import apply_sada, handle_of
from sada_audio.audio import pipeline_sample_rate
from sada_audio.config import MAX_SEED, SADAConfig
from sada_audio.errors import SADAError
from sada_audio.pipelines import check_steps

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "sada-audio")
_SCHEDULER_KEYS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "timestep_spacing",
    "prediction_type",
    "algorithm_type",
    "solver_order",
)


@dataclass(frozen=True)
class ClipRequest:
    """What varies from clip to clip inside one batch."""

    prompt: str
    seed: int = 0
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise SADAError(f"a seed must be a whole number in 0..{MAX_SEED}, got {self.seed!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """What every clip of one pipeline call shares (it fixes the latent shape and the step count)."""

    steps: int = 50
    duration: float | None = None
    guidance: float = 2.0
    num_waveforms: int = 1


@dataclass
class GeneratedBatch:
    """The result of one pipeline call.

    Attributes:
        waveforms: float array of shape ``(clips, num_waveforms, samples)``; for pipelines that rank their
            waveforms (MusicLDM, AudioLDM 2 by CLAP score) the best comes first.
        sample_rate: of the waveforms, in Hz.
        wall_time_s: of the pipeline call alone (no loading, no file writing), shared by all its clips.
        sada_config: the configuration SADA ran with (``SADAConfig.to_dict``), None without SADA.
        sada_stats: SADA's statistics of this call (``SADAStats.to_dict``), None without SADA.
    """

    waveforms: np.ndarray
    sample_rate: int
    wall_time_s: float
    sada_config: dict[str, Any] | None
    sada_stats: dict[str, Any] | None

    @property
    def model_calls(self) -> int | None:
        return None if self.sada_stats is None else self.sada_stats["model_calls"]


def _generators(
    clips: Sequence[ClipRequest], num_waveforms: int, device: torch.device
) -> torch.Generator | list[torch.Generator]:
    if len(clips) == 1:
        return torch.Generator(device=device).manual_seed(clips[0].seed)
    if num_waveforms != 1:
        raise SADAError("several clips in one call need num_waveforms=1; generate them one call at a time")
    return [torch.Generator(device=device).manual_seed(clip.seed) for clip in clips]


def _negative_prompts(clips: Sequence[ClipRequest]) -> str | list[str] | None:
    if len(clips) == 1:
        return clips[0].negative_prompt
    if all(clip.negative_prompt is None for clip in clips):
        return None
    # The pipelines encode a missing negative prompt as the empty string, so mixing is exact.
    return [clip.negative_prompt or "" for clip in clips]


class PromptEmbeddingCache:
    """The text embeddings of the prompts a pipeline has already encoded, so that each is encoded once.

    Only for pipelines whose encoding of a prompt cannot depend on the rest of its batch: MusicLDM and AudioLDM
    encode each prompt alone into one CLAP vector (the tokenizer pads to a fixed length). Every text is encoded
    in a batch of one, exactly as the pipeline encodes a single clip, so a clip conditioned from the cache gets
    bit-identical embeddings whether it is rendered alone or in a batch (:meth:`supports` says which pipelines;
    AudioLDM 2 pads to the longest prompt of its batch and is encoded by the pipeline itself).
    """

    def __init__(self, pipe: Any) -> None:
        if not self.supports(pipe):
            raise SADAError(f"{type(pipe).__name__} has no prompt embedding cache; it encodes its prompts itself")
        self._pipe = pipe
        self._embeddings: dict[str, torch.Tensor] = {}

    @staticmethod
    def supports(pipe: Any) -> bool:
        return isinstance(pipe, (MusicLDMPipeline, AudioLDMPipeline))

    def __len__(self) -> int:
        return len(self._embeddings)

    def embedding(self, text: str) -> torch.Tensor:
        """The embedding of ``text``, shape ``(1, dim)``, encoded on first use."""
        if text not in self._embeddings:
            device = execution_device(self._pipe)
            with torch.no_grad():
                # do_classifier_free_guidance=False: only the text's own embedding, no negative one
                self._embeddings[text] = encode_prompt_alone(self._pipe, text, device)
        return self._embeddings[text]

    def pipeline_inputs(self, clips: Sequence[ClipRequest], guidance: float) -> dict[str, torch.Tensor | None]:
        """``prompt_embeds`` and ``negative_prompt_embeds`` for one call; a missing negative prompt is the empty
        text, as the pipelines encode it; no negative embeddings without guidance (scale <= 1), as they skip it."""
        negative = None
        if guidance > 1.0:
            negative = torch.cat([self.embedding(clip.negative_prompt or "") for clip in clips])
        return {
            "prompt_embeds": torch.cat([self.embedding(clip.prompt) for clip in clips]),
            "negative_prompt_embeds": negative,
        }


def generate_batch(
    pipe: Any,
    clips: Sequence[ClipRequest],
    settings: SamplingSettings,
    *,
    accelerate: bool = True,
    sada_config: SADAConfig | None = None,
    prompt_cache: PromptEmbeddingCache | None = None,
) -> GeneratedBatch:
    """Generate ``clips`` in one call of ``pipe`` (MusicLDM, AudioLDM or AudioLDM 2 pipelines).

    Args:
        pipe: a loaded text-to-audio pipeline.
        clips: the prompts, seeds and negative prompts; at least one.
        settings: steps, duration, guidance and waveforms per prompt, shared by all clips.
        accelerate: apply SADA for the duration of the call (removed again afterwards), or use the SADA the
            caller attached for several calls (a compiled denoiser keeps its graphs only while the same hooks
            stay attached).
        sada_config: SADA's configuration; None picks the preset of the pipeline's family (or takes the
            attached SADA's).
        prompt_cache: take the text embeddings from this cache (made for ``pipe``) instead of letting the
            pipeline encode the prompts. Ignored with several waveforms per prompt: MusicLDM ranks those by
            the prompt's text.

    Raises:
        SADAError: no clips, several clips with several waveforms each, or the pipeline rejected the input
            (for example a duration too short for its latent).
    """
    if not clips:
        raise SADAError("no clips to generate")
    check_steps(pipe.scheduler, settings.steps)
    device = execution_device(pipe)
    generator = _generators(clips, settings.num_waveforms, device)
    if prompt_cache is not None and settings.num_waveforms == 1:
        text_inputs: dict[str, Any] = prompt_cache.pipeline_inputs(clips, settings.guidance)
    else:
        prompts = clips[0].prompt if len(clips) == 1 else [clip.prompt for clip in clips]
        text_inputs = {"prompt": prompts, "negative_prompt": _negative_prompts(clips)}
    attached = handle_of(pipe)
    reuse = accelerate and attached is not None and sada_config in (None, attached.config)
    handle = attached if reuse else apply_sada(pipe, sada_config) if accelerate else None
    try:
        started = time.perf_counter()
        try:
            result = pipe(
                **text_inputs,
                num_inference_steps=settings.steps,
                audio_length_in_s=settings.duration,
                guidance_scale=settings.guidance,
                num_waveforms_per_prompt=settings.num_waveforms,
                generator=generator,
                output_type="np",
            )
        except SADAError:
            raise
        except ValueError as error:  # the pipeline's own input checks
            logger.debug("the pipeline rejected the input", exc_info=True)
            raise SADAError(f"the pipeline rejected the input: {error}") from error
        wall_time = time.perf_counter() - started
        config = None if handle is None else handle.config.to_dict()
        stats = None if handle is None else handle.stats.to_dict()
    finally:
        if handle is not None and not reuse:
            handle.remove()
    waveforms = np.asarray(result.audios, dtype=np.float32)
    waveforms = waveforms.reshape(len(clips), settings.num_waveforms, waveforms.shape[-1])
    return GeneratedBatch(waveforms, pipeline_sample_rate(pipe), wall_time, config, stats)


def scheduler_settings(scheduler: Any) -> dict[str, Any]:
    """What tells samplers of one class apart (``euler-karras`` is Euler on Karras sigmas): the sigma schedule,
    the timestep spacing, the prediction type, the solver's algorithm and order, where ``scheduler`` has them."""
    return {key: scheduler.config[key] for key in _SCHEDULER_KEYS if key in scheduler.config}


def sampler_request(scheduler: Any) -> dict[str, Any]:
    """The sampler a clip ran with, as a render request records it: the class and :func:`scheduler_settings`."""
    return {"class": type(scheduler).__name__, **scheduler_settings(scheduler)}


def run_metadata(
    pipe: Any, model: str, model_id: str, device: str, dtype: str, compile_mode: str = "none"
) -> dict[str, Any]:
    """The part of a clip's JSON sidecar that describes the run rather than the clip (``dtype`` as resolved,
    never ``auto``; ``compile_mode``: how the denoiser was compiled)."""
    return {
        "model": model,
        "model_id": model_id,
        "pipeline_class": type(pipe).__name__,
        "scheduler_class": type(pipe.scheduler).__name__,
        "scheduler_config": scheduler_settings(pipe.scheduler),
        "device": device,
        "dtype": dtype,
        "compile": compile_mode,
        "versions": {package: version(package) for package in _VERSIONED_PACKAGES},
    }


def clip_metadata(
    clip: ClipRequest, settings: SamplingSettings, batch: GeneratedBatch, files: Sequence[str]
) -> dict[str, Any]:
    """The part of a clip's JSON sidecar that describes the clip: its request, settings, files and SADA run."""
    return {
        "prompt": clip.prompt,
        "negative_prompt": clip.negative_prompt,
        "seed": clip.seed,
        "steps": settings.steps,
        "duration_s": batch.waveforms.shape[-1] / batch.sample_rate,
        "requested_duration_s": settings.duration,
        "guidance_scale": settings.guidance,
        "num_waveforms": settings.num_waveforms,
        "sample_rate": batch.sample_rate,
        "files": list(files),
        "accelerate": "none" if batch.sada_stats is None else "sada",
        "sada_config": batch.sada_config,
        "sada_stats": batch.sada_stats,
        "wall_time_s": batch.wall_time_s,
        "batch_size": batch.waveforms.shape[0],
    }
