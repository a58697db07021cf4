"""The embedded tiny MusicLDM: data generator, features, Griffin-Lim vocoder, trainers and the shipped pipeline."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import MusicLDMPipeline

from sada_audio import SADAConfig, apply_sada
from sada_audio.pipelines import MODEL_ALIASES, load_pipeline, resolve_model_id
from sada_audio.tiny import TINY_MUSICLDM_PATH
from sada_audio.tiny.features import LOG_FLOOR, log_mel
from sada_audio.tiny.vocoder import GriffinLimVocoder
from tests.support.tiny_pipelines import SAMPLE_RATE
from tools.tiny.music import CLIP_SECONDS, HELDOUT_SEED_START, NOTE_NAMES, caption, make_clip, sample_spec
from tools.tiny.train import load_checkpoint, main

# integration tier: trains and runs the embedded model (the trainer is in tools/)
pytestmark = pytest.mark.integration


def test_clips_and_captions_are_deterministic_per_seed():
    wave, text, spec = make_clip(7)
    again, text_again, _ = make_clip(7)
    other, text_other, _ = make_clip(8)
    assert np.array_equal(wave, again) and text == text_again
    assert not np.array_equal(wave, other) and text != text_other
    assert wave.dtype == np.float32 and wave.shape == (round(CLIP_SECONDS * SAMPLE_RATE),)
    assert 0.3 < np.abs(wave).max() <= 0.8 + 1e-6
    assert caption(spec) == text


def test_captions_state_the_parameters():
    spec = sample_spec(HELDOUT_SEED_START + 3, lead="piano", pattern="arpeggio", groove=None, bass=None, bpm=70)
    text = caption(spec)
    assert text.startswith("slow ") and "piano arpeggio" in text and "beat" not in text and "bass" not in text
    assert text.endswith(f"in {NOTE_NAMES[spec.root]} {spec.mode}")
    drums = caption(sample_spec(5, lead=None, bass=None, groove="four", bpm=130))
    assert drums.startswith("fast ") and "drum groove" in drums and " in " not in drums  # drums alone: no key


def test_log_mel_geometry():
    mel = log_mel(np.zeros(81920, dtype=np.float32))
    assert mel.shape == (512, 64) and torch.allclose(mel, torch.full_like(mel, LOG_FLOOR))
    batch = log_mel(torch.randn(2, 16000) * 0.1)
    assert batch.shape == (2, 100, 64)


def test_griffin_lim_vocoder_inverts_log_mel():
    wave, _, _ = make_clip(HELDOUT_SEED_START)
    mel = log_mel(wave[: 2 * SAMPLE_RATE])
    vocoder = GriffinLimVocoder()
    out = vocoder(mel)
    assert out.shape == (2 * SAMPLE_RATE,)
    assert torch.equal(out, vocoder(mel))  # fixed initial phase: deterministic
    # Griffin-Lim recovers the spectrogram closely (about 0.3 here; random audio gives several units)
    assert (log_mel(out) - mel).abs().mean() < 0.5
    assert vocoder(mel[None]).shape == (1, 2 * SAMPLE_RATE)


def test_every_training_entry_point_runs_and_resumes(tmp_path, caplog):
    work = tmp_path / "work"
    common = ["--workdir", str(work), "--threads", "1"]
    main([*common, "data", "--clips", "6", "--workers", "1"])
    captions = json.loads((work / "data" / "captions.json").read_text())
    assert captions == [make_clip(seed)[1] for seed in range(6)]
    main([*common, "vae", "--steps", "2", "--batch", "2", "--crop", "32"])
    main([*common, "vae-decoder", "--steps", "2", "--batch", "2", "--crop", "32"])
    main([*common, "clap", "--steps", "2", "--batch", "4"])
    main([*common, "clap-text", "--steps", "2", "--batch", "4"])
    main([*common, "vocoder", "--steps", "2", "--batch", "2"])
    main([*common, "unet", "--steps", "2", "--batch", "2", "--crop", "16"])
    for name in ("vae", "vae_decoder", "clap", "clap_text", "vocoder", "unet"):
        assert load_checkpoint(work, name)["step"] == 2
    assert load_checkpoint(work, "vae")["scaling_factor"] > 0
    with caplog.at_level(logging.INFO, logger="tools.tiny.train"):
        main([*common, "vae", "--steps", "3", "--batch", "2", "--crop", "32"])
    assert "vae: resuming at step 2" in caplog.text and load_checkpoint(work, "vae")["step"] == 3

    out = tmp_path / "pipe"
    main([*common, "assemble", "--output", str(out), "--vocoder", "hifigan"])
    pipe = load_pipeline(str(out))
    assert isinstance(pipe, MusicLDMPipeline) and pipe.unet.dtype == torch.float32
    audio = pipe("fast piano", num_inference_steps=2, audio_length_in_s=0.64).audios
    assert audio.shape == (1, round(0.64 * SAMPLE_RATE)) and np.isfinite(audio).all()


@pytest.fixture(scope="module")
def shipped() -> MusicLDMPipeline:
    pipe = load_pipeline("tiny-musicldm")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_short_name_resolves_to_the_shipped_folder():
    assert MODEL_ALIASES["tiny-musicldm"] == resolve_model_id("tiny-musicldm") == str(TINY_MUSICLDM_PATH)
    assert (TINY_MUSICLDM_PATH / "model_index.json").is_file() and (TINY_MUSICLDM_PATH / "MODEL_CARD.md").is_file()
    size = sum(f.stat().st_size for f in TINY_MUSICLDM_PATH.rglob("*.safetensors"))
    assert size < 25e6


def test_shipped_pipeline_generates_with_and_without_sada(shipped):
    assert isinstance(shipped, MusicLDMPipeline)
    prompt = "fast loud techno saw lead melody with a saw bass and a four-on-the-floor beat at 130 bpm in E minor"

    def run() -> np.ndarray:
        return shipped(
            prompt, num_inference_steps=25, audio_length_in_s=1.28, generator=torch.Generator().manual_seed(0)
        ).audios[0]

    baseline = run()
    assert baseline.shape == (round(1.28 * SAMPLE_RATE),) and np.isfinite(baseline).all()
    assert 1e-3 < np.sqrt(np.mean(baseline**2)) < 1.0  # audible, not silent, not exploded
    with apply_sada(shipped, SADAConfig.preset("musicldm")) as handle:
        accelerated = run()
    assert handle.stats.num_steps == 25 and handle.stats.model_calls < 25  # the late phase skips steps
    assert accelerated.shape == baseline.shape and np.isfinite(accelerated).all()
    assert np.array_equal(run(), baseline)  # SADA removed: the unmodified pipeline again
