"""Set metrics with a pluggable audio embedding: Frechet Audio Distance and CLAP score.

The standard embedding is CLAP through transformers' ``ClapModel``: a hub id or local folder of a ClapModel
(for example ``laion/larger_clap_music``), or a diffusers pipeline folder whose ``text_encoder`` is a
ClapModel (MusicLDM), whose audio and text towers are then used. The offline default is the CLAP of the
embedded ``tiny-musicldm`` model, when it is installed. Every result names the embedding it used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import librosa
import numpy as np
import torch
from scipy import linalg
from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

from sada_audio._compat import clap_embedding
from sada_audio.pipelines import hub_offline, looks_like_path, probe_hub
from sada_audio.tiny import TINY_MUSICLDM_PATH

from .metrics import MetricUnavailableError

__all__ = [
    "DEFAULT_EMBEDDING",
    "AudioEmbedding",
    "ClapEmbedding",
    "default_embedding_source",
    "load_clap_embedding",
    "frechet_distance",
    "clap_scores",
    "set_metrics",
]

logger = logging.getLogger(__name__)

#: The name of the offline default embedding (the embedded model's own CLAP towers).
DEFAULT_EMBEDDING = "tiny-musicldm"
_BATCH = 16


class AudioEmbedding(Protocol):
    """What Frechet Audio Distance needs: a name for the report and one vector per clip."""

    name: str

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray: ...


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.float(), dim=-1).numpy().astype(np.float64)


class ClapEmbedding:
    """CLAP audio and text embeddings (unit vectors) from a transformers ``ClapModel``.

    Audio is resampled to the feature extractor's rate (librosa) and cut to its maximum length from the
    start, so that the feature extractor never crops at random and a clip always gets the same embedding.
    """

    def __init__(self, name: str, model: ClapModel, feature_extractor: ClapFeatureExtractor, tokenizer: Any) -> None:
        self.name = name
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Unit-norm audio embeddings, shape ``(clips, dim)``, of mono waveforms at ``sample_rate``."""
        rate = self.feature_extractor.sampling_rate
        longest = int(self.feature_extractor.max_length_s * rate)
        clips = [
            librosa.resample(np.asarray(w, np.float32), orig_sr=sample_rate, target_sr=rate)[:longest]
            for w in waveforms
        ]
        rows = []
        for start in range(0, len(clips), _BATCH):
            inputs = self.feature_extractor(
                clips[start : start + _BATCH], sampling_rate=rate, truncation="rand_trunc", return_tensors="pt"
            )
            with torch.no_grad():
                rows.append(_unit_rows(clap_embedding(self.model.get_audio_features(**inputs))))
        return np.concatenate(rows)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings, shape ``(texts, dim)``."""
        rows = []
        for start in range(0, len(texts), _BATCH):
            inputs = self.tokenizer(
                list(texts[start : start + _BATCH]), padding=True, truncation=True, return_tensors="pt"
            )
            with torch.no_grad():
                rows.append(_unit_rows(clap_embedding(self.model.get_text_features(**inputs))))
        return np.concatenate(rows)


def default_embedding_source() -> Path:
    """Where the embedded model's pipeline folder lives (the folder the ``tiny-musicldm`` alias names; it may
    not be installed)."""
    return TINY_MUSICLDM_PATH


def _pipeline_parts(folder: Path) -> tuple[Path, Path, Path]:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    encoder = index.get("text_encoder", [None, None])[-1]
    if encoder != "ClapModel":
        raise MetricUnavailableError(
            f"the text encoder of the pipeline in {folder} is {encoder}, not a ClapModel with an audio tower; "
            "pass a CLAP model (e.g. laion/larger_clap_music) as the embedding"
        )
    return folder / "text_encoder", folder / "feature_extractor", folder / "tokenizer"


def _load_clap_parts(
    model_ref: str | Path, extractor_ref: str | Path, tokenizer_ref: str | Path, local_only: bool
) -> tuple[ClapModel, ClapFeatureExtractor, Any]:
    # no trust_remote_code: only transformers' own CLAP classes load
    return (
        # float32 whatever the stored dtype: the embedded model ships float16 weights, and CLAP's batch norm
        # refuses half parameters on float32 input
        ClapModel.from_pretrained(str(model_ref), local_files_only=local_only, dtype=torch.float32),
        ClapFeatureExtractor.from_pretrained(str(extractor_ref), local_files_only=local_only),
        AutoTokenizer.from_pretrained(str(tokenizer_ref), local_files_only=local_only),
    )


def load_clap_embedding(source: str | None = None) -> ClapEmbedding:
    """Load a CLAP embedding from a hub id, a ClapModel folder, or a pipeline folder with a ClapModel text encoder.

    Args:
        source: None for the embedded ``tiny-musicldm`` model's CLAP (see :func:`default_embedding_source`).

    Raises:
        MetricUnavailableError: the model cannot be found or loaded (one-line reason).
    """
    if source is None or source == DEFAULT_EMBEDDING:
        folder = default_embedding_source()
        if not (folder / "model_index.json").is_file():
            raise MetricUnavailableError(
                f"the default embedding (the {DEFAULT_EMBEDDING} CLAP) is not installed at {folder}; "
                "pass a CLAP model as the embedding, e.g. laion/larger_clap_music or a local folder"
            )
        name, model_ref, extractor_ref, tokenizer_ref = f"CLAP of {DEFAULT_EMBEDDING}", *_pipeline_parts(folder)
    else:
        folder = Path(source).expanduser()
        if (folder / "model_index.json").is_file():
            model_ref, extractor_ref, tokenizer_ref = _pipeline_parts(folder)
        else:
            model_ref = extractor_ref = tokenizer_ref = source
        name = f"CLAP ({source})"
    try:
        parts = _load_clap_parts(model_ref, extractor_ref, tokenizer_ref, local_only=True)
    except Exception as local_error:
        on_hub = isinstance(model_ref, str) and not Path(model_ref).expanduser().exists()
        on_hub = on_hub and not looks_like_path(model_ref)
        if not on_hub or hub_offline() or probe_hub(model_ref) != "ok":
            message = f"cannot load the CLAP embedding {source or name}"
            if on_hub:
                message += " (not in the local Hugging Face cache, and the Hub is unreachable or lacks it)"
            raise MetricUnavailableError.caused_by(message, local_error) from local_error
        try:
            parts = _load_clap_parts(model_ref, extractor_ref, tokenizer_ref, local_only=False)
        except Exception as error:
            raise MetricUnavailableError.caused_by(f"cannot load the CLAP embedding {source}", error) from error
    logger.info("embedding: %s", name)
    return ClapEmbedding(name, *parts)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings ``(clips, dim)``:
    ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. Symmetric; 0 for identical sets.

    The trace of ``(S1 S2)^(1/2)`` is taken from the eigenvalues of the symmetric ``S1^(1/2) S2 S1^(1/2)``, which
    are real and non-negative, so no complex round-off arises.

    Raises:
        MetricUnavailableError: a set has fewer than two clips (no covariance).
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if min(len(first), len(second)) < 2:
        raise MetricUnavailableError("Frechet distance needs at least two clips in each set")
    mean_gap = first.mean(axis=0) - second.mean(axis=0)
    cov1, cov2 = np.atleast_2d(np.cov(first, rowvar=False)), np.atleast_2d(np.cov(second, rowvar=False))
    root1 = _psd_sqrt(cov1)
    cross = np.clip(linalg.eigvalsh(root1 @ cov2 @ root1), 0, None)
    distance = mean_gap @ mean_gap + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(cross).sum()
    return float(max(distance, 0.0))


def clap_scores(audio: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Cosine similarity of each audio embedding with its prompt's text embedding (row by row), in [-1, 1]."""
    audio, text = np.asarray(audio, np.float64), np.asarray(text, np.float64)
    norms = np.linalg.norm(audio, axis=1) * np.linalg.norm(text, axis=1)
    return np.sum(audio * text, axis=1) / norms


def _embed_clips(embedding: AudioEmbedding, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Embed ``(waveform, sample_rate)`` clips of possibly different rates, keeping their order."""
    rows: list[np.ndarray] = [np.empty(0)] * len(clips)
    for rate in sorted({rate for _, rate in clips}):
        indices = [i for i, (_, clip_rate) in enumerate(clips) if clip_rate == rate]
        for i, row in zip(indices, embedding.embed_audio([clips[i][0] for i in indices], rate), strict=True):
            rows[i] = row
    return np.stack(rows)


def set_metrics(
    source: str | None,
    references: Sequence[tuple[np.ndarray, int]],
    tests: Sequence[tuple[np.ndarray, int]],
    prompts: Sequence[str | None],
) -> tuple[dict[str, Any], list[dict[str, float] | None]]:
    """FAD between the reference and the test set and the CLAP scores of both, with the embedding ``source``.

    Args:
        references, tests: ``(waveform, sample_rate)`` of the pairs' clips, in pair order.
        prompts: each pair's prompt; pairs without one get no CLAP score.

    Returns:
        The summary (``embedding``, ``fad``, ``clap_score``; a metric that cannot be computed is the string
        ``"unavailable: <reason>"``) and each pair's CLAP scores (``{"reference", "test"}`` or None).
    """
    per_pair: list[dict[str, float] | None] = [None] * len(references)
    try:
        embedding = load_clap_embedding(source)
    except MetricUnavailableError as error:
        logger.warning("set metrics unavailable: %s", error)
        return {"embedding": None, "fad": f"unavailable: {error}", "clap_score": f"unavailable: {error}"}, per_pair
    ref_rows, test_rows = _embed_clips(embedding, references), _embed_clips(embedding, tests)
    summary: dict[str, Any] = {"embedding": embedding.name}
    try:
        summary["fad"] = frechet_distance(ref_rows, test_rows)
    except MetricUnavailableError as error:
        summary["fad"] = f"unavailable: {error}"
    prompted = [i for i, text in enumerate(prompts) if text]
    if not prompted:
        summary["clap_score"] = "unavailable: no sidecar with a prompt"
        return summary, per_pair
    text_rows = embedding.embed_text([prompts[i] for i in prompted])
    ref_scores, test_scores = clap_scores(ref_rows[prompted], text_rows), clap_scores(test_rows[prompted], text_rows)
    for i, ref_score, test_score in zip(prompted, ref_scores, test_scores, strict=True):
        per_pair[i] = {"reference": float(ref_score), "test": float(test_score)}
    summary["clap_score"] = {
        "reference": float(ref_scores.mean()),
        "test": float(test_scores.mean()),
        "clips": len(prompted),
    }
    return summary, per_pair
