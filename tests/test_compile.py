"""SADA under ``torch.compile``: decisions in eager Python, the denoiser compiled once (issue 15).

Graphs are counted with dynamo's compile counter on the ``eager`` backend (tracing only, no code
generation), so these run on the CPU in seconds; one slow test uses inductor. Each test builds its own
tiny pipeline: compiling changes a module for good.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from sada_audio import SADAConfig, apply_sada, handle_of
from tests.support.configs import FIXED_PHASE
from tests.support.tiny_pipelines import IMAGE_SIZE, tiny_flux_pipeline, tiny_musicldm_pipeline, tiny_sd2_pipeline

# integration tier: every test builds and compiles its own pipeline
pytestmark = pytest.mark.integration

BUILDERS: dict[str, Callable[[], Any]] = {
    "musicldm": tiny_musicldm_pipeline,
    "sd2": tiny_sd2_pipeline,
    "flux": tiny_flux_pipeline,
}
# Pruning with a static kept-token budget on every family (MusicLDM's and Flux's presets leave it off).
PRUNING = {
    # the preset's accelerated steps are all skips or Lagrange anchors: steps before its phase are accelerated
    # here, with a criterion that never skips them, so that they are pruned
    "musicldm": {
        "tokenwise": True,
        "max_downsample": 2,
        "kept_tokens": 0.5,
        "acc_range": (4, 49),
        "criterion": "consistent",
    },
    "sd2": {"kept_tokens": 0.5},
    "flux": {"tokenwise": True, "max_fix": 8, "kept_tokens": 0.5},
}
# The boundary SADA draws on purpose: the denoiser hook's own frame runs in eager Python.
BOUNDARY = "_DenoiserHook.new_forward"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test starts without compiled code or counts from an earlier one, and leaves none behind."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def build(family: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = BUILDERS[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser_attribute(family: str) -> str:
    return "transformer" if family == "flux" else "unet"


def generate(pipe: Any, steps: int = 50) -> torch.Tensor:
    """The final latent of a seeded call."""
    generator = torch.Generator().manual_seed(0)
    if type(pipe).__name__ == "MusicLDMPipeline":
        return pipe(
            "piano", num_inference_steps=steps, audio_length_in_s=2.56, generator=generator, output_type="latent"
        ).audios
    extra = {"max_sequence_length": 16} if type(pipe).__name__ == "FluxPipeline" else {}
    height, width = IMAGE_SIZE
    return pipe(
        "a red cube", num_inference_steps=steps, height=height, width=width, generator=generator,
        output_type="latent", **extra,
    ).images  # fmt: skip


def graph_breaks() -> dict[str, int]:
    return dict(counters["graph_break"])


def assert_no_break_inside_the_denoiser() -> None:
    inside = {reason: count for reason, count in graph_breaks().items() if BOUNDARY not in reason}
    assert not inside, inside


@pytest.mark.parametrize("variant", ["preset", "pruning", "shallow"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_compiled_sada_builds_few_graphs_once_and_matches_eager(family, variant):
    if variant == "shallow" and family == "flux":
        pytest.skip("shallow steps need a UNet")
    pipe = build(family)
    # (the audio preset has shallow steps before its Lagrange phase; "accelerated" ones with its earlier fixed phase)
    shallow = {"shallow": "accelerated"} | (FIXED_PHASE if family == "musicldm" else {})
    overrides = {"preset": {}, "pruning": PRUNING[family], "shallow": shallow}[variant]
    config = SADAConfig.preset(family, **overrides)
    with apply_sada(pipe, config) as handle:
        eager = generate(pipe)
        eager_modes = list(handle.stats.step_modes)
    assert ("pruned" in eager_modes) == config.tokenwise and "skipped" in eager_modes
    if variant != "pruning":  # (the pruning overrides use a criterion that never calls a step stable)
        assert ("shallow" in eager_modes) == (config.shallow != "off")

    counter = CompileCounterWithBackend("eager")
    getattr(pipe, denoiser_attribute(family)).compile(backend=counter)
    with apply_sada(pipe, config) as handle:
        compiled = generate(pipe)
        graphs_first_call = counter.frame_count
        again = generate(pipe)
        stats = handle.stats
    assert stats.step_modes == eager_modes
    if variant == "pruning":
        assert stats.tokens_computed < stats.tokens_total
    # full and pruned calls (and a dynamic-shape recompile of the pruned one), plus one for shallow calls
    assert 1 <= graphs_first_call <= 3 + (config.shallow != "off"), graphs_first_call
    assert counter.frame_count == graphs_first_call, "recompiled after the first call"
    assert_no_break_inside_the_denoiser()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["compile after apply_sada", "torch.compile wrapper before apply_sada"])
def test_compiling_before_or_after_apply_sada_and_remove_restores(order):
    family = "musicldm"
    pipe = build(family)
    name = denoiser_attribute(family)
    config = SADAConfig.preset(family, **PRUNING[family])
    with apply_sada(pipe, config):
        eager = generate(pipe, steps=20)
    baseline = generate(pipe, steps=20)

    counter = CompileCounterWithBackend("eager")
    plain = getattr(pipe, name)
    if order.startswith("torch.compile"):
        setattr(pipe, name, torch.compile(plain, backend=counter))
        handle = apply_sada(pipe, config)
    else:
        handle = apply_sada(pipe, config)
        plain.compile(backend=counter)
    compiled = generate(pipe, steps=20)
    graphs = counter.frame_count
    handle.remove()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert 1 <= graphs <= 3
    if order.startswith("torch.compile"):
        # SADA's hook sits on the wrapper, outside the compiled module: not even a boundary break
        assert graph_breaks() == {}
    assert_no_break_inside_the_denoiser()
    # removed: the compiled pipeline computes what the plain one did, and the module has no trace of SADA
    torch.testing.assert_close(generate(pipe, steps=20), baseline, rtol=1e-4, atol=1e-5)
    assert not hasattr(plain, "_sada_handle") and not hasattr(plain, "_diffusers_hook")
    assert "forward" not in vars(plain)


def test_generate_batch_uses_the_attached_sada_so_a_compiled_denoiser_compiles_once():
    """Dynamo drops a compiled graph when a hook it was traced through is removed, so a render keeps SADA
    attached for the whole run and every batch uses it."""
    from sada_audio.generation import ClipRequest, SamplingSettings, generate_batch

    pipe = build("musicldm")
    counter = CompileCounterWithBackend("eager")
    pipe.unet.compile(backend=counter)
    settings = SamplingSettings(steps=12, duration=0.64)
    with apply_sada(pipe) as handle:
        first = generate_batch(pipe, [ClipRequest("piano", seed=0)], settings)
        graphs = counter.frame_count
        second = generate_batch(pipe, [ClipRequest("drums", seed=1)], settings)
        assert handle_of(pipe) is handle  # still attached: the batch did not remove it
    # one graph for the full calls, one for the shallow ones (the audio preset has both), none after the first batch
    assert counter.frame_count == graphs == 2
    assert "shallow" in first.sada_stats["step_modes"] and "shallow" in second.sada_stats["step_modes"]
    assert first.sada_stats["model_calls"] < 12 and second.sada_stats["model_calls"] < 12


def test_compiled_benchmark_runs_method_by_method_without_recompiling_and_matches_eager():
    """Attaching a method changes what dynamo traced (SADA's token-block hooks, the peers' wrappers), so under
    --compile the benchmark attaches each method once and compiles it in an untimed first call: no timed clip
    recompiles, and every method's clips equal the interleaved eager run's."""
    from contextlib import contextmanager

    from sada_audio.evaluation.accelerators import SADA, Baseline
    from sada_audio.evaluation.adaptive_diffusion import AdaptiveDiffusion
    from sada_audio.evaluation.benchmark import BenchmarkSettings, run_quality
    from sada_audio.evaluation.peers import DeepCache

    settings = BenchmarkSettings(schedulers=("ddim",), steps=10, prompts=("piano", "drums"), seeds=(0,), duration=0.64)
    pipe = build("musicldm")
    pruning = SADAConfig.preset("musicldm", **PRUNING["musicldm"])
    methods = [Baseline(), SADA(pruning, "pruning"), DeepCache(3), AdaptiveDiffusion(0.01)]
    eager = run_quality(pipe, methods, settings)
    counter = CompileCounterWithBackend("eager")
    pipe.unet.compile(backend=counter)
    graphs_at_tick: list[int] = []

    @contextmanager
    def count_graphs(items, label):
        def ticks():
            for item in items:
                graphs_at_tick.append(counter.frame_count)
                yield item

        yield ticks()

    compiled = run_quality(pipe, methods, dataclasses.replace(settings, compile_mode="default"), count_graphs)

    # graphs[k]: compiled before the k-th timed clip (clips run method by method), then after the last one
    graphs = [*graphs_at_tick, counter.frame_count]
    clips = len(settings.prompts)
    for index in range(len(methods)):
        # from the end of a method's first timed clip (its first call compiled it) to the end of its last: nothing
        assert graphs[index * clips + 1] == graphs[(index + 1) * clips], methods[index].label
    assert set(compiled["first_call_s"]["ddim"]) == {method.label for method in methods}
    assert counter.frame_count >= len(methods)  # every method was really compiled, after each reset
    by_clip = {(run["label"], run["prompt"]): run for run in eager["runs"]}
    assert len(compiled["runs"]) == len(eager["runs"]) == clips * len(methods)
    for run in compiled["runs"]:
        reference = by_clip[(run["label"], run["prompt"])]
        assert run["step_kinds"] == reference["step_kinds"]
        if "metrics" in run:
            assert run["metrics"]["mel_psnr"] == pytest.approx(reference["metrics"]["mel_psnr"], rel=1e-3)


@pytest.mark.slow
def test_inductor_compiles_sada_once_and_matches_eager():
    pipe = build("musicldm")
    config = SADAConfig.preset("musicldm", **PRUNING["musicldm"])
    with apply_sada(pipe, config):
        eager = generate(pipe)
    counter = CompileCounterWithBackend("inductor")
    pipe.unet.compile(backend=counter)
    with apply_sada(pipe, config):
        compiled = generate(pipe)
        graphs = counter.frame_count
        generate(pipe)
    assert 1 <= graphs <= 3 and counter.frame_count == graphs
    assert_no_break_inside_the_denoiser()
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)


# -- the command-line and API plumbing: --dtype auto, --compile ----------------------------------------------


def test_dtype_auto_is_float16_on_cuda_for_float16_families_bfloat16_otherwise_float32_off_cuda(tiny_musicldm_dir):
    from sada_audio.pipelines import resolve_dtype

    assert resolve_dtype("auto", "cuda", "musicldm") == torch.float16
    assert resolve_dtype("auto", "cuda:1", "cvssp/audioldm2") == torch.float16
    assert resolve_dtype("auto", "cuda", str(tiny_musicldm_dir)) == torch.float16  # read from model_index.json
    assert resolve_dtype("auto", "cuda", "black-forest-labs/FLUX.1-dev") == torch.bfloat16  # unknown: bfloat16
    assert resolve_dtype("auto", "cpu", "musicldm") == torch.float32
    assert resolve_dtype("fp16", "cpu", "musicldm") == torch.float16


def test_compile_denoiser_compiles_in_place_and_refuses_cuda_graphs_off_cuda():
    from sada_audio.errors import ConfigError
    from sada_audio.pipelines import compile_denoiser

    pipe = build("musicldm")
    compile_denoiser(pipe, "none")
    assert pipe.unet._compiled_call_impl is None
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        compile_denoiser(pipe, "reduce-overhead")
    with pytest.raises(ConfigError, match="unknown compile mode"):
        compile_denoiser(pipe, "fast")
    compile_denoiser(pipe, "default")
    assert pipe.unet._compiled_call_impl is not None  # compiles lazily, at the first call


def test_generate_records_dtype_and_compile_and_refuses_cuda_graphs_on_cpu(tiny_musicldm_dir, tmp_path):
    from click.testing import CliRunner

    from sada_audio.cli import main as cli

    out = tmp_path / "clip.wav"
    argv = ["generate", "piano", "--model", str(tiny_musicldm_dir), "-o", str(out), "--steps", "4"]
    result = CliRunner().invoke(cli.main, [*argv, "--duration", "0.64"])
    assert result.exit_code == 0, result.output

    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["dtype"], meta["compile"]) == ("float32", "none")  # --dtype auto on the CPU

    refused = CliRunner().invoke(cli.main, [*argv, "-o", str(tmp_path / "x.wav"), "--compile", "reduce-overhead"])
    assert refused.exit_code == 2 and "needs a CUDA device" in refused.output
    assert not (tmp_path / "x.wav").exists()
