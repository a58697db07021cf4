"""The step-cost workload prices what it claims: a pruned call really prunes (issue 14.1), a shallow call
runs no deep block (issue 14.3)."""

import torch

from sada_audio import SADAConfig
from sada_audio.evaluation.accelerators import SADA
from sada_audio.evaluation.step_costs import unet_bench
from tests.support.tiny_pipelines import _musicldm_unet


def test_the_benchs_pruned_call_computes_fewer_tokens_than_it_has():
    torch.manual_seed(0)
    unet = _musicldm_unet().eval()
    bench = unet_bench(unet, frames=32, batch=2, steps=50, repeats=1)
    for kept_tokens in (None, 0.5):
        config = SADAConfig.preset("musicldm", tokenwise=True, max_downsample=2, kept_tokens=kept_tokens, shallow="off")
        method = SADA(config, "token-wise")
        costs = method.step_costs(bench)
        computed, total = method.pruned_call_tokens
        assert 0 < computed < total, (kept_tokens, computed, total)
        assert set(costs) == {"full", "pruned", "skipped"} and all(cost > 0 for cost in costs.values())
        # hooks gone: the bench's denoiser is the plain UNet again
        assert not hasattr(unet, "_sada_handle") and not hasattr(unet, "_diffusers_hook")


def test_the_benchs_shallow_call_runs_no_deep_block():
    torch.manual_seed(0)
    unet = _musicldm_unet().eval()
    bench = unet_bench(unet, frames=32, batch=2, steps=50, repeats=1)
    method = SADA(SADAConfig.preset("musicldm", shallow="accelerated"), "shallow")
    costs = method.step_costs(bench)
    shallow_runs, full_runs = method.shallow_call_deep_runs
    assert shallow_runs == 0 < full_runs
    assert set(costs) == {"full", "shallow", "skipped"} and all(cost > 0 for cost in costs.values())
    assert not hasattr(unet, "_sada_handle") and not hasattr(unet, "_diffusers_hook")
    assert not any(hasattr(module, "_diffusers_hook") for module in unet.modules())


def test_call_flops_count_fewer_flops_in_pruned_and_shallow_calls():
    from sada_audio.evaluation.step_costs import call_flops

    torch.manual_seed(0)
    unet = _musicldm_unet().eval().to("meta")  # shapes are all FLOPs depend on
    bench = unet_bench(unet, frames=32, batch=2, steps=50, repeats=1, clock="process")
    config = SADAConfig.preset("musicldm", tokenwise=True, max_downsample=2, kept_tokens=0.25, shallow="accelerated")
    counts = call_flops(bench, config)
    assert 0 < counts["pruned_flops"] < counts["full_flops"]
    # the tiny UNet's outer level holds about a third of its FLOPs (a real-size one a few percent)
    assert 0 < counts["shallow_flops"] < 0.5 * counts["full_flops"]
    assert counts["full_tokens"] == counts["tokens_total"] > counts["pruned_tokens"] > 0
    assert counts["shallow_tokens"] == 0  # the tiny UNet's transformer blocks are all below its outer level
    assert not hasattr(unet, "_sada_handle")


def test_median_time_leaves_the_setup_untimed_and_the_warm_up_out():
    from sada_audio.evaluation.accelerators import median_time

    now = [0.0]
    calls = []

    def advance(seconds: float, name: str):
        def run():
            calls.append(name)
            now[0] += seconds

        return run

    # each priced call takes 1 s more than the one before; the setup before it takes 100 s
    durations = iter([10.0, 1.0, 2.0, 3.0])

    def call():
        advance(next(durations), "call")()

    priced = median_time(call, 3, clock=lambda: now[0], setup=advance(100.0, "setup"))
    assert priced == 2.0  # the 10 s warm-up and the setups are not counted
    assert calls == ["setup", "call"] * 4
