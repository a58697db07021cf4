"""The step-cost workload prices what it claims: a pruned call really prunes (issue 14.1)."""

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
        config = SADAConfig.preset("musicldm", tokenwise=True, max_downsample=2, kept_tokens=kept_tokens)
        method = SADA(config, "token-wise")
        costs = method.step_costs(bench)
        computed, total = method.pruned_call_tokens
        assert 0 < computed < total, (kept_tokens, computed, total)
        assert set(costs) == {"full", "pruned", "skipped"} and all(cost > 0 for cost in costs.values())
        # hooks gone: the bench's denoiser is the plain UNet again
        assert not hasattr(unet, "_sada_handle") and not hasattr(unet, "_diffusers_hook")


def test_pruned_call_flops_count_fewer_flops_than_a_full_call():
    from sada_audio.evaluation.step_costs import pruned_call_flops

    torch.manual_seed(0)
    unet = _musicldm_unet().eval().to("meta")  # shapes are all FLOPs depend on
    bench = unet_bench(unet, frames=32, batch=2, steps=50, repeats=1, clock="process")
    config = SADAConfig.preset("musicldm", tokenwise=True, max_downsample=2, kept_tokens=0.25)
    counts = pruned_call_flops(bench, config)
    assert 0 < counts["pruned_flops"] < counts["full_flops"]
    assert counts["full_tokens"] == counts["tokens_total"] > counts["pruned_tokens"] > 0
    assert not hasattr(unet, "_sada_handle")
