"""Shallow steps (issue 14.3): a UNet's deep blocks return their cached outputs while its outermost level runs
on fresh input; planned by the engine, counted in the stats, removed exactly."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from evaluation.policies import ForcedPlan, always_stable
from sada_audio import ConfigError, SADAConfig, SADAError, SADAHandle, StepMode, apply_sada
from sada_audio.method.planner import schedule_letters
from sada_audio.models import unet_deep_blocks
from sada_audio.pipelines import set_scheduler
from tests.support.configs import FIXED_PHASE
from tests.support.tiny_pipelines import IMAGE_SIZE, _musicldm_unet, tiny_controlnet_pipeline

STEPS = 30


@pytest.fixture
def pipelines(request):
    """The shared tiny audio pipelines by family; their schedulers are put back after the test."""
    pipes = {family: request.getfixturevalue(f"tiny_{family}") for family in ("musicldm", "audioldm", "audioldm2")}
    schedulers = {family: pipe.scheduler for family, pipe in pipes.items()}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    yield pipes
    for family, pipe in pipes.items():
        pipe.scheduler = schedulers[family]


def generate(pipe: Any) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if "ControlNet" in type(pipe).__name__:
        image = torch.rand(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
        height, width = IMAGE_SIZE
        return pipe(
            "a red cube", image=image, num_inference_steps=STEPS, height=height, width=width, generator=generator,
            output_type="latent",
        ).images  # fmt: skip
    audio = pipe("a slow piano melody", num_inference_steps=STEPS, audio_length_in_s=2.56, generator=generator)
    return torch.from_numpy(audio.audios)


@contextmanager
def deep_runs(unet: nn.Module, handle: SADAHandle) -> Iterator[list[int]]:
    """The step of every call of a module inside the UNet's deep blocks (the blocks themselves are always
    called; their hooks decide whether anything inside runs)."""
    steps: list[int] = []
    inner = [module for block in unet_deep_blocks(unet) for module in block.modules() if module is not block]
    hooks = [module.register_forward_pre_hook(lambda *_: steps.append(handle.run.step)) for module in inner]
    try:
        yield steps
    finally:
        for hook in hooks:
            hook.remove()


def no_hooks_left(unet: nn.Module) -> bool:
    return not any(hasattr(module, "_diffusers_hook") or "forward" in vars(module) for module in unet.modules())


def check_shallow_run(pipe: Any, config: SADAConfig) -> list[str]:
    """Run ``pipe`` with ``config``, check what every step ran and that ``remove()`` restores; return the modes."""
    baseline = generate(pipe)
    with apply_sada(pipe, config) as handle:
        with deep_runs(pipe.unet, handle) as steps:
            output = generate(pipe)
        stats = handle.stats
    modes = stats.step_modes
    shallow = [step for step, mode in enumerate(modes) if mode == "shallow"]
    ran = [step for step, mode in enumerate(modes) if mode in ("full", "pruned")]
    assert shallow and stats.shallow_steps == shallow and stats.to_dict()["shallow_steps"] == shallow
    assert stats.model_calls == STEPS - len(stats.skipped_steps) == len(ran) + len(shallow)
    assert sorted(set(steps)) == ran, "the deep blocks run on every full and pruned step, on no other"
    # a shallow step's deep features are at most shallow_max_age steps old
    assert all(step - max(r for r in ran if r < step) <= config.shallow_max_age for step in shallow)
    bounds = config.bounds(STEPS)
    assert all(modes[anchor] == "full" for anchor in range(bounds.lagrange_step, bounds.acc_end, config.lagrange_int))
    assert all(bounds.accelerated(step) for step in shallow)
    assert torch.isfinite(output).all() and not torch.equal(output, baseline)
    assert torch.equal(generate(pipe), baseline), "remove() must restore bit-identical output"
    assert no_hooks_left(pipe.unet)
    return modes


# MusicLDM with DDIM in the unit tier; the other families and DPM++ in the integration tier (5-9 s each).
SHALLOW_CASES = [
    pytest.param(
        family, scheduler, marks=() if (family, scheduler) == ("musicldm", "ddim") else pytest.mark.integration
    )
    for family in ("musicldm", "audioldm", "audioldm2")
    for scheduler in ("ddim", "dpm++")
]


@pytest.mark.parametrize(("family", "scheduler"), SHALLOW_CASES)
def test_shallow_steps_skip_the_deep_blocks_and_remove_restores(pipelines, family, scheduler):
    pipe = pipelines[family]
    set_scheduler(pipe, scheduler)
    check_shallow_run(pipe, SADAConfig.preset(family, shallow="accelerated", shallow_max_age=2, **FIXED_PHASE))


def test_stable_shallow_steps_fill_the_calls_the_late_phase_cannot_skip(pipelines):
    pipe = pipelines["musicldm"]
    set_scheduler(pipe, "ddim")
    config = SADAConfig.preset("musicldm", shallow="stable", shallow_max_age=3, **FIXED_PHASE)
    modes = check_shallow_run(pipe, config)
    # After the first Lagrange anchor one anchor cannot extrapolate: the preset calls the model in full until
    # the second; as shallow steps while the deep features are at most 3 steps old, then one refresh.
    first = config.bounds(STEPS).lagrange_step
    assert modes[first : first + config.lagrange_int + 1] == ["full", "shallow", "shallow", "shallow", "full", "full"]


def test_the_audio_preset_runs_early_steps_the_criterion_calls_stable_shallow_instead_of_skipping(pipelines):
    """shallow="replace_skips": before the Lagrange phase no step is skipped; a step the criterion calls stable
    runs shallow while the deep features are at most shallow_max_age (1) steps old, except a call that seeds
    the adaptive phase's first anchors. With a criterion that always says stable, every allowed step is."""
    pipe = pipelines["musicldm"]
    set_scheduler(pipe, "ddim")
    config = SADAConfig.preset("musicldm")
    assert (config.shallow, config.shallow_max_age) == ("replace_skips", 1)
    bounds = config.bounds(STEPS)
    start, seed = bounds.lagrange_step, bounds.lagrange_step - config.lagrange_int
    assert (bounds.acc_start, seed, start) == (3, 3, 7)
    with apply_sada(pipe, config) as handle, deep_runs(pipe.unet, handle) as deep:
        generate(pipe)
        guided, guided_deep = handle.stats.step_modes, sorted(set(deep))
    with apply_sada(pipe, config, policy=always_stable) as handle:
        generate(pipe)
        every = handle.stats.step_modes
    # steps 0-2 before acc_range, 3 seeds the phase, 5 is 2 steps after the last deep call, 7 begins the phase
    assert schedule_letters(every[: start + 2]) == "ffffhfhfs"
    early = guided[:start]
    assert "skipped" not in early and guided[start] == "full"
    shallow = [step for step, mode in enumerate(early) if mode == "shallow"]
    assert shallow and set(shallow) <= {4, 6}, guided
    assert shallow[0] - 1 in guided_deep and not set(shallow) & set(guided_deep)
    assert no_hooks_left(pipe.unet)


@pytest.mark.integration  # a ControlNet pipeline, 5 s
def test_shallow_steps_on_a_controlnet_pipeline_with_token_pruning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = tiny_controlnet_pipeline()
    pipe.set_progress_bar_config(disable=True)
    modes = check_shallow_run(pipe, SADAConfig.preset("controlnet", shallow="accelerated"))
    assert "pruned" in modes and "skipped" in modes


def test_a_planned_shallow_step_without_deep_features_runs_in_full():
    torch.manual_seed(0)
    unet = _musicldm_unet().eval()
    sample = torch.randn(2, unet.config.in_channels, 16, 16)
    labels = torch.randn(2, unet.config.projection_class_embeddings_input_dim)
    scheduler = DDIMScheduler()
    config = SADAConfig.preset("musicldm", shallow="accelerated")
    policy = ForcedPlan()
    handle = SADAHandle(unet, scheduler, config, deep_blocks=unet_deep_blocks(unet), policy=policy)
    scheduler.set_timesteps(10)  # begins the run: its first step is a full call
    time = scheduler.timesteps[0]

    def call(batch: int = 2) -> torch.Tensor:
        return unet(sample[:batch], time, encoder_hidden_states=None, class_labels=labels[:batch]).sample

    with handle, deep_runs(unet, handle) as steps:
        full = call()
        assert steps, "the first step runs in full and caches the deep features"
        steps.clear()
        policy.next_step(handle, scheduler, StepMode.SHALLOW, sample)
        shallow = call()
        assert not steps
        policy.next_step(handle, scheduler, StepMode.SHALLOW, sample[:1])
        call(batch=1)
        assert steps, "no deep features of this batch size: runs in full"
        policy.next_step(handle, scheduler, StepMode.FULL, sample[:1])
    assert handle.stats.step_modes == ["full", "shallow", "full"]
    assert handle.stats.step_reasons == ["warm-up", "forced", "fall-back"]
    # same input and time: the cached deep features are this input's own, so the outer level gives the same
    assert torch.equal(shallow, full)
    assert no_hooks_left(unet)


def test_shallow_config_is_validated_and_needs_a_unet():
    for bad in ({"shallow": "sometimes"}, {"shallow": True}, {"shallow_max_age": 0}, {"shallow_max_age": 1.5}):
        with pytest.raises(ConfigError, match="shallow"):
            SADAConfig(**bad)
    config = SADAConfig.preset("musicldm").with_overrides('shallow="stable"; shallow_max_age=2')
    assert (config.shallow, config.shallow_max_age) == ("stable", 2)
    assert SADAConfig.from_dict(config.to_dict()) == config
    assert SADAConfig().shallow == "off"
    with pytest.raises(SADAError, match="shallow='stable' needs a UNet"):
        SADAHandle(nn.Conv2d(4, 4, 1), DDIMScheduler(), config)
