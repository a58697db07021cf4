"""Planning policies of the studies: the step decision of :func:`sada_audio.plan_step` with one input replaced.

A study passes one to ``apply_sada(pipe, config, policy=...)`` or ``SADAHandle(..., policy=...)``; sampling
itself never uses them.
"""

from __future__ import annotations

import dataclasses

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
