"""A fixed kept-token budget (``SADAConfig.kept_tokens``): pruned calls of one shape, for compiled runs."""

import pytest
import torch

from sada_audio import ConfigError, SADAConfig
from sada_audio.method.tokens import kept_token_indices, unstable_tokens, window_representatives


def _indices(momentum, grid, budget, seed=0):
    return kept_token_indices(momentum, grid, 3, 2, 12, torch.Generator().manual_seed(seed), budget)


@pytest.mark.parametrize("grid", [(13, 8), (7, 5), (64, 4)])
def test_budget_fixes_the_count_and_keeps_representatives_then_unstable_tokens_first(grid):
    momentum = torch.randn(*grid, generator=torch.Generator().manual_seed(1))
    free = _indices(momentum, grid, None)
    representatives = window_representatives(grid, 3, 2, torch.Generator().manual_seed(0))
    unstable = unstable_tokens(momentum, grid, 12)
    for budget in (1, free.numel() // 2, free.numel(), free.numel() + 7, grid[0] * grid[1] + 5):
        kept = _indices(momentum, grid, budget)
        assert kept.numel() == min(budget, grid[0] * grid[1])
        assert torch.equal(kept, kept.unique())  # sorted, no repeats
        if budget >= free.numel():
            # everything the free selection keeps, plus the largest remaining momenta
            assert set(free.tolist()) <= set(kept.tolist())
        elif budget <= int(representatives.sum()):
            assert representatives[kept].all()
        else:
            assert representatives[kept].sum() == representatives.sum() and unstable[kept].any()


def test_kept_tokens_is_a_share():
    assert SADAConfig(kept_tokens=0.25).kept_tokens == 0.25
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="kept_tokens"):
            SADAConfig(kept_tokens=bad)


def test_a_block_whose_token_count_is_not_the_levels_grid_runs_in_full():
    from diffusers import DDIMScheduler
    from diffusers.models.attention import BasicTransformerBlock

    from sada_audio import SADAHandle, StepMode
    from sada_audio.evaluation.policies import ForcedPlan
    from sada_audio.models import TokenBlock

    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16).eval()
    scheduler = DDIMScheduler()
    config = SADAConfig(max_downsample=1, sx=2, sy=2, max_fix=0, kept_tokens=0.5)
    policy = ForcedPlan()
    handle = SADAHandle(
        torch.nn.Identity(), scheduler, config, blocks=[TokenBlock("block", block, level=1)], policy=policy
    )
    scheduler.set_timesteps(50)  # begins the run: its first step is a full call
    x = torch.randn(2, 17, 16)  # the level-1 grid of a 10 x 6 latent has 5 x 3 = 15 tokens
    with torch.no_grad():
        handle.begin_model_call((10, 6))
        block(x)
        policy.next_step(handle, scheduler, StepMode.PRUNED, torch.zeros(1, 1, 10, 6), -torch.ones(10, 6))
        handle.begin_model_call((10, 6))
        output = block(x)
        handle.remove()
        torch.testing.assert_close(output, block(x))
    assert handle.stats.tokens_computed == handle.stats.tokens_total == 2 * 17
