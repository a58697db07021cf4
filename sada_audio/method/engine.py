"""Per-call SADA state: records the solver's gradients, asks the planner for every step, records what ran.

The engine is driven by three events that the hooks forward to it: a new sampling run starts
(:meth:`SADAEngine.start`), the denoiser is about to be called (:meth:`SADAEngine.begin_model_call`), and the
solver has finished a step (:meth:`SADAEngine.after_step`). All state of a call lives in one
:class:`SamplingRun`, rebuilt at every call, so two calls with the same seed give the same output. What a step
does is decided by one function, :func:`~.planner.plan_step`; what it executed is recorded in one place,
:meth:`SADAEngine.after_step`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import SADAConfig, StepBounds, level_grid
from .criterion import (
    Stability,
    extrapolate_gradient,
    published_gradient,
    published_stability,
    relative_change,
    stability,
)
from .planner import LagrangePhase, Limits, Plan, PlanInputs, Reason, StepMode, plan_step
from .sparsity_map import SparsityMap
from .tokens import kept_token_indices

logger = logging.getLogger(__name__)

PlanningPolicy = Callable[[PlanInputs], Plan]
"""Plans a step from its inputs: :func:`~.planner.plan_step`, or a study's own (an oracle's chosen skips, a
criterion that always says "stable") built on it."""


class ODECoordinates(Protocol):
    """What the engine needs from a solver adapter (see ``sada_audio.solvers``)."""

    num_steps: int
    stochastic: bool
    """The sampler adds fresh noise in every step (an SDE): states carry noise the gradients never saw."""

    def ode_time(self, n: int) -> tuple[float, float]: ...

    def to_gradient(self, model_output: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor: ...

    def from_data_prediction(self, x0: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor: ...


@dataclass
class SADAStats:
    """What SADA did during the last sampling call."""

    num_steps: int = 0
    model_calls: int = 0
    """Denoiser evaluations actually made (NFE; one batched call with guidance counts once)."""
    skipped_steps: list[int] = field(default_factory=list)
    pruned_steps: list[int] = field(default_factory=list)
    shallow_steps: list[int] = field(default_factory=list)
    step_modes: list[str] = field(default_factory=list)
    """Mode every step was executed in, in order: "full", "pruned", "shallow" or "skipped"."""
    step_reasons: list[str] = field(default_factory=list)
    """Why every step got its mode (a :class:`~.planner.Reason`: "criterion stable", "lagrange", "anchor", ...)."""
    anchor_steps: list[int] = field(default_factory=list)
    """Steps whose data predictions became Lagrange anchors (an adaptive phase's first anchors are earlier calls
    the anchor probe read)."""
    fallbacks: int = 0
    """Planned skips that ran the model instead because the reconstruction was not finite."""
    tokens_computed: int = 0
    tokens_total: int = 0
    sparsity: SparsityMap = field(default_factory=SparsityMap, repr=False, compare=False)
    """Which latent tokens the pruned steps recomputed (compact counters, see ``sparsity_map``)."""

    @property
    def pruned_fraction(self) -> float:
        """Share of transformer-block token computations pruned, over the model calls made."""
        return 0.0 if self.tokens_total == 0 else 1.0 - self.tokens_computed / self.tokens_total

    @property
    def nfe_ratio(self) -> float:
        return self.model_calls / self.num_steps if self.num_steps else 1.0

    def record(self, step: int, plan: Plan, anchors: list[int]) -> None:
        """Step ``step`` ran as ``plan`` says (its executed mode and reason); ``anchors``: steps that became anchors."""
        self.step_modes.append(plan.mode.value)
        self.step_reasons.append(plan.reason.value)
        self.anchor_steps.extend(anchors)
        steps_of_mode = {
            StepMode.SKIPPED: self.skipped_steps,
            StepMode.PRUNED: self.pruned_steps,
            StepMode.SHALLOW: self.shallow_steps,
        }
        if plan.mode in steps_of_mode:
            steps_of_mode[plan.mode].append(step)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "model_calls": self.model_calls,
            "skipped_steps": list(self.skipped_steps),
            "pruned_steps": list(self.pruned_steps),
            "shallow_steps": list(self.shallow_steps),
            "step_modes": list(self.step_modes),
            "step_reasons": list(self.step_reasons),
            "anchor_steps": sorted(self.anchor_steps),
            "fallbacks": self.fallbacks,
            "pruned_fraction": round(self.pruned_fraction, 6),
            "nfe_ratio": round(self.nfe_ratio, 6),
            "sparsity_map": self.sparsity.to_dict(),
        }


@dataclass
class _History:
    """Newest-first record of the last three steps, in ODE coordinates."""

    times: deque = field(default_factory=lambda: deque(maxlen=3))
    gradients: deque = field(default_factory=lambda: deque(maxlen=3))
    published: deque = field(default_factory=lambda: deque(maxlen=3))
    """The published criterion's gradients ``f`` (only with ``criterion="published"``)."""
    data_predictions: deque = field(default_factory=lambda: deque(maxlen=2))

    def push(self, t: float, y: torch.Tensor, x0: torch.Tensor) -> None:
        self.times.appendleft(t)
        self.gradients.appendleft(y)
        self.data_predictions.appendleft(x0)

    def __len__(self) -> int:
        return len(self.times)


@dataclass
class SamplingRun:
    """Everything one sampling call holds: the step, its plan, the solver's history, the Lagrange phase, the
    limit counters, the token caches and the hooks' stand-in outputs. A new call starts a new one."""

    solver: ODECoordinates
    criterion: str
    """The criterion this run reads (``published`` falls back to ``consistent`` where the scheduler lacks it)."""
    bounds: StepBounds
    phase: LagrangePhase
    stats: SADAStats
    generator: torch.Generator
    """Draws the per-window token representatives."""
    step: int = 0
    plan: Plan = Plan(StepMode.FULL)
    """The current step's plan, as executed so far (a fall-back replaces it)."""
    reconstructed: torch.Tensor | None = None
    """The current step's rebuilt model output, when it is skipped."""
    pruned_in_step: bool = False
    """Some token block of the current step computed only its kept tokens."""
    limits: Limits = field(default_factory=Limits)
    history: _History = field(default_factory=_History)
    last_called_output: torch.Tensor | None = None
    """The last model output actually computed (the published criterion reads it on skipped steps)."""
    token_momentum: torch.Tensor | None = None
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    """Kept-token indices of the current step, by level."""
    grid: tuple[int, int] | None = None
    """Token grid of the latest denoiser call."""
    slot: int = 0
    """Index of the latest denoiser call within its step (Flux's true CFG calls twice per step)."""
    last_call_step: int = -1
    block_caches: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    """Residual of every pruned-level block's last computation, by (block index, slot)."""
    feeder_outputs: dict[int, Any] = field(default_factory=dict)
    """Last output of every feeder module (by index): the stand-in on a skipped step."""
    deep_outputs: dict[tuple[int, int], Any] = field(default_factory=dict)
    """Output of every deep block (by block index and slot) in the last call that ran it."""
    deep_batch: dict[int, int] = field(default_factory=dict)
    """Batch size of the call (by slot) whose deep outputs are cached."""


class SADAEngine:
    """Plans and records one sampling call at a time.

    ``policy`` plans each step (:func:`~.planner.plan_step`); a study passes its own to change the decision
    without touching the engine."""

    def __init__(self, config: SADAConfig, policy: PlanningPolicy = plan_step) -> None:
        self.config = config
        self.policy = policy
        self.run: SamplingRun | None = None
        self._no_run_stats = SADAStats()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, solver: ODECoordinates) -> None:
        """Forget everything from earlier calls; a new run of ``solver.num_steps`` steps begins."""
        criterion = self.config.criterion
        if criterion == "published" and not _supports_published_criterion(solver):
            # The audio presets use the published criterion; on a scheduler it cannot read (no training betas,
            # e.g. EDM or flow matching) the run keeps going with ours rather than failing half-way.
            logger.warning(
                "SADA: criterion 'published' needs a scheduler with training betas and an epsilon or v model; "
                "%s has none, so this run uses criterion 'consistent'",
                type(getattr(solver, "scheduler", None)).__name__,
            )
            criterion = "consistent"
        bounds = self.config.bounds(solver.num_steps)
        self.run = SamplingRun(
            solver=solver,
            criterion=criterion,
            bounds=bounds,
            phase=LagrangePhase(self.config, bounds),
            stats=SADAStats(num_steps=solver.num_steps),
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        logger.debug("SADA run of %d steps, bounds %s", solver.num_steps, bounds)

    @property
    def running(self) -> bool:
        return self.run is not None

    @property
    def stats(self) -> SADAStats:
        """Statistics of the last (or current) sampling call."""
        return self._no_run_stats if self.run is None else self.run.stats

    # -- denoiser side -----------------------------------------------------------------------------

    def mode(self) -> StepMode:
        """Mode of the current step (the denoiser call about to happen)."""
        return StepMode.FULL if self.run is None else self.run.plan.mode

    def reconstructed_output(self) -> torch.Tensor | None:
        """The model output that replaces the current step's call, if the step is skipped."""
        return None if self.run is None else self.run.reconstructed

    def fall_back(self, why: str) -> None:
        """The current step runs as a full model call instead of its plan (``why``: for the log)."""
        run = self.run
        if run.plan.mode is StepMode.SKIPPED:
            run.stats.fallbacks += 1
            logger.warning("SADA: %s at step %d, running the model instead", why, run.step)
        run.plan, run.reconstructed = Plan(StepMode.FULL, run.plan.is_anchor, Reason.FALL_BACK), None

    def begin_model_call(self, latent_hw: tuple[int, int]) -> None:
        """A denoiser call of the current step is about to run on a latent with token grid ``latent_hw``."""
        run = self.run
        first_in_step = run.step != run.last_call_step
        run.slot = 0 if first_in_step else run.slot + 1
        run.last_call_step = run.step
        if first_in_step or latent_hw != run.grid:
            # Kept-token indices are drawn once per step and level, and shared by every call of the step.
            run.kept = {}
        run.grid = latent_hw
        run.stats.model_calls += 1

    def kept_tokens(self, level: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Sorted indices (on ``device``) of the grid tokens a block at ``level`` computes in the current
        step, or None for all tokens. With ``config.kept_tokens`` their number is fixed per level."""
        config, run = self.config, self.run
        if (
            run.plan.mode is not StepMode.PRUNED
            or not config.prunes_level(level, run.grid)
            or run.token_momentum is None
            or run.grid is None
        ):
            return None
        if level not in run.kept:
            grid = level_grid(run.grid, level)
            budget = None if config.kept_tokens is None else max(1, round(config.kept_tokens * grid[0] * grid[1]))
            kept = kept_token_indices(
                run.token_momentum, grid, config.sx, config.sy, config.max_fix, run.generator, budget
            )
            run.stats.sparsity.record(run.step, level, grid, run.grid, kept)
            # One copy per step and level; the blocks then index on the model's device without host syncs.
            run.kept[level] = kept.to(device) if device is not None else kept
        return run.kept[level]

    def count_tokens(self, computed: int, total: int, pruned: bool) -> None:
        """A token block computed ``computed`` of its ``total`` tokens; ``pruned``: only its kept ones."""
        stats = self.run.stats
        stats.tokens_computed += computed
        stats.tokens_total += total
        self.run.pruned_in_step |= pruned

    # -- solver side ---------------------------------------------------------------------------

    def after_step(self, model_output: torch.Tensor, sample: torch.Tensor, next_sample: torch.Tensor) -> None:
        """Record step ``n`` (output fed to the solver, state before and after) and plan step ``n+1``."""
        run = self.run
        solver, n = run.solver, run.step
        executed = run.plan
        if executed.mode is StepMode.PRUNED and not run.pruned_in_step:
            # every token block ran in full (no kept tokens or caches fit): the step refreshed the caches
            executed = Plan(StepMode.FULL, executed.is_anchor, Reason.FALL_BACK)

        with torch.no_grad():
            # One float32 copy of each state: fp16 / bf16 pipelines keep full-precision ODE bookkeeping.
            state, next_state = sample.float(), next_sample.float()
            a_now, t_now = solver.ode_time(n)
            output = model_output.float()
            gradient = solver.to_gradient(output, state, n)
            z_now = state / a_now
            x0_now = z_now - t_now * gradient
            # What the step executed, recorded once: the stats, the phase and the limits all read it.
            anchors = run.phase.record(n, executed.mode, t_now, x0_now)
            run.limits.record(n, executed.mode)
            run.stats.record(n, executed, anchors)
            run.history.push(t_now, gradient, x0_now)
            if run.criterion == "published":
                # As published, a skipped step's gradient reads the last model output actually computed
                # (the skipped call returned it) at the current state, not the reconstruction.
                if executed.mode is not StepMode.SKIPPED or run.last_called_output is None:
                    run.last_called_output = output
                run.history.published.appendleft(self._published_gradient(run.last_called_output, z_now, n))
            run.step = n + 1
            run.plan, run.reconstructed, run.pruned_in_step = Plan(StepMode.FULL), None, False
            if run.step >= solver.num_steps:
                return
            a_next, t_next = solver.ode_time(run.step)
            # The criterion is computed only where planning reads it: on a GPU it is most of the engine's
            # cost per step. Once computed, it is reused by the token selection and the reconstruction.
            verdict = functools.cache(lambda: self._stability(next_state / a_next, z_now, a_next, t_next))
            self._plan_next(verdict, next_state, a_next, t_next)

    def _plan_next(
        self, verdict: Callable[[], Stability], next_state: torch.Tensor, a_next: float, t_next: float
    ) -> None:
        """Plan step ``run.step`` with the policy; ``verdict()``: the stability criterion on the step just made."""
        run, config = self.run, self.config
        step = run.step
        if config.tokenwise and len(run.history) == 3 and run.bounds.accelerated(step):
            # Token maps are tiny (H x W); selection runs on the CPU whatever the model's device.
            run.token_momentum = verdict().token_momentum().cpu()
        inputs = PlanInputs(
            step=step,
            bounds=run.bounds,
            config=config,
            phase=run.phase,
            limits=run.limits,
            known_gradients=len(run.history),
            stable=lambda: verdict().stable,
        )
        run.plan = self.policy(inputs)
        if run.plan.mode is StepMode.SKIPPED:
            x0 = self._reconstruct_data_prediction(verdict, next_state, a_next, t_next)
            run.reconstructed = run.solver.from_data_prediction(x0, next_state, step)

    def _published_gradient(self, output: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
        solver = self.run.solver
        scheduler = solver.scheduler
        _, t = solver.ode_time(n)
        alpha = 1.0 / math.sqrt(1.0 + t * t)
        beta = float(scheduler.betas[int(scheduler.timesteps[n])])
        prediction_type = scheduler.config.prediction_type
        return published_gradient(output, z, prediction_type, beta, solver.num_steps, alpha, t * alpha)

    def _stability(self, z_next: torch.Tensor, z_now: torch.Tensor, a_next: float, t_next: float) -> Stability:
        """The configured criterion's verdict on the step just made (``z``: scaled states)."""
        run = self.run
        history = run.history
        if run.criterion == "published":
            _, t_now = run.solver.ode_time(run.step - 1)
            return published_stability(
                z_next,
                z_now,
                list(history.published),
                run.solver.num_steps,
                alpha_now=1.0 / math.sqrt(1.0 + t_now * t_now),
                alpha_next=1.0 / math.sqrt(1.0 + t_next * t_next),
                scale_next=a_next,
            )
        verdict = stability(z_next, z_now, list(history.gradients), list(history.times), t_next)
        if run.criterion == "data_change":
            newest, previous = history.data_predictions
            verdict.decided = relative_change(newest, previous) <= self.config.change_threshold
        return verdict

    def _reconstruct_data_prediction(
        self, verdict: Callable[[], Stability], next_state: torch.Tensor, a_next: float, t_next: float
    ) -> torch.Tensor:
        """Data prediction ``x0 = z - t * y`` of the skipped next step."""
        run = self.run
        if run.phase.in_phase(run.step):
            return run.phase.extrapolate(t_next)
        z_next = next_state / a_next
        ys, times = list(run.history.gradients), list(run.history.times)
        reconstruction = self.config.reconstruction
        if reconstruction == "extrapolate" and run.solver.stochastic:
            # Extrapolating noisy gradients amplifies the injected noise (unstable on the analytic
            # model); the multistep-predicted state is noise-free and measured best there.
            reconstruction = "predicted_state"
        if reconstruction == "predicted_state":
            return verdict().predicted_state - t_next * ys[0]
        if reconstruction == "reuse":
            return z_next - t_next * ys[0]
        return z_next - t_next * extrapolate_gradient(ys, times, t_next)


def _supports_published_criterion(solver: ODECoordinates) -> bool:
    """The published formula needs the training betas and a noise or v prediction."""
    scheduler = getattr(solver, "scheduler", None)
    prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    return getattr(scheduler, "betas", None) is not None and prediction_type in ("epsilon", "v_prediction")
