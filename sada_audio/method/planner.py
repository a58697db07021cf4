"""The step decision in one place: what SADA does at a step, and why.

:func:`plan_step` is a pure function of explicit inputs (:class:`PlanInputs`: the step, the run's bounds, the
config, the Lagrange phase, the limit counters and the lazily computed criterion verdict) and returns a
:class:`Plan`: the step's mode, whether it is a Lagrange anchor, and the reason. The engine asks it once per step
and records what was *executed* (a plan can fall back to a full call); the phase and the limits then advance from
the executed mode, never from the plan. To answer "why was step 17 skipped?", read this function, or the
``step_reasons`` of the run's stats.

:class:`LagrangePhase` (anchors, the adaptive phase's probe and widening) and :class:`Limits` (skips in a row,
pruned calls since the token caches were refreshed, the deep features' age) keep the state the decision reads.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..config import SADAConfig, StepBounds
from .criterion import lagrange_data_prediction, relative_change

logger = logging.getLogger(__name__)


class StepMode(enum.StrEnum):
    """What a step does, most work first."""

    FULL = "full"
    """A real model call computing every token (refreshes the token caches)."""
    PRUNED = "pruned"
    """A real model call in which transformer blocks compute only the selected tokens."""
    SHALLOW = "shallow"
    """A model call in which only the UNet's outermost level runs, on the deep blocks' cached outputs."""
    SKIPPED = "skipped"
    """No model call: the solver gets an output rebuilt from its own history."""


STEP_MODES: tuple[str, ...] = tuple(mode.value for mode in StepMode)
"""The mode names, most work first, as ``SADAStats.step_modes``, the sidecars and the figures write them."""
_MODE_LETTERS = {StepMode.FULL: "f", StepMode.PRUNED: "p", StepMode.SHALLOW: "h", StepMode.SKIPPED: "s"}


def schedule_letters(step_modes: Sequence[str]) -> str:
    """A schedule as one letter per step (``SADAStats.step_modes`` in): f full, p pruned, h shallow, s skipped."""
    return "".join(_MODE_LETTERS[StepMode(mode)] for mode in step_modes)


class Reason(enum.StrEnum):
    """Why a step got its mode (``SADAStats.step_reasons``)."""

    WARM_UP = "warm-up"
    """Outside ``acc_range`` (or fewer than three known gradients): a full call."""
    UNSTABLE = "criterion unstable"
    """The criterion called the last step unstable: a full call."""
    STABLE = "criterion stable"
    """The criterion called the last step stable: skipped."""
    LAGRANGE = "lagrange"
    """In the Lagrange phase between anchors: skipped, rebuilt from the anchors."""
    ANCHOR = "anchor"
    """A Lagrange anchor: a full call."""
    PROBE = "anchor probe"
    """An adaptive phase may begin here: a full call whose data prediction the anchor probe reads."""
    FEW_ANCHORS = "too few anchors"
    """In the Lagrange phase with fewer than two anchors to extrapolate through: a real call."""
    SEEDS_ANCHOR = "seeds anchor"
    """A call an anchor probe reads later: full, never shallow."""
    SHALLOW = "fresh deep features"
    """Stable (or any accelerated step, by the shallow rule) and the deep features are recent: shallow."""
    TOKENS = "tokens"
    """A real call with token pruning: the unstable and window-sampled tokens only."""
    LIMIT = "limit"
    """Skipping, pruning or a shallow call would pass a limit (``max_interval``, ``shallow_max_age``): full."""
    OFF = "sparsity off"
    """Step-wise sparsity, token pruning and shallow steps are all switched off: a full call."""
    FALL_BACK = "fall-back"
    """Executed as a full call instead of the plan (no finite reconstruction, no deep features or caches fit)."""
    FORCED = "forced"
    """Set from outside the planner (a study or a cost measurement)."""


@dataclass(frozen=True)
class Plan:
    """What a step does: its mode, whether it is a Lagrange anchor, and why."""

    mode: StepMode
    is_anchor: bool = False
    reason: Reason = Reason.WARM_UP


class LagrangePhase:
    """The late phase of one run: its anchors, and for an adaptive phase the probe that begins it and widens
    its anchor intervals. Advanced once per step by :meth:`record` with the mode the step was executed in."""

    def __init__(self, config: SADAConfig, bounds: StepBounds) -> None:
        self.config, self.bounds = config, bounds
        self.adaptive = config.anchor_tolerance is not None and bounds.lagrange_step is not None
        # The fixed phase begins at lagrange_step; an adaptive one when the anchor probe allows it.
        self.start: int | None = None if self.adaptive else bounds.lagrange_step
        self.next_anchor: int | None = self.start
        self.interval = config.lagrange_int
        self.times: deque[float] = deque(maxlen=config.lagrange_term)
        self.anchors: deque[torch.Tensor] = deque(maxlen=config.lagrange_term)
        self.called: dict[int, tuple[float, torch.Tensor]] = {}
        """Adaptive phase, before it begins: (time, data prediction) of the calls a probe may read."""

    # -- what the planner reads --------------------------------------------------------------------

    def in_phase(self, step: int) -> bool:
        return self.start is not None and self.bounds.accelerated(step) and step >= self.start

    def is_anchor(self, step: int) -> bool:
        return self.in_phase(step) and step == self.next_anchor

    def probing(self, step: int) -> bool:
        """An adaptive phase may begin at ``step``: the anchor probe needs its data prediction, so it is called."""
        return self.adaptive and self.start is None and step >= self.bounds.lagrange_step

    @property
    def ready(self) -> bool:
        """Enough anchors to extrapolate through (two): the phase may skip."""
        return len(self.anchors) >= 2

    def probe_nodes(self, step: int) -> list[int]:
        """The steps whose data predictions the probe at ``step`` reads: ``lagrange_int`` apart before it, up to
        ``lagrange_term`` of them, oldest first (the anchors the phase would hold had it begun earlier)."""
        config = self.config
        return [step - k * config.lagrange_int for k in range(config.lagrange_term, 0, -1)]

    def seeds_anchor(self, step: int) -> bool:
        """Whether a probe before the adaptive phase may read ``step`` (a node of a step between ``lagrange_step``
        and ``lagrange_latest``): such a call is full, never shallow, whose stale deep features would keep the
        phase from beginning there."""
        if not self.adaptive or self.start is not None or step >= self.bounds.lagrange_step:
            return False
        first, latest, interval = self.bounds.lagrange_step, self.bounds.lagrange_latest, self.config.lagrange_int
        # step = n - k * interval for some probe step n in [first, latest] and k in 1..lagrange_term
        return any(first <= step + k * interval <= latest for k in range(1, self.config.lagrange_term + 1))

    def extrapolate(self, t: float) -> torch.Tensor:
        """The data prediction at solver time ``t`` on the Lagrange polynomial through the anchors."""
        return lagrange_data_prediction(list(self.times), list(self.anchors), t)

    # -- what the executed step tells it -------------------------------------------------------------

    def record(self, step: int, mode: StepMode, t: float, x0: torch.Tensor) -> list[int]:
        """After ``step`` was executed in ``mode`` with data prediction ``x0`` at solver time ``t``: let the probe
        begin an adaptive phase, keep a real call's data prediction where it is an anchor (the probe then sets an
        adaptive phase's next interval), schedule the next anchor. Returns the steps that became anchors."""
        # A shallow step's deeper features are stale: its data prediction neither seeds nor probes anchors.
        called = mode is StepMode.FULL or mode is StepMode.PRUNED
        seeds: list[int] = []
        if self.adaptive and self.start is None:
            seeds = self._begin(step, called, t, x0)
            if self.start is None:
                return []
        if step != self.next_anchor:
            return seeds
        anchored = called and self.in_phase(step)
        if anchored:
            if self.adaptive and step != self.start and self.anchors:
                config = self.config
                within = self._probe(step, self.times, self.anchors, t, x0) <= config.anchor_tolerance
                widest = config.max_lagrange_int or config.lagrange_int
                self.interval = min(self.interval + 1, widest) if within else config.lagrange_int
            self.times.append(t)
            self.anchors.append(x0)
        self.next_anchor = step + self.interval
        return [*seeds, step] if anchored else seeds

    def _begin(self, step: int, called: bool, t: float, x0: torch.Tensor) -> list[int]:
        """Begin an adaptive phase at ``step`` where the probe allows it (or ``lagrange_latest`` is reached),
        seeded with the calls the probe read; returns those calls' steps."""
        bounds = self.bounds
        if called and bounds.accelerated(step) and step >= bounds.lagrange_step:
            nodes = self.probe_nodes(step)
            # the probe needs the nearest node; older ones are used where they were called
            read = [node for node in nodes if node in self.called] if nodes[-1] in self.called else []
            times, anchors = [self.called[node][0] for node in read], [self.called[node][1] for node in read]
            within = bool(read) and self._probe(step, times, anchors, t, x0) <= self.config.anchor_tolerance
            if within or step >= bounds.lagrange_latest:
                logger.debug("SADA: adaptive Lagrange phase begins at step %d", step)
                self.start = self.next_anchor = step
                self.called.clear()
                self.times.extend(times)
                self.anchors.extend(anchors)
                return read
        if called:
            self.called[step] = (t, x0)
            span = self.config.lagrange_term * self.config.lagrange_int
            for old in [node for node in self.called if node <= step - span]:
                del self.called[old]
        return []

    @staticmethod
    def _probe(step: int, times: Sequence[float], anchors: Sequence[torch.Tensor], t: float, x0: torch.Tensor) -> float:
        """Relative error of the Lagrange extrapolation through ``anchors`` (one anchor: kept constant) to the
        step's data prediction ``x0`` at solver time ``t``."""
        error = relative_change(x0, lagrange_data_prediction(list(times), list(anchors), t))
        logger.debug("SADA: anchor probe at step %d: %.4f", step, error)
        return error


@dataclass
class Limits:
    """The counters the limits read, advanced by :meth:`record` from what each step executed."""

    skip_streak: int = 0
    """Skipped steps in a row up to the last step."""
    pruned_since_refresh: int = 0
    """Pruned calls since a full call last refreshed the token caches."""
    deep_step: int = -1
    """Last step whose model call ran the deep blocks (their cached outputs are that old)."""

    def may_skip(self, config: SADAConfig) -> bool:
        return config.stepwise and self.skip_streak < config.max_interval

    def may_prune(self, config: SADAConfig) -> bool:
        return config.tokenwise and self.pruned_since_refresh < config.max_interval

    def deep_features_fresh(self, step: int, config: SADAConfig) -> bool:
        return step - self.deep_step <= config.shallow_max_age

    def record(self, step: int, mode: StepMode) -> None:
        self.skip_streak = self.skip_streak + 1 if mode is StepMode.SKIPPED else 0
        if mode is StepMode.FULL:
            self.pruned_since_refresh = 0
        elif mode is StepMode.PRUNED:
            self.pruned_since_refresh += 1
        # (a shallow or skipped step leaves the token caches and the deep features be)
        if mode is StepMode.FULL or mode is StepMode.PRUNED:
            self.deep_step = step


@dataclass(frozen=True)
class PlanInputs:
    """Everything :func:`plan_step` reads."""

    step: int
    bounds: StepBounds
    config: SADAConfig
    phase: LagrangePhase
    limits: Limits
    known_gradients: int
    """Steps recorded so far, up to three (skipping needs three: the criterion and the extrapolation read them)."""
    stable: Callable[[], bool] = field(compare=False)
    """The criterion's verdict on the last step, computed when first read."""


def plan_step(inputs: PlanInputs) -> Plan:
    """The plan of step ``inputs.step``: the one place that decides a step's mode, and says why."""
    step, config, phase, limits = inputs.step, inputs.config, inputs.phase, inputs.limits
    if inputs.known_gradients < 3 or not inputs.bounds.accelerated(step):
        return Plan(StepMode.FULL, reason=Reason.WARM_UP)
    if phase.is_anchor(step):
        # Anchors are computed in full: the extrapolating polynomial amplifies their errors.
        return Plan(StepMode.FULL, is_anchor=True, reason=Reason.ANCHOR)
    if phase.probing(step):
        # a step at which an adaptive phase may begin may become its first anchor
        return Plan(StepMode.FULL, reason=Reason.PROBE)
    verdict: list[bool] = []  # the criterion's verdict once read (reading it costs a criterion evaluation)

    def stable() -> bool:
        if not verdict:
            verdict.append(inputs.stable())
        return verdict[0]

    may_skip, in_phase = limits.may_skip(config), phase.in_phase(step)
    if in_phase and may_skip and phase.ready:
        return Plan(StepMode.SKIPPED, reason=Reason.LAGRANGE)
    if not in_phase and may_skip and config.shallow != "replace_skips" and stable():
        return Plan(StepMode.SKIPPED, reason=Reason.STABLE)
    # A real call: shallow where the shallow rule allows it, else pruned where the token limit allows it.
    seeds = config.shallow != "off" and phase.seeds_anchor(step)
    aged = False
    if config.shallow != "off" and not seeds and (config.shallow == "accelerated" or in_phase or stable()):
        if limits.deep_features_fresh(step, config):
            return Plan(StepMode.SHALLOW, reason=Reason.SHALLOW)
        aged = True
    if limits.may_prune(config):
        return Plan(StepMode.PRUNED, reason=Reason.TOKENS)
    if in_phase:
        reason = Reason.FEW_ANCHORS if may_skip else Reason.LIMIT
    elif seeds:
        reason = Reason.SEEDS_ANCHOR
    elif aged or config.tokenwise or (config.stepwise and not may_skip):
        reason = Reason.LIMIT
    else:
        reason = Reason.UNSTABLE if verdict else Reason.OFF
    return Plan(StepMode.FULL, reason=reason)
