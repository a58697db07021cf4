"""Token-wise sparsity: which tokens of a (possibly rectangular, odd-sized) grid to recompute."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_representatives(grid: tuple[int, int], sx: int, sy: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask ``(h*w,)`` with one random token of every ``sx x sy`` window (edge windows may be smaller)."""
    height, width = grid
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    windows_per_row = math.ceil(width / sy)
    window_id = (rows // sx) * windows_per_row + cols // sy
    score = torch.rand(height * width, generator=generator)
    best = torch.full((int(window_id.max()) + 1,), -1.0).scatter_reduce(0, window_id, score, reduce="amax")
    return score == best[window_id]


def unstable_tokens(token_momentum: torch.Tensor, grid: tuple[int, int], max_fix: int) -> torch.Tensor:
    """Boolean mask ``(h*w,)`` of unstable tokens at ``grid``, at most ``max_fix`` scaled to the grid.

    On the latent grid a token is unstable when its momentum is >= 0; a coarser token is unstable
    when at least half of the latent tokens it covers are. The cap keeps the largest momenta.
    """
    latent_tokens = token_momentum.numel()
    momentum = token_momentum[None, None].float()
    unstable_share = F.adaptive_avg_pool2d((momentum >= 0).float(), grid).flatten()
    pooled_momentum = F.adaptive_avg_pool2d(momentum, grid).flatten()
    unstable = unstable_share >= 0.5
    cap = math.floor(max_fix * unstable.numel() / latent_tokens)
    if int(unstable.sum()) > cap:
        ranked = torch.where(unstable, pooled_momentum, torch.full_like(pooled_momentum, -math.inf))
        unstable = torch.zeros_like(unstable)
        if cap > 0:
            unstable[ranked.topk(cap).indices] = True
    return unstable


def kept_token_indices(
    token_momentum: torch.Tensor,
    grid: tuple[int, int],
    sx: int,
    sy: int,
    max_fix: int,
    generator: torch.Generator,
    budget: int | None = None,
) -> torch.Tensor:
    """Sorted indices (row-major over ``grid``) of the tokens a pruned block must compute.

    Without ``budget``: every window's representative and every unstable token. With ``budget``: exactly
    ``budget`` tokens (at most the grid's), taken in order of priority -- representatives, then unstable
    tokens, then the others -- and by pooled momentum within each, so that shapes never change.
    """
    representatives = window_representatives(grid, sx, sy, generator)
    unstable = unstable_tokens(token_momentum, grid, max_fix)
    if budget is None:
        return (representatives | unstable).nonzero().flatten()
    momentum = F.adaptive_avg_pool2d(token_momentum[None, None].float(), grid).flatten()
    # Stable sorts: by momentum first, then by priority class, so momentum orders tokens within a class.
    order = momentum.argsort(descending=True, stable=True)
    priority = representatives.long() * 2 + unstable.long()
    order = order[priority[order].argsort(descending=True, stable=True)]
    return order[: min(budget, order.numel())].sort().values
