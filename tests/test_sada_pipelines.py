"""SADA on tiny MusicLDM, AudioLDM and AudioLDM2 pipelines, with every supported scheduler."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EDMEulerScheduler, PNDMScheduler

from sada_audio import (
    SADAConfig,
    SADAError,
    UnsupportedModelError,
    UnsupportedSchedulerError,
    apply_sada,
    handle_of,
)
from sada_audio.method.planner import schedule_letters
from sada_audio.pipelines import set_scheduler

FAMILIES = ("musicldm", "audioldm", "audioldm2")


@pytest.fixture
def pipelines(request):
    """The shared tiny pipelines by family (conftest lends them and puts their schedulers back)."""
    return {family: request.getfixturevalue(f"tiny_{family}") for family in FAMILIES}


def generate(pipe, steps=50, seconds=2.56, seed=0, **kwargs):
    kwargs.setdefault("guidance_scale", 2.5)
    return pipe(
        "a slow piano melody",
        num_inference_steps=steps,
        audio_length_in_s=seconds,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).audios


@pytest.mark.integration
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "edm", "dpm++"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sada_accelerates_and_remove_restores(pipelines, family, scheduler):
    pipe = pipelines[family]
    set_scheduler(pipe, scheduler)
    baseline = generate(pipe)
    with apply_sada(pipe) as handle:
        assert handle.config == SADAConfig.preset(family)
        accelerated = generate(pipe)
        stats = handle.stats
        again = generate(pipe)
    assert accelerated.shape == baseline.shape and accelerated.dtype == baseline.dtype
    assert (accelerated == again).all(), "two calls with the same seed must match"
    assert torch.isfinite(torch.from_numpy(accelerated)).all()
    # the audio preset's schedule: steps 0-2 in full; on 3-11 full or shallow (the criterion's stable steps, deep
    # features one step old), 0, 4 and 8 full (they seed the phase's first anchors); nothing skipped before the
    # adaptive Lagrange phase, which begins at step 12 and skips 13-15 before its next anchor at 16; its anchor
    # intervals are 4-5 steps (the anchor probe widens them), so at most 4 skips in a row; no token pruning
    assert stats.num_steps == 50 and stats.model_calls == 50 - len(stats.skipped_steps) and stats.fallbacks == 0
    modes = schedule_letters(stats.step_modes)
    early = modes[:12]
    assert early[:3] == "fff" and early[4] == early[8] == "f" and "s" not in early and "hh" not in early
    assert modes[12:17] == "fsssf" and modes.endswith("f") and "s" * 5 not in modes and "h" not in modes[12:]
    assert stats.shallow_steps == [step for step, mode in enumerate(modes) if mode == "h"]
    assert 20 <= stats.model_calls <= 24
    assert not stats.pruned_steps and stats.tokens_total == 0
    assert (generate(pipe) == baseline).all(), "remove() must restore bit-identical output"


def test_token_pruning_on_odd_rectangular_latents_with_batch_and_guidance(pipelines):
    pipe = pipelines["musicldm"]
    set_scheduler(pipe, "dpm++")
    # The preset's accelerated steps all lie in its Lagrange phase (skipped or anchors): steps 3-6 (of 30) are
    # accelerated before it here, with a criterion that never skips them, so that they are pruned.
    config = SADAConfig.preset("musicldm", max_fix=64, tokenwise=True, acc_range=(3, 49), criterion="consistent")

    # 1.0 s -> 100 mel frames -> latent 8 x 25 x 16 (odd time axis); two prompts x two waveforms.
    def two_prompts_two_waveforms() -> np.ndarray:
        return pipe(
            ["piano", "drums"],
            num_inference_steps=30,
            audio_length_in_s=1.0,
            num_waveforms_per_prompt=2,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
            guidance_scale=3.0,
        ).audios

    baseline = two_prompts_two_waveforms()
    with apply_sada(pipe, config) as handle:
        audio = two_prompts_two_waveforms()
        stats = handle.stats
        assert handle.run.grid == (25, 16)
    assert audio.shape == baseline.shape == (4, 16000)
    assert torch.isfinite(torch.from_numpy(audio)).all()
    assert stats.pruned_steps and stats.pruned_fraction > 0.05
    # Lagrange anchors always run in full: the extrapolating polynomial would amplify a pruned call's error
    bounds = config.bounds(30)
    assert "pruned" not in stats.step_modes[bounds.lagrange_step : bounds.acc_end]


def test_stepwise_and_tokenwise_switch_off_separately(pipelines):
    pipe = pipelines["audioldm"]
    set_scheduler(pipe, "ddim")
    with apply_sada(pipe, SADAConfig.preset("audioldm", tokenwise=False, shallow="off")) as handle:
        generate(pipe, steps=30)
        assert handle.stats.pruned_steps == [] and handle.stats.pruned_fraction == 0.0
        assert handle.stats.skipped_steps
    with apply_sada(pipe, SADAConfig.preset("audioldm", stepwise=False, tokenwise=True)) as handle:
        generate(pipe, steps=30)
        assert handle.stats.skipped_steps == [] and handle.stats.model_calls == 30
        assert handle.stats.pruned_steps


def test_v_prediction_and_edm_scheduler(pipelines):
    pipe = pipelines["audioldm"]
    for scheduler in (
        DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction"),
        EDMEulerScheduler(prediction_type="epsilon"),
    ):
        pipe.scheduler = scheduler
        with apply_sada(pipe) as handle:
            audio = generate(pipe, steps=30)
            assert handle.stats.model_calls < 30
        assert torch.isfinite(torch.from_numpy(audio)).all()


def test_scheduler_swapped_after_apply_is_followed(pipelines):
    pipe = pipelines["musicldm"]
    set_scheduler(pipe, "ddim")
    with apply_sada(pipe) as handle:
        set_scheduler(pipe, "dpm++")
        generate(pipe, steps=30)
        assert handle.stats.num_steps == 30 and handle.stats.skipped_steps
    assert "step" not in vars(pipe.scheduler)


def test_unsupported_inputs_get_clear_errors(pipelines):
    pipe = pipelines["musicldm"]
    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config)
    with pytest.raises(UnsupportedSchedulerError, match="DDIMScheduler.*EulerDiscreteScheduler"):
        apply_sada(pipe)
    pipe.scheduler = original
    with pytest.raises(UnsupportedModelError, match="MusicLDMPipeline"):
        apply_sada(object())
    handle = apply_sada(pipe)
    with pytest.raises(SADAError, match="already applied"):
        apply_sada(pipe)
    handle.remove()
    handle.remove()  # idempotent


def test_non_finite_reconstruction_falls_back_in_a_pipeline(pipelines, monkeypatch):
    from sada_audio.solvers import SolverAdapter

    pipe = pipelines["audioldm"]
    set_scheduler(pipe, "ddim")
    baseline = generate(pipe, steps=30)
    original = SolverAdapter.from_data_prediction
    monkeypatch.setattr(SolverAdapter, "from_data_prediction", lambda self, *a: original(self, *a) * float("nan"))
    with apply_sada(pipe, SADAConfig.preset("audioldm", tokenwise=False, shallow="off")) as handle:
        audio = generate(pipe, steps=30)
        assert handle.stats.fallbacks > 0 and handle.stats.model_calls == 30
    assert (audio == baseline).all()


def test_denoiser_called_with_keyword_latent(pipelines):
    """Pipelines that pass the latent by name (``unet(sample=...)``) are served the same way."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    pipe = pipelines["audioldm"]
    set_scheduler(pipe, "ddim")
    unet, latent = pipe.unet, torch.randn(2, 8, 16, 16)
    labels = torch.randn(2, unet.config.projection_class_embeddings_input_dim)
    with apply_sada(pipe, SADAConfig.preset("audioldm", tokenwise=False, shallow="off")) as handle:
        pipe.scheduler.set_timesteps(10)
        by_name = unet(
            sample=latent, timestep=pipe.scheduler.timesteps[0], encoder_hidden_states=None, class_labels=labels
        )
        assert isinstance(by_name, UNet2DConditionOutput) and handle.stats.model_calls == 1
        assert handle.run.grid == (16, 16)


def test_handle_of_finds_the_attached_handle(tiny_musicldm):
    assert handle_of(tiny_musicldm) is None and handle_of(object()) is None
    with apply_sada(tiny_musicldm) as handle:
        assert handle_of(tiny_musicldm) is handle
    assert handle_of(tiny_musicldm) is None
