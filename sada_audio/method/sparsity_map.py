"""Where SADA saved work in one sampling call: compact counters of the tokens its pruned steps recomputed.

The engine reports every token selection (:meth:`SparsityMap.record`); the map keeps one boolean mask of the
current step on the latent grid and, when the step changes, folds it into two counters:

* ``recomputed``: ``(H, W)`` integers, per latent token the number of pruned steps that recomputed it;
* ``step_profiles``: per pruned step, the share of each latent row's tokens recomputed, at most
  :data:`PROFILE_ROWS` rows (pooled), as whole percentages.

Nothing per token is kept per step. For audio latents the grid's rows are time frames and its columns
frequency bands, so ``recomputed`` is a time x frequency heat map and the profiles draw step x time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PROFILE_ROWS", "SparsityMap"]

#: A step's recompute profile over the latent rows is pooled to at most this many rows.
PROFILE_ROWS = 256


def _profile(mask: torch.Tensor) -> list[int]:
    """Whole percentages of each row's tokens set in ``mask``, pooled to at most :data:`PROFILE_ROWS` rows."""
    rows = mask.float().mean(dim=1)
    if rows.numel() > PROFILE_ROWS:
        rows = F.adaptive_avg_pool1d(rows[None, None], PROFILE_ROWS).flatten()
    return [round(100 * float(share)) for share in rows]


class SparsityMap:
    """Per-token recompute counters of one sampling call (see the module docstring).

    The current step's selection is folded in when the next step reports one; :attr:`recomputed`,
    :attr:`step_profiles` and :meth:`to_dict` include it already, so they can be read at any time.
    """

    def __init__(self) -> None:
        self.latent_hw: tuple[int, int] | None = None
        self._counts: torch.Tensor | None = None
        self._profiles: dict[int, list[int]] = {}
        self._step: int | None = None
        self._level = 0
        self._mask: torch.Tensor | None = None

    def record(
        self, step: int, level: int, grid: tuple[int, int], latent_hw: tuple[int, int], kept: torch.Tensor
    ) -> None:
        """Step ``step`` computes the tokens ``kept`` (row-major indices over ``grid``) in its blocks at
        resolution ``level``; of several levels in one step the finest (the latent grid's, level 0) counts."""
        if step != self._step:
            self._commit()
            self._step = step
        elif self._mask is not None and level >= self._level:
            return
        mask = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
        mask[kept.cpu()] = True
        scale = 2**level
        mask = mask.view(grid).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        self._mask, self._level = mask[: latent_hw[0], : latent_hw[1]], level
        if self.latent_hw != tuple(latent_hw):
            self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
            self._counts = torch.zeros(self.latent_hw, dtype=torch.int32)
            self._profiles = {}

    def _pending(self) -> torch.Tensor | None:
        """The current step's mask, if it fits the counters."""
        mask = self._mask
        if mask is None or self._counts is None or mask.shape != self._counts.shape:
            return None
        return mask

    def _commit(self) -> None:
        mask = self._pending()
        if mask is not None and self._step is not None:
            self._counts += mask.to(torch.int32)
            self._profiles[self._step] = _profile(mask)
        self._mask = None

    @property
    def recomputed(self) -> torch.Tensor | None:
        """``(H, W)`` int32: per latent token, the number of pruned steps that recomputed it."""
        mask = self._pending()
        if self._counts is None or mask is None:
            return self._counts
        return self._counts + mask.to(torch.int32)

    @property
    def step_profiles(self) -> dict[int, list[int]]:
        """Per pruned step, the whole percentage of each latent row's tokens recomputed (pooled)."""
        profiles = dict(self._profiles)
        mask = self._pending()
        if mask is not None and self._step is not None:
            profiles[self._step] = _profile(mask)
        return profiles

    def to_dict(self) -> dict[str, Any] | None:
        """The counters, JSON-ready; None when no step pruned tokens (the step modes then say everything)."""
        recomputed, profiles = self.recomputed, self.step_profiles
        if recomputed is None or not profiles:
            return None
        return {
            "grid": list(self.latent_hw or ()),
            "axes": ["latent row (time frame for audio)", "latent column (frequency band for audio)"],
            "pruned_steps": len(profiles),
            "recomputed": recomputed.tolist(),
            "step_profiles": {str(step): profile for step, profile in sorted(profiles.items())},
        }
