"""The benchmark's peer accelerators on tiny pipelines: each attaches, does what it claims (step kinds
observed against the method's own rule, output changed), prices its step kinds, and comes off leaving the
pipeline bit-identical."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, MusicLDMPipeline, StableAudioPipeline
from torch import nn

from sada_audio.evaluation.accelerators import Accelerator, DenoiserBench
from sada_audio.evaluation.adaptive_diffusion import WARMUP_STEPS, AdaptiveDiffusion, third_order_estimate
from sada_audio.evaluation.peers import (
    CacheDiT,
    DeepCache,
    FirstBlockCache,
    PyramidAttentionBroadcast,
    TaylorSeer,
    ToMe,
    peer_accelerators,
)
from tests.support.tiny_pipelines import tiny_flux_pipeline, tiny_stable_audio_pipeline

STEPS = 12


@pytest.fixture(scope="module")
def tiny_stable_audio() -> StableAudioPipeline:
    return tiny_stable_audio_pipeline()


@pytest.fixture(scope="module")
def tiny_flux() -> FluxPipeline:
    return tiny_flux_pipeline()


@pytest.fixture(autouse=True)
def _quiet_cache_dit() -> Iterator[None]:
    """cache-dit logs a page of tables per call at WARNING."""
    cache_dit_logger = logging.getLogger("cache_dit")
    level = cache_dit_logger.level
    cache_dit_logger.setLevel(logging.ERROR)
    yield
    cache_dit_logger.setLevel(level)


def _generate(pipe: Any, steps: int = STEPS) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    if isinstance(pipe, MusicLDMPipeline):
        out = pipe("a piano", num_inference_steps=steps, audio_length_in_s=1.0, generator=generator, output_type="np")
        return out.audios
    if isinstance(pipe, FluxPipeline):
        kwargs = {"height": 32, "width": 48, "max_sequence_length": 16}
        return pipe("a cat", num_inference_steps=steps, generator=generator, output_type="np", **kwargs).images
    return pipe("a drum", num_inference_steps=steps, generator=generator, output_type="np").audios


def _state(module: nn.Module) -> dict[str, tuple[type, frozenset[str], int]]:
    """Class, instance attribute names and torch hooks of every submodule."""
    return {
        name: (type(sub), frozenset(vars(sub)), len(sub._forward_hooks) + len(sub._forward_pre_hooks))
        for name, sub in module.named_modules()
    }


def _run_attached(pipe: Any, accelerator: Accelerator, steps: int = STEPS) -> tuple[np.ndarray, list[str], dict]:
    """Baseline, then attached, then removed: checks the output shape, finiteness and exact restoration."""
    denoiser = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
    baseline = _generate(pipe, steps)
    before = _state(denoiser)
    attachment = accelerator.attach(pipe)
    try:
        output = _generate(pipe, steps)
        kinds = attachment.step_kinds()
        stats = attachment.stats()
    finally:
        attachment.remove()
    attachment.remove()  # a second remove is harmless
    assert output.shape == baseline.shape and np.isfinite(output).all()
    assert _state(denoiser) == before, "remove() left an attribute, class patch or hook behind"
    assert "forward" not in vars(denoiser)
    np.testing.assert_array_equal(_generate(pipe, steps), baseline)
    return output - baseline, kinds, stats


# -- the list -------------------------------------------------------------------------------------------------


def test_peer_list_order_packages_and_short_settings(tiny_musicldm: MusicLDMPipeline) -> None:
    peers = peer_accelerators(tiny_musicldm)
    assert [peer.label for peer in peers] == [
        "DeepCache (interval 2)",
        "DeepCache (interval 3)",
        "DeepCache (interval 5)",
        "ToMe (ratio 0.5)",
        "ToMe (ratio 0.75)",
        "PAB (self 2, cross 4)",
        "First Block Cache (threshold 0.05)",
        "First Block Cache (threshold 0.1)",
        "TaylorSeer (interval 5, order 1)",
        "cache-dit (F1B0, threshold 0.12)",
        "AdaptiveDiffusion (delta 0.002, max 4)",
        "AdaptiveDiffusion (delta 0.01, max 4)",
    ]
    packages = {peer.name: peer.package for peer in peers}
    assert packages == {
        "DeepCache": "deepcache",
        "ToMe": "tomesd",
        "PAB": "diffusers",
        "First Block Cache": "diffusers",
        "TaylorSeer": "diffusers",
        "cache-dit": "cache-dit",
        "AdaptiveDiffusion": None,
    }
    assert all(len(peer.setting) <= 24 for peer in peers)


# -- UNet peers on the tiny MusicLDM --------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [3, 5])
def test_deepcache_caches_between_full_steps_and_comes_off(tiny_musicldm: MusicLDMPipeline, interval: int) -> None:
    # MusicLDM style: class labels, encoder_hidden_states=None, the timestep passed by position
    difference, kinds, stats = _run_attached(tiny_musicldm, DeepCache(interval))
    expected = ["full" if step % interval == 0 else "cached" for step in range(STEPS)]
    assert kinds == expected  # interval 3 on 12 steps: 4 full, 8 cached
    assert stats == {"nfe": STEPS, "full_calls": expected.count("full")}  # cached steps run the shallow branch
    assert np.abs(difference).max() > 0


def _attention_tokens(unet: nn.Module) -> tuple[dict[str, list[int]], Callable[[], None]]:
    """Token counts entering every self-attention (``attn1``), per module name; returns a remover."""
    counts: dict[str, list[int]] = {}
    handles = []
    for name, module in unet.named_modules():
        if name.endswith("attn1"):

            def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                counts.setdefault(name, []).append(args[0].shape[1])

            handles.append(module.register_forward_pre_hook(hook))
    return counts, lambda: [handle.remove() for handle in handles]


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_tome_merges_tokens_on_the_rectangular_latent(tiny_musicldm: MusicLDMPipeline, ratio: float) -> None:
    unet = tiny_musicldm.unet
    counts, remove_counter = _attention_tokens(unet)
    try:
        _generate(tiny_musicldm, steps=2)
        plain = {name: values[0] for name, values in counts.items()}
        counts.clear()
        attachment = ToMe(ratio).attach(tiny_musicldm)
        _generate(tiny_musicldm, steps=2)
        attachment.remove()
    finally:
        remove_counter()
    merged = {name: values[0] for name, values in counts.items()}
    # 1 s of audio: a 25 x 16 latent; the first attention level (x2 down) has 13 x 8 = 104 tokens, the
    # deeper ones are left alone (max_downsample=2)
    top = max(plain.values())
    assert top == 13 * 8
    for name, tokens in plain.items():
        assert merged[name] == (tokens - int(tokens * ratio) if tokens == top else tokens), name
    difference, kinds, _ = _run_attached(tiny_musicldm, ToMe(ratio))
    assert kinds == ["merged"] * STEPS
    assert np.abs(difference).max() > 0


def test_tome_is_reproducible_across_runs(tiny_musicldm: MusicLDMPipeline) -> None:
    """tomesd's random destination tokens come from a generator the attachment seeds per run."""
    attachment = ToMe(0.5).attach(tiny_musicldm)
    try:
        first, second = _generate(tiny_musicldm, steps=4), _generate(tiny_musicldm, steps=4)
    finally:
        attachment.remove()
    np.testing.assert_array_equal(first, second)


def test_pab_broadcasts_attention_inside_its_timestep_range(tiny_musicldm: MusicLDMPipeline) -> None:
    difference, kinds, _ = _run_attached(tiny_musicldm, PyramidAttentionBroadcast(spatial=2, cross=4))
    timesteps = [float(t) for t in tiny_musicldm.scheduler.timesteps]
    # attn1 recomputes every 2nd call, attn2 every 4th: a step reuses something unless step % 4 == 0
    expected = ["broadcast" if 100 < t < 800 and step % 4 else "full" for step, t in enumerate(timesteps)]
    assert kinds == expected and "broadcast" in kinds
    assert np.abs(difference).max() > 0


def test_adaptive_diffusion_skips_by_the_third_order_rule(tiny_musicldm: MusicLDMPipeline) -> None:
    accelerator = AdaptiveDiffusion(threshold=0.01, max_skips=3)
    difference, kinds, stats = _run_attached(tiny_musicldm, accelerator)
    assert kinds[:WARMUP_STEPS] == ["full"] * WARMUP_STEPS
    assert "skipped" in kinds and stats["nfe"] == kinds.count("full")  # a skipped step calls no model
    runs = "".join("s" if kind == "skipped" else "f" for kind in kinds).split("f")
    assert max(len(run) for run in runs) <= 3  # the cap on consecutive skips
    assert np.abs(difference).max() > 0


def test_third_order_estimate_is_zero_on_a_straight_line() -> None:
    line = [torch.full((2, 3), float(k)) for k in range(4)]
    assert third_order_estimate(line) == 0.0
    bent = [torch.full((2, 3), float(k * k)) for k in range(4)]  # d = 1, 3, 5: still linear in d
    assert third_order_estimate(bent) == 0.0
    cubic = [torch.full((2, 3), float(k**3)) for k in range(4)]  # d = 1, 7, 19: |19 - 14 + 1| / 14
    assert third_order_estimate(cubic) == pytest.approx(6 / 14)


# -- transformer peers -----------------------------------------------------------------------------------------


def test_taylorseer_forecasts_between_refreshes(tiny_stable_audio: StableAudioPipeline) -> None:
    # Stable Audio's pipeline sets no cache context and its DiT has no cache_context(): the attachment does
    difference, kinds, stats = _run_attached(tiny_stable_audio, TaylorSeer(interval=5, order=1, warmup=3))
    expected = ["full" if step < 3 or (step - 4) % 5 == 0 else "predicted" for step in range(STEPS)]
    assert kinds == expected and stats == {"nfe": STEPS, "full_calls": expected.count("full")}
    assert np.abs(difference).max() > 0


def test_cache_dit_caches_after_its_warmup(tiny_stable_audio: StableAudioPipeline) -> None:
    difference, kinds, stats = _run_attached(tiny_stable_audio, CacheDiT(threshold=1.0, warmup=4))
    assert kinds[:4] == ["full"] * 4 and "cached" in kinds and set(kinds) == {"full", "cached"}
    assert stats == {"nfe": STEPS, "full_calls": kinds.count("full")}
    assert np.abs(difference).max() > 0


def test_pab_and_adaptive_diffusion_on_a_dit(tiny_stable_audio: StableAudioPipeline) -> None:
    difference, kinds, _ = _run_attached(tiny_stable_audio, PyramidAttentionBroadcast())
    assert len(kinds) == STEPS and "broadcast" in kinds and np.abs(difference).max() > 0
    _, kinds, _ = _run_attached(tiny_stable_audio, AdaptiveDiffusion(threshold=10.0, max_skips=2))
    assert kinds == ["full"] * 4 + ["skipped", "skipped", "full"] * 2 + ["skipped", "skipped"]


def test_first_block_cache_on_flux(tiny_flux: FluxPipeline) -> None:
    steps = 6
    # the benchmark's thresholds keep every step full on random weights (residuals change by ~35%)
    _, kinds, _ = _run_attached(tiny_flux, FirstBlockCache(0.05), steps)
    assert kinds == ["full"] * steps
    difference, kinds, stats = _run_attached(tiny_flux, FirstBlockCache(10.0), steps)
    assert kinds == ["full"] + ["cached"] * (steps - 1) and stats == {"nfe": steps, "full_calls": 1}
    assert np.abs(difference).max() > 0
    # Flux's pipeline gives its transformer a hook registry of its own (cache_context): removal keeps it
    _, kinds, _ = _run_attached(tiny_flux, AdaptiveDiffusion(threshold=10.0, max_skips=1), steps)
    assert kinds == ["full"] * 4 + ["skipped", "full"]


# -- availability ----------------------------------------------------------------------------------------------


def test_unavailable_reasons_are_one_line(
    tiny_musicldm: MusicLDMPipeline, tiny_stable_audio: StableAudioPipeline, tiny_flux: FluxPipeline
) -> None:
    def reason(accelerator: Accelerator, pipe: Any) -> str:
        text = accelerator.unavailable_reason(pipe)
        assert isinstance(text, str) and text and "\n" not in text
        return text

    for accelerator in (DeepCache(3), ToMe(0.5)):
        assert "UNet" in reason(accelerator, tiny_stable_audio)
        assert accelerator.unavailable_reason(tiny_musicldm) is None
    for accelerator in (FirstBlockCache(0.05), TaylorSeer(), CacheDiT()):
        assert "transformer" in reason(accelerator, tiny_musicldm)
    assert "StableAudioDiTBlock" in reason(FirstBlockCache(0.05), tiny_stable_audio)
    for accelerator in (FirstBlockCache(0.05), TaylorSeer(), CacheDiT(), PyramidAttentionBroadcast()):
        assert accelerator.unavailable_reason(tiny_flux) is None
    for accelerator in (PyramidAttentionBroadcast(), AdaptiveDiffusion(0.01)):
        assert accelerator.unavailable_reason(tiny_musicldm) is None


def test_missing_optional_package_says_what_to_install(
    tiny_musicldm: MusicLDMPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("DeepCache", "tomesd", "cache_dit"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert DeepCache(3).unavailable_reason(tiny_musicldm) == "pip install deepcache"
    assert ToMe(0.5).unavailable_reason(tiny_musicldm) == "pip install tomesd"
    assert CacheDiT().unavailable_reason(tiny_musicldm) == "pip install cache-dit"


# -- step costs on a bare denoiser -------------------------------------------------------------------------------


class _DiTBench(DenoiserBench):
    """Stable Audio's DiT wants a 1-d timestep."""

    def call(self, step: int | None = None) -> Any:
        timestep = self.scheduler.timesteps[self.step if step is None else step].reshape(1)
        with torch.no_grad():
            return self.denoiser(self.sample, timestep, return_dict=False, **self.kwargs)[0]


def _bench_from_call(pipe: Any, denoiser: nn.Module, bench_class: type[DenoiserBench]) -> DenoiserBench:
    """A bench with the inputs of the pipeline's first denoiser call."""
    seen: dict[str, Any] = {}

    def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.setdefault("call", (args, kwargs))

    handle = denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        _generate(pipe, steps=1)
    finally:
        handle.remove()
    args, kwargs = seen["call"]
    kwargs = {key: value for key, value in kwargs.items() if key not in ("return_dict", "timestep")}
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    return bench_class(denoiser, scheduler, args[0], kwargs, repeats=1, step=3)


@pytest.mark.parametrize(
    ("accelerator", "kinds"),
    [
        (DeepCache(3), {"full", "cached"}),
        (ToMe(0.5), {"merged"}),
        (PyramidAttentionBroadcast(), {"full", "broadcast"}),
        (AdaptiveDiffusion(0.01), {"full", "skipped"}),
    ],
    ids=lambda value: getattr(value, "name", ""),
)
def test_step_costs_on_a_unet_bench(tiny_musicldm: MusicLDMPipeline, accelerator: Accelerator, kinds: set) -> None:
    _check_step_costs(_bench_from_call(tiny_musicldm, tiny_musicldm.unet, DenoiserBench), accelerator, kinds)


def _check_step_costs(bench: DenoiserBench, accelerator: Accelerator, kinds: set) -> None:
    """Every kind priced, positive, and the denoiser left exactly as it was."""
    reference, before = bench.call(), _state(bench.denoiser)
    assert accelerator.unavailable_reason(bench.pipe) is None
    costs = accelerator.step_costs(bench)
    assert set(costs) == kinds and all(cost > 0 for cost in costs.values())
    assert _state(bench.denoiser) == before
    assert torch.equal(bench.call(), reference)


@pytest.mark.parametrize(
    ("accelerator", "kinds"),
    [
        (TaylorSeer(), {"full", "predicted"}),
        (PyramidAttentionBroadcast(), {"full", "broadcast"}),
        (CacheDiT(), {"full", "cached"}),
    ],
    ids=lambda value: getattr(value, "name", ""),
)
def test_step_costs_on_a_dit_bench(
    tiny_stable_audio: StableAudioPipeline, accelerator: Accelerator, kinds: set
) -> None:
    _check_step_costs(_bench_from_call(tiny_stable_audio, tiny_stable_audio.transformer, _DiTBench), accelerator, kinds)
