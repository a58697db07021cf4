"""SADA on the image and transformer families: SD-2, SDXL, ControlNet (SD, SDXL), Flux, Stable Audio.

Every family goes through the same engine; these tests check what each adapter adds (token grid,
block layout, output wrapping, the ControlNet riding along) on tiny random pipelines.
"""

import runpy
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

from sada_audio import SADAConfig, SADAHandle, UnsupportedModelError, UnsupportedSchedulerError, apply_sada
from sada_audio.models import denoiser_of, model_adapter_for
from tests.support.tiny_pipelines import (
    IMAGE_SIZE,
    STABLE_AUDIO_FRAMES,
    image_call_kwargs,
    stable_audio_open_scheduler,
    tiny_controlnet_pipeline,
    tiny_flux_pipeline,
    tiny_sd2_pipeline,
    tiny_sdxl_pipeline,
    tiny_stable_audio_pipeline,
)

BUILDERS = {
    "sd2": tiny_sd2_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "controlnet": tiny_controlnet_pipeline,
    "controlnet-xl": lambda: tiny_controlnet_pipeline(xl=True),
    "flux": tiny_flux_pipeline,
    "stable-audio": tiny_stable_audio_pipeline,
}
PRESET = {"controlnet-xl": "sdxl"}  # the SDXL ControlNet pipeline takes SDXL's token settings


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes():
    """Each tiny pipeline, built once for this module (tests restore what they change)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {family: build() for family, build in BUILDERS.items()}


def generate(pipe, steps=50, seed=0, **kwargs):
    """The final latent (images decode to saturated noise at random weights; the latent shows everything)."""
    generator = torch.Generator().manual_seed(seed)
    name = type(pipe).__name__
    if name == "StableAudioPipeline":
        return pipe("rain on a tin roof", num_inference_steps=steps, generator=generator, output_type="latent").audios
    kwargs = {**image_call_kwargs(pipe), **kwargs}
    return pipe("a red cube", num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


# The slowest runs (ControlNet, SDXL) are in the integration tier; both families keep unit tests below.
_HEAVY_FAMILIES = {"controlnet", "controlnet-xl", "sdxl"}


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.integration) if f in _HEAVY_FAMILIES else f for f in BUILDERS]
)
def test_family_accelerates_and_remove_restores(pipes, family):
    pipe = pipes[family]
    baseline = generate(pipe)
    with apply_sada(pipe) as handle:
        assert handle.config == SADAConfig.preset(PRESET.get(family, family))
        accelerated = generate(pipe)
        stats = handle.stats
        assert torch.equal(generate(pipe), accelerated), "two calls with the same seed must match"
    assert accelerated.shape == baseline.shape and accelerated.dtype == baseline.dtype
    assert torch.isfinite(accelerated).all() and not torch.equal(accelerated, baseline)
    assert stats.num_steps == 50 and stats.model_calls <= 40 and stats.fallbacks == 0
    assert stats.model_calls + len(stats.skipped_steps) == 50
    assert torch.equal(generate(pipe), baseline), "remove() must restore bit-identical output"


def test_decoded_outputs_have_the_pipelines_shapes(pipes):
    with apply_sada(pipes["sd2"]):
        image = pipes["sd2"]("a red cube", height=32, width=48, num_inference_steps=12, output_type="pt").images
    assert image.shape == (1, 3, 32, 48) and torch.isfinite(image).all()
    pipe = pipes["stable-audio"]
    with apply_sada(pipe):
        audio = pipe("rain", num_inference_steps=12, generator=torch.Generator().manual_seed(0)).audios
    assert audio.shape == (1, 2, STABLE_AUDIO_FRAMES * pipe.vae.hop_length) and torch.isfinite(audio).all()


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_unet_token_pruning_on_rectangular_latents(pipes, family):
    # few forced tokens, so that pruning shows even where the random model is unstable everywhere
    with apply_sada(pipes[family], SADAConfig.preset(family, max_fix=8)) as handle:
        latent = generate(pipes[family], steps=30)
        stats = handle.stats
        assert handle.run.grid == (IMAGE_SIZE[0] // 2, IMAGE_SIZE[1] // 2)
    assert torch.isfinite(latent).all() and stats.pruned_steps and stats.pruned_fraction > 0.05


def _count_calls(module):
    """Counter of real forward computations of ``module`` (its first child runs only when it does)."""
    counter = {"calls": 0}
    first = next(iter(module.children()))
    handle = first.register_forward_hook(lambda *args: counter.__setitem__("calls", counter["calls"] + 1))
    return counter, handle


@pytest.mark.parametrize("family", ["controlnet", pytest.param("controlnet-xl", marks=pytest.mark.integration)])
def test_controlnet_runs_only_with_the_unet_and_skipping_it_changes_nothing(pipes, family):
    pipe = pipes[family]
    config = SADAConfig.preset(PRESET.get(family, family), tokenwise=False)
    counter, hook = _count_calls(pipe.controlnet)
    try:
        with apply_sada(pipe, config) as handle:
            accelerated = generate(pipe, steps=30)
            model_calls = handle.stats.model_calls
        assert counter["calls"] == model_calls < 30
        # The same engine without the ControlNet hook: the ControlNet runs every step, for nothing.
        counter["calls"] = 0
        adapter = model_adapter_for(pipe)
        with SADAHandle(pipe.unet, pipe.scheduler, config, layout=adapter.layout, scheduler_owner=pipe):
            without = generate(pipe, steps=30)
        assert counter["calls"] == 30
    finally:
        hook.remove()
    assert torch.equal(accelerated, without)


def test_flux_token_grid_and_token_pruning_with_rotary_positions(pipes):
    pipe = pipes["flux"]
    config = SADAConfig.preset("flux", tokenwise=True, max_fix=8)
    with apply_sada(pipe, config) as handle:
        latent = generate(pipe, steps=30)
        stats = handle.stats
        # 32 x 48 image -> x2 VAE -> 16 x 24 latent -> 2 x 2 packing -> 8 x 12 tokens
        assert handle.run.grid == (8, 12)
    assert torch.isfinite(latent).all() and stats.skipped_steps
    assert stats.pruned_steps and stats.pruned_fraction > 0.05


def test_flux_true_cfg_calls_keep_separate_token_caches(pipes):
    """With true CFG Flux calls the transformer twice per step (prompt, negative prompt)."""
    pipe = pipes["flux"]
    config = SADAConfig.preset("flux", tokenwise=True, max_fix=8)
    with apply_sada(pipe, config) as handle:
        latent = generate(pipe, steps=30, true_cfg_scale=2.0, negative_prompt="blurry")
        stats = handle.stats
        slots = {slot for _, slot in handle.run.block_caches}
    assert torch.isfinite(latent).all() and slots == {0, 1}
    assert stats.model_calls == 2 * (30 - len(stats.skipped_steps)) and stats.pruned_fraction > 0.05


def test_stable_audio_token_pruning_keeps_the_global_token(pipes):
    pipe = pipes["stable-audio"]
    with apply_sada(pipe, SADAConfig.preset("stable-audio", tokenwise=True, max_fix=4)) as handle:
        latent = generate(pipe, steps=30)
        stats = handle.stats
        assert handle.run.grid == (STABLE_AUDIO_FRAMES, 1)
    assert torch.isfinite(latent).all() and stats.pruned_steps and stats.pruned_fraction > 0.05


def _pruned_block_output(config, blocks, scheduler, block, kwargs, grid, kept_all):
    """Run ``block`` once in full (fills its cache), then pruned in the next step; returns (pruned output, kept
    indices)."""
    from sada_audio.evaluation.policies import ForcedPlan
    from sada_audio.method.planner import StepMode

    policy = ForcedPlan()
    with SADAHandle(torch.nn.Identity(), scheduler, config, blocks=blocks, policy=policy) as handle:
        scheduler.set_timesteps(10)  # begins the run: its first step is a full call
        handle.begin_model_call(grid)
        block(**kwargs)
        momentum = torch.ones(grid) if kept_all else -torch.ones(grid)
        policy.next_step(handle, scheduler, StepMode.PRUNED, torch.zeros(1, 1, *grid), momentum)
        handle.begin_model_call(grid)
        return block(**kwargs), handle.engine.kept_tokens(0)


@pytest.mark.parametrize("stream", ["transformer_blocks", "single_transformer_blocks"])
def test_flux_pruned_block_uses_the_kept_tokens_rotary_rows(pipes, stream):
    pipe = pipes["flux"]
    transformer = pipe.transformer
    block = getattr(transformer, stream)[0]
    grid, text, dim = (4, 6), 5, transformer.inner_dim
    gen = torch.Generator().manual_seed(0)
    img_ids = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij"), -1).reshape(-1, 2)
    ids = torch.cat([torch.zeros(text, 3), torch.cat([torch.zeros(24, 1), img_ids], 1)])
    kwargs = {
        "hidden_states": torch.randn(2, 24, dim, generator=gen),
        "encoder_hidden_states": torch.randn(2, text, dim, generator=gen),
        "temb": torch.randn(2, dim, generator=gen),
        "image_rotary_emb": transformer.pos_embed(ids),
    }
    adapter = model_adapter_for(pipe)
    blocks = [b for b in adapter.token_blocks() if b.module is block]
    scheduler = FlowMatchEulerDiscreteScheduler()
    with torch.no_grad():
        full = block(**kwargs)
        for max_fix, kept_all in ((1000, True), (0, False)):
            config = SADAConfig(tokenwise=True, max_downsample=1, sx=2, sy=2, max_fix=max_fix)
            pruned, kept = _pruned_block_output(config, blocks, scheduler, block, kwargs, grid, kept_all)
            if kept_all:
                everything = pruned
        rows = torch.cat([torch.arange(text), text + kept])
        reference = block(
            **{
                **kwargs,
                "hidden_states": kwargs["hidden_states"][:, kept],
                "image_rotary_emb": tuple(table[rows] for table in kwargs["image_rotary_emb"]),
            }
        )
    for got, want in zip(everything, full, strict=True):
        torch.testing.assert_close(got, want)
    assert kept.numel() == 6  # one token per 2 x 2 window
    torch.testing.assert_close(pruned[1][:, kept], reference[1])
    torch.testing.assert_close(pruned[0], reference[0])  # the text stream saw the kept image tokens
    skipped = torch.ones(24, dtype=torch.bool)
    skipped[kept] = False
    torch.testing.assert_close(pruned[1][:, skipped], full[1][:, skipped])  # same input: cached residual


@pytest.mark.integration  # an SDE run; Stable Audio keeps its unit tests
def test_stable_audio_scheduler_sde_runs_with_skips_and_is_seeded(pipes):
    pytest.importorskip("torchsde")
    pipe = pipes["stable-audio"]
    original = pipe.scheduler
    pipe.scheduler = stable_audio_open_scheduler()
    try:
        baseline = generate(pipe)
        with apply_sada(pipe) as handle:
            accelerated = generate(pipe)
            stats = handle.stats
            assert handle.run.solver.stochastic
            assert torch.equal(generate(pipe), accelerated)
        assert torch.equal(generate(pipe), baseline)
    finally:
        pipe.scheduler = original
    assert torch.isfinite(accelerated).all() and stats.model_calls <= 40 and stats.fallbacks == 0


def test_non_finite_reconstruction_falls_back_on_flux(pipes, monkeypatch):
    from sada_audio.solvers import SolverAdapter

    pipe = pipes["flux"]
    baseline = generate(pipe, steps=30)
    original = SolverAdapter.from_data_prediction
    monkeypatch.setattr(SolverAdapter, "from_data_prediction", lambda self, *a: original(self, *a) * float("nan"))
    with apply_sada(pipe) as handle:
        latent = generate(pipe, steps=30)
        assert handle.stats.fallbacks > 0 and handle.stats.model_calls == 30
    assert torch.equal(latent, baseline)


@pytest.mark.parametrize(
    ("family", "make_scheduler", "message"),
    [
        ("sd2", lambda config: PNDMScheduler.from_config(config), "FlowMatchEulerDiscreteScheduler"),
        (
            "flux",
            lambda config: FlowMatchEulerDiscreteScheduler.from_config(config, stochastic_sampling=True),
            "stochastic_sampling",
        ),
        (
            "stable-audio",
            lambda config: EDMDPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++"),
            "dpmsolver\\+\\+",
        ),
    ],
)
def test_unsupported_schedulers_get_clear_errors(pipes, family, make_scheduler, message):
    pipe = pipes[family]
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(original.config)
    try:
        with pytest.raises(UnsupportedSchedulerError, match=message):
            apply_sada(pipe)
    finally:
        pipe.scheduler = original


def test_unsupported_model_error_names_the_new_families():
    with pytest.raises(UnsupportedModelError, match="StableDiffusionXLControlNetPipeline.*FluxPipeline.*StableAudio"):
        apply_sada(torch.nn.Linear(1, 1))


def test_one_rule_finds_the_denoiser_of_every_family_and_of_a_bare_denoiser_bench(pipes):
    for family, pipe in pipes.items():
        expected = pipe.transformer if family in ("flux", "stable-audio") else pipe.unet
        assert model_adapter_for(pipe).denoiser() is denoiser_of(pipe) is expected, family
    # pipeline-shaped objects no adapter matches (the benchmark's bench, which sets both attributes)
    unet, transformer = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    assert denoiser_of(SimpleNamespace(unet=unet, transformer=transformer)) is transformer
    assert denoiser_of(SimpleNamespace(unet=unet, transformer=None)) is unet
    assert denoiser_of(SimpleNamespace(unet=unet)) is unet


def test_published_presets():
    sd2, sdxl, flux = (SADAConfig.preset(name) for name in ("sd2", "sdxl", "flux"))
    assert (sd2.sx, sd2.sy, sd2.max_downsample, sd2.max_fix) == (3, 3, 1, 5120)
    assert (sdxl.max_downsample, sdxl.max_fix) == (2, 10240)
    assert (flux.lagrange_step, flux.lagrange_int, flux.lagrange_term, flux.max_fix) == (20, 4, 3, 0)
    assert not flux.tokenwise and sd2.tokenwise
    for config in (sd2, sdxl, flux, SADAConfig.preset("controlnet"), SADAConfig.preset("stable-audio")):
        assert config.acc_range == (10, 47) and config.max_interval == 4


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "family", "options"),
    [
        ("stable_diffusion.py", "sdxl", ["--size", "32", "48", "--scheduler", "dpm++"]),
        ("controlnet.py", "controlnet", []),
        ("flux.py", "flux", ["--size", "32", "48", "--max-sequence-length", "16", "--prune"]),
        ("stable_audio.py", "stable-audio", []),
    ],
)
def test_samples_run_on_saved_pipelines(pipes, tmp_path, monkeypatch, capsys, script, family, options):
    """Each family's sample, run as a script against a pipeline directory (as with a Hub id or local model)."""
    model, out = tmp_path / "model", tmp_path / "out"
    pipes[family].save_pretrained(model)
    monkeypatch.syspath_prepend(str(SAMPLES))
    monkeypatch.setattr(sys, "argv", [script, str(model), "--steps", "30", "--out-dir", str(out), *options])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpy.run_path(str(SAMPLES / script), run_name="__main__")
    printed = capsys.readouterr().out
    calls = int(printed.split("model calls ")[1].split("/")[0])
    assert calls < 30 and "difference" in printed
    suffix = ".wav" if family == "stable-audio" else ".png"
    assert all((out / f"{name}{suffix}").stat().st_size > 0 for name in ("baseline", "sada"))
