"""sada_audio.generation: seeding and batching that do not depend on the batch, and what it records."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import AudioLDM2Pipeline, DiffusionPipeline

from sada_audio.errors import SADAError
from sada_audio.generation import ClipRequest, SamplingSettings, clip_metadata, generate_batch, run_metadata

SETTINGS = SamplingSettings(steps=8, duration=1.28, guidance=2.0)
CLIPS = [
    ClipRequest("slow piano arpeggio", seed=3),
    ClipRequest("fast techno drum groove", seed=11, negative_prompt="noise"),
]


def test_a_batch_starts_each_clip_from_its_own_noise(tiny_pipeline: DiffusionPipeline) -> None:
    """Without SADA, a clip rendered inside a batch equals the clip rendered alone."""
    clips = CLIPS
    if isinstance(tiny_pipeline, AudioLDM2Pipeline):
        # AudioLDM 2's GPT-2 generates its conditioning after the PADDED prompt, so a prompt batched with a
        # longer one gets other conditioning (upstream behaviour, measured: 0.0024 of a 0.019 peak). Prompts
        # of equal token length batch exactly.
        clips = [ClipRequest(CLIPS[0].prompt, seed=3), ClipRequest(CLIPS[0].prompt, seed=11, negative_prompt="noise")]
    batch = generate_batch(tiny_pipeline, clips, SETTINGS, accelerate=False)
    alone = [generate_batch(tiny_pipeline, [clip], SETTINGS, accelerate=False) for clip in clips]

    assert batch.waveforms.shape == (2, 1, alone[0].waveforms.shape[-1])
    scale = float(np.abs(batch.waveforms).max())
    for index, single in enumerate(alone):
        np.testing.assert_allclose(batch.waveforms[index, 0], single.waveforms[0, 0], atol=1e-5 * scale)
    assert not np.allclose(batch.waveforms[0], batch.waveforms[1])
    assert batch.sada_stats is None and batch.model_calls is None


def test_sada_runs_for_the_call_only_and_is_recorded(tiny_musicldm: DiffusionPipeline) -> None:
    settings = SamplingSettings(steps=50, duration=1.28)
    batch = generate_batch(tiny_musicldm, CLIPS[:1], settings)

    assert np.isfinite(batch.waveforms).all()
    assert batch.sada_stats["num_steps"] == 50
    assert batch.model_calls < 50
    # the sidecar says why every step ran as it did, and which steps were Lagrange anchors
    stats = batch.sada_stats
    assert len(stats["step_reasons"]) == 50 and stats["anchor_steps"]
    assert {stats["step_reasons"][step] for step in stats["skipped_steps"]} <= {"criterion stable", "lagrange"}
    assert batch.sada_config["max_interval"] >= 1
    registry = getattr(tiny_musicldm.unet, "_diffusers_hook", None)
    assert registry is None or not registry.hooks  # removed again after the call

    meta = clip_metadata(CLIPS[0], settings, batch, ["clip.wav"])
    assert meta["accelerate"] == "sada" and meta["seed"] == 3 and meta["files"] == ["clip.wav"]
    assert meta["duration_s"] == pytest.approx(batch.waveforms.shape[-1] / batch.sample_rate)
    run = run_metadata(tiny_musicldm, "tiny", "tiny-id", "cpu", "float32")
    assert run["pipeline_class"] == "MusicLDMPipeline" and set(run["versions"]) >= {"torch", "diffusers"}


def test_several_waveforms_per_prompt(tiny_musicldm: DiffusionPipeline) -> None:
    settings = SamplingSettings(steps=4, duration=1.28, num_waveforms=2)
    batch = generate_batch(tiny_musicldm, CLIPS[:1], settings, accelerate=False)
    assert batch.waveforms.shape[:2] == (1, 2)


@pytest.mark.parametrize(
    ("clips", "settings", "message"),
    [
        ([], SETTINGS, "no clips"),
        (CLIPS, SamplingSettings(steps=4, num_waveforms=2), "num_waveforms=1"),
        (CLIPS[:1], SamplingSettings(steps=4, duration=0.001), "rejected the input"),
    ],
)
def test_bad_requests(
    tiny_musicldm: DiffusionPipeline, clips: list[ClipRequest], settings: SamplingSettings, message: str
) -> None:
    with pytest.raises(SADAError, match=message):
        generate_batch(tiny_musicldm, clips, settings, accelerate=False)
