"""Planning policies of the studies: the step decision of :func:`sada_audio.plan_step` with one input replaced,
or replaced altogether by the study's own choice.

A study passes one to ``apply_sada(pipe, config, policy=...)`` or ``SADAHandle(..., policy=...)``; sampling
itself never uses them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sada_audio.apply import SADAHandle
from sada_audio.method.engine import PlanningPolicy
from sada_audio.method.planner import Plan, PlanInputs, Reason, StepMode, plan_step


def always_stable(inputs: PlanInputs) -> Plan:
    """The criterion says "stable" after every step, so every step the limits allow (``acc_range``,
    ``max_interval``, the Lagrange phase's anchors) is skipped: the reconstructions compared on the same steps."""
    return plan_step(dataclasses.replace(inputs, stable=lambda: True))


def forced_skips(steps: frozenset[int]) -> PlanningPolicy:
    """Skip exactly ``steps`` where three gradients are known and the step lies in ``acc_range`` (the oracle
    study's chosen skips) instead of asking the criterion; every other accelerated step is a full call."""

    def plan(inputs: PlanInputs) -> Plan:
        if inputs.known_gradients < 3 or not inputs.bounds.accelerated(inputs.step):
            return plan_step(inputs)
        return Plan(StepMode.SKIPPED if inputs.step in steps else StepMode.FULL, reason=Reason.FORCED)

    return plan


class ForcedPlan:
    """Plans every step after the first in the mode the study last gave :meth:`next_step` (reason "forced"): for
    studies that price or test one kind of denoiser call at a time on fixed inputs, outside a sampling
    trajectory (the step costs, the token-block tests). The first step of a run is a full call, as always."""

    def __init__(self) -> None:
        self.mode = StepMode.FULL

    def __call__(self, inputs: PlanInputs) -> Plan:
        return Plan(self.mode, reason=Reason.FORCED)

    def next_step(
        self,
        handle: SADAHandle,
        scheduler: Any,
        mode: StepMode,
        latent: torch.Tensor,
        token_momentum: torch.Tensor | None = None,
    ) -> None:
        """End the current step through ``scheduler`` (wrapped by ``handle``, made with this policy), with
        ``latent`` as the step's model output and state, so that the next step is planned as ``mode``;
        ``token_momentum`` picks the tokens a pruned call recomputes (:meth:`SADAHandle.set_token_momentum`).
        The next denoiser call is the new step's first: it draws fresh kept tokens and finds the token caches
        and deep features the calls before it left."""
        self.mode = mode
        # The solver's result is not used: every call gets the same fixed inputs.
        scheduler.step(latent, scheduler.timesteps[0], latent)
        if token_momentum is not None:
            handle.set_token_momentum(token_momentum)
