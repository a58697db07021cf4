"""Token-wise sparsity: token selection on rectangular and odd grids, and the block hook's arithmetic."""

import math

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention import BasicTransformerBlock

from sada_audio import SADAConfig, SADAHandle, StepMode
from sada_audio.config import level_grid
from sada_audio.evaluation.policies import ForcedPlan
from sada_audio.method.tokens import kept_token_indices, unstable_tokens, window_representatives
from sada_audio.models import TokenBlock


@pytest.mark.parametrize("grid", [(256, 16), (25, 16), (13, 7), (1, 1), (5, 3)])
@pytest.mark.parametrize("window", [(3, 3), (3, 2), (4, 1), (2, 5)])
def test_one_representative_per_window(grid, window):
    mask = window_representatives(grid, *window, torch.Generator().manual_seed(0)).view(grid)
    sx, sy = window
    assert int(mask.sum()) == math.ceil(grid[0] / sx) * math.ceil(grid[1] / sy)
    for i in range(0, grid[0], sx):
        for j in range(0, grid[1], sy):
            assert int(mask[i : i + sx, j : j + sy].sum()) == 1


def test_level_grids_follow_stride_two_downsampling():
    assert [level_grid((256, 16), level) for level in range(4)] == [(256, 16), (128, 8), (64, 4), (32, 2)]
    assert [level_grid((25, 16), level) for level in range(4)] == [(25, 16), (13, 8), (7, 4), (4, 2)]


def test_unstable_tokens_pool_to_coarse_levels_and_respect_the_cap():
    momentum = -torch.ones(8, 4)
    momentum[:4, :2] = torch.arange(8.0).view(4, 2) + 1  # top-left quarter unstable, graded
    fine = unstable_tokens(momentum, (8, 4), max_fix=100)
    assert int(fine.sum()) == 8 and fine.view(8, 4)[:4, :2].all()
    coarse = unstable_tokens(momentum, (4, 2), max_fix=100).view(4, 2)
    assert coarse[:2, 0].all() and int(coarse.sum()) == 2
    capped = unstable_tokens(momentum, (8, 4), max_fix=3).view(8, 4)
    assert int(capped.sum()) == 3 and capped[3, 1] and capped[3, 0] and capped[2, 1]  # the largest momenta
    assert int(unstable_tokens(momentum, (8, 4), max_fix=0).sum()) == 0


def test_kept_indices_are_sorted_unique_and_include_unstable_tokens():
    momentum = torch.randn(25, 16, generator=torch.Generator().manual_seed(3))
    kept = kept_token_indices(momentum, (13, 8), 3, 2, 40, torch.Generator().manual_seed(0))
    assert torch.equal(kept, kept.unique(sorted=True))
    unstable = unstable_tokens(momentum, (13, 8), 40).nonzero().flatten()
    assert set(unstable.tolist()) <= set(kept.tolist()) and kept.numel() < 13 * 8


def _block_and_handle(config):
    """A token block of a SADA handle whose steps after the first are planned by a ``ForcedPlan``; and a function
    that ends the current step and plans the next in a mode, on a latent grid, with a token momentum."""
    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16).eval()
    scheduler = DDIMScheduler()
    policy = ForcedPlan()
    handle = SADAHandle(
        torch.nn.Identity(), scheduler, config, blocks=[TokenBlock("block", block, level=1)], policy=policy
    )
    scheduler.set_timesteps(50)  # begins the run: its first step is a full call

    def next_step(mode, latent_hw, momentum):
        policy.next_step(handle, scheduler, mode, torch.zeros(1, 1, *latent_hw), momentum)

    return block, handle, next_step


def test_pruned_block_computes_kept_tokens_and_fills_the_rest_from_the_cached_residual():
    config = SADAConfig(max_downsample=2, sx=2, sy=2, max_fix=0)
    block, handle, next_step = _block_and_handle(config)
    latent_hw, grid = (10, 6), level_grid((10, 6), 1)
    first = torch.randn(2, grid[0] * grid[1], 16)
    with torch.no_grad():
        handle.begin_model_call(latent_hw)
        full = block(first)
        second = first + 0.1 * torch.randn_like(first)
        next_step(StepMode.PRUNED, latent_hw, torch.zeros(latent_hw) - 1.0)
        handle.begin_model_call(latent_hw)
        pruned = block(second)
        kept = handle.engine.kept_tokens(1)
        handle.remove()
        reference_kept = block(second[:, kept])
    skipped = torch.ones(grid[0] * grid[1], dtype=torch.bool)
    skipped[kept] = False
    assert kept.numel() == math.ceil(grid[0] / 2) * math.ceil(grid[1] / 2)
    torch.testing.assert_close(pruned[:, kept], reference_kept)
    torch.testing.assert_close(pruned[:, skipped], second[:, skipped] + (full - first)[:, skipped])
    assert handle.stats.tokens_total == 2 * grid[0] * grid[1]
    assert handle.stats.tokens_computed == grid[0] * grid[1] + kept.numel()


def test_pruned_block_with_every_token_kept_equals_the_full_block():
    block, handle, next_step = _block_and_handle(SADAConfig(max_downsample=2, max_fix=10_000))
    x = torch.randn(3, 4 * 3, 16)
    with torch.no_grad():
        handle.begin_model_call((7, 5))
        block(x)
        next_step(StepMode.PRUNED, (7, 5), torch.ones(7, 5))
        handle.begin_model_call((7, 5))
        pruned = block(x)
        handle.remove()
        torch.testing.assert_close(pruned, block(x))
