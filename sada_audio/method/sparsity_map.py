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


class SparsityMap:
    """Per-token recompute counters of one sampling call (see the module docstring)."""

    def __init__(self) -> None:
        self.latent_hw: tuple[int, int] | None = None
        self.recomputed: torch.Tensor | None = None
        self.step_profiles: dict[int, list[int]] = {}
        self._step: int | None = None
        self._level = 0
        self._mask: torch.Tensor | None = None

    def record(
        self, step: int, level: int, grid: tuple[int, int], latent_hw: tuple[int, int], kept: torch.Tensor
    ) -> None:
        """Step ``step`` computes the tokens ``kept`` (row-major indices over ``grid``) in its blocks at
        resolution ``level``; of several levels in one step the finest (the latent grid's, level 0) counts."""
        if step != self._step:
            self._flush()
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
            self.recomputed = torch.zeros(self.latent_hw, dtype=torch.int32)

    def _flush(self) -> None:
        mask, self._mask = self._mask, None
        if mask is None or self.recomputed is None or self._step is None or mask.shape != self.recomputed.shape:
            return
        self.recomputed += mask.to(torch.int32)
        rows = mask.float().mean(dim=1)
        if rows.numel() > PROFILE_ROWS:
            rows = F.adaptive_avg_pool1d(rows[None, None], PROFILE_ROWS).flatten()
        self.step_profiles[self._step] = [round(100 * float(share)) for share in rows]

    def to_dict(self) -> dict[str, Any] | None:
        """The counters, JSON-ready; None when no step pruned tokens (the step modes then say everything)."""
        self._flush()
        if self.recomputed is None or not self.step_profiles:
            return None
        return {
            "grid": list(self.latent_hw or ()),
            "axes": ["latent row (time frame for audio)", "latent column (frequency band for audio)"],
            "pruned_steps": len(self.step_profiles),
            "recomputed": self.recomputed.tolist(),
            "step_profiles": {str(step): profile for step, profile in sorted(self.step_profiles.items())},
        }
