"""Per-call SADA state: records the solver's gradients, applies the criterion, plans every step.

The engine is driven by three events that the hooks forward to it: a new sampling run starts
(:meth:`SADAEngine.start`), the denoiser is about to be called (:meth:`plan`), and the solver has
finished a step (:meth:`after_step`). All state lives in one object that is rebuilt at every
call, so two calls with the same seed give the same output.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import SADAConfig, StepBounds
from .criterion import (
    Stability,
    extrapolate_gradient,
    lagrange_data_prediction,
    published_gradient,
    published_stability,
    relative_change,
    stability,
)
from .sparsity_map import SparsityMap
from .tokens import kept_token_indices, level_grid

logger = logging.getLogger(__name__)


class StepMode(enum.StrEnum):
    FULL = "full"
    """A real model call computing every token (refreshes the token caches)."""
    PRUNED = "pruned"
    """A real model call in which transformer blocks compute only the selected tokens."""
    SKIPPED = "skipped"
    """No model call: the solver gets an output rebuilt from its own history."""
    SHALLOW = "shallow"
    """A model call in which only the UNet's outermost level runs, on the deep blocks' cached outputs."""


_MODE_LETTERS = {StepMode.FULL: "f", StepMode.PRUNED: "p", StepMode.SHALLOW: "h", StepMode.SKIPPED: "s"}


def schedule_letters(step_modes: Sequence[str]) -> str:
    """A schedule as one letter per step (``SADAStats.step_modes`` in): f full, p pruned, h shallow, s skipped."""
    return "".join(_MODE_LETTERS[StepMode(mode)] for mode in step_modes)


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
    """Mode of every step in order: "full", "pruned", "shallow" or "skipped"."""
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "model_calls": self.model_calls,
            "skipped_steps": list(self.skipped_steps),
            "pruned_steps": list(self.pruned_steps),
            "shallow_steps": list(self.shallow_steps),
            "step_modes": list(self.step_modes),
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


class SADAEngine:
    """Plans and records one sampling call at a time."""

    def __init__(self, config: SADAConfig) -> None:
        self.config = config
        self.stats = SADAStats()
        self._solver: ODECoordinates | None = None
        self.forced_skips: frozenset[int] | None = None
        """Research hook (the oracle study): skip exactly these steps (where three gradients are known and
        the step lies in ``acc_range``) instead of asking the criterion; kept across runs."""
        self.always_stable = False
        """Research hook (ablations of the reconstructions): the step-wise criterion says "stable" after every
        step, so every step the limits allow (``acc_range``, ``max_interval``, the Lagrange phase's anchors) is
        skipped and the reconstructions are compared on the same steps; kept across runs."""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, solver: ODECoordinates) -> None:
        """Forget everything from earlier calls; a new run of ``solver.num_steps`` steps begins."""
        self.criterion = self.config.criterion
        if self.criterion == "published" and not _supports_published_criterion(solver):
            # The audio presets use the published criterion; on a scheduler it cannot read (no training betas,
            # e.g. EDM or flow matching) the run keeps going with ours rather than failing half-way.
            logger.warning(
                "SADA: criterion 'published' needs a scheduler with training betas and an epsilon or v model; "
                "%s has none, so this run uses criterion 'consistent'",
                type(getattr(solver, "scheduler", None)).__name__,
            )
            self.criterion = "consistent"
        self._solver = solver
        self.bounds: StepBounds = self.config.bounds(solver.num_steps)
        self.step = 0
        self.stats = SADAStats(num_steps=solver.num_steps)
        self._history = _History()
        self._modes: dict[int, StepMode] = {}
        self._reconstructed: dict[int, torch.Tensor] = {}
        self._anchor_times: deque = deque(maxlen=self.config.lagrange_term)
        self._anchors: deque = deque(maxlen=self.config.lagrange_term)
        self._adaptive = self.config.anchor_tolerance is not None and self.bounds.lagrange_step is not None
        # The fixed phase begins at lagrange_step; an adaptive one when the anchor probe allows it.
        self._phase_start: int | None = None if self._adaptive else self.bounds.lagrange_step
        self._next_anchor: int | None = self._phase_start
        self._anchor_interval = self.config.lagrange_int
        self._called: dict[int, tuple[float, torch.Tensor]] = {}
        """Adaptive phase, before it begins: (time, data prediction) of the recent real calls."""
        self._skip_streak = 0
        self._last_called_output: torch.Tensor | None = None
        self._pruned_since_refresh = 0
        self._deep_step = -1
        """Last step whose model call ran the deep blocks (their cached outputs are that old)."""
        self._token_momentum: torch.Tensor | None = None
        self._kept: dict[int, torch.Tensor] = {}
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self.block_caches: dict[tuple[int, int], torch.Tensor] = {}
        """Residual of every pruned-level block's last computation, by (block index, call in step)."""
        self.latent_hw: tuple[int, int] | None = None
        self.call_in_step = 0
        """Index of the current model call within its step (Flux's true CFG calls twice per step)."""
        self._last_call_step = -1
        logger.debug("SADA run of %d steps, bounds %s", solver.num_steps, self.bounds)

    @property
    def running(self) -> bool:
        return self._solver is not None

    def force_plan(self, mode: StepMode, token_momentum: torch.Tensor | None = None) -> None:
        """Override the plan of the current step (diagnostics and benchmarks; sampling never calls it)."""
        self._modes[self.step] = mode
        if token_momentum is not None:
            self._token_momentum = token_momentum
        # A forced plan stands for a new step: the next model call is its first, with freshly drawn tokens.
        self._last_call_step = -1

    # -- denoiser side -----------------------------------------------------------------------------

    def mode(self) -> StepMode:
        """Mode of the current step (the denoiser call about to happen)."""
        return self._modes.get(self.step, StepMode.FULL)

    def reconstructed_output(self) -> torch.Tensor | None:
        """The model output that replaces the current step's call, if the step is skipped."""
        return self._reconstructed.get(self.step) if self.mode() is StepMode.SKIPPED else None

    def fall_back(self) -> None:
        """The planned skip of the current step is replaced by a full model call."""
        self._modes[self.step] = StepMode.FULL
        self._reconstructed.pop(self.step, None)
        self._skip_streak = 0
        self.stats.fallbacks += 1
        logger.warning("SADA: non-finite reconstruction at step %d, running the model instead", self.step)

    def run_in_full(self) -> None:
        """The planned shallow step of the current step runs as a full call (no deep features fit the call)."""
        self._modes[self.step] = StepMode.FULL

    def begin_model_call(self, latent_hw: tuple[int, int]) -> None:
        """A denoiser call of the current step is about to run on a latent with token grid ``latent_hw``."""
        first_in_step = self.step != self._last_call_step
        self.call_in_step = 0 if first_in_step else self.call_in_step + 1
        self._last_call_step = self.step
        if first_in_step or latent_hw != self.latent_hw:
            # Kept-token indices are drawn once per step and level, and shared by every call of the step.
            self._kept = {}
        self.latent_hw = latent_hw
        self.stats.model_calls += 1

    def kept_tokens(self, level: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Sorted indices (on ``device``) of the grid tokens a block at ``level`` computes in the current
        step, or None for all tokens. With ``config.kept_tokens`` their number is fixed per level."""
        config = self.config
        if (
            self.mode() is not StepMode.PRUNED
            or not config.prunes_level(level, self.latent_hw)
            or self._token_momentum is None
            or self.latent_hw is None
        ):
            return None
        if level not in self._kept:
            grid = level_grid(self.latent_hw, level)
            budget = None if config.kept_tokens is None else max(1, round(config.kept_tokens * grid[0] * grid[1]))
            kept = kept_token_indices(
                self._token_momentum, grid, config.sx, config.sy, config.max_fix, self._generator, budget
            )
            self.stats.sparsity.record(self.step, level, grid, self.latent_hw, kept)
            # One copy per step and level; the blocks then index on the model's device without host syncs.
            self._kept[level] = kept.to(device) if device is not None else kept
        return self._kept[level]

    def count_tokens(self, computed: int, total: int) -> None:
        self.stats.tokens_computed += computed
        self.stats.tokens_total += total

    # -- solver side ---------------------------------------------------------------------------

    def after_step(self, model_output: torch.Tensor, sample: torch.Tensor, next_sample: torch.Tensor) -> None:
        """Record step ``n`` (output fed to the solver, state before and after) and plan step ``n+1``."""
        solver, n = self._solver, self.step
        mode = self.mode()
        self._reconstructed.pop(n, None)
        self.stats.step_modes.append(mode.value)
        if mode is StepMode.SKIPPED:
            self.stats.skipped_steps.append(n)
        elif mode is StepMode.PRUNED:
            self.stats.pruned_steps.append(n)
        elif mode is StepMode.SHALLOW:
            self.stats.shallow_steps.append(n)
        if mode is StepMode.FULL or mode is StepMode.PRUNED:
            self._deep_step = n

        with torch.no_grad():
            # One float32 copy of each state: fp16 / bf16 pipelines keep full-precision ODE bookkeeping.
            state, next_state = sample.float(), next_sample.float()
            a_now, t_now = solver.ode_time(n)
            output = model_output.float()
            gradient = solver.to_gradient(output, state, n)
            z_now = state / a_now
            x0_now = z_now - t_now * gradient
            self._lagrange_bookkeeping(n, mode, t_now, x0_now)
            self._history.push(t_now, gradient, x0_now)
            if self.criterion == "published":
                # As published, a skipped step's gradient reads the last model output actually computed
                # (the skipped call returned it) at the current state, not the reconstruction.
                if mode is not StepMode.SKIPPED or self._last_called_output is None:
                    self._last_called_output = output
                self._history.published.appendleft(self._published_gradient(self._last_called_output, z_now, n))
            self.step = n + 1
            if self.step >= solver.num_steps:
                return
            a_next, t_next = solver.ode_time(self.step)
            # The criterion is computed only where planning reads it: on a GPU it is most of the engine's
            # cost per step. Once computed, it is reused by the token selection and the reconstruction.
            verdict = functools.cache(lambda: self._stability(next_state / a_next, z_now, a_next, t_next))
            self._plan_next(verdict, next_state, a_next, t_next)

    def _lagrange_bookkeeping(self, n: int, mode: StepMode, t_now: float, x0_now: torch.Tensor) -> None:
        """After step ``n``: let the anchor probe begin an adaptive phase, record a real call's data prediction
        where it is an anchor (the probe then sets an adaptive phase's next interval), schedule the next anchor."""
        # A shallow step's deeper features are stale: its data prediction neither seeds nor probes anchors.
        called = mode is not StepMode.SKIPPED and mode is not StepMode.SHALLOW
        if self._adaptive and self._phase_start is None and not self._begin_phase(n, called, t_now, x0_now):
            return
        if n != self._next_anchor:
            return
        if called and self._in_phase(n):
            if self._adaptive and n != self._phase_start and self._anchors:
                config = self.config
                within = self._probe(n, self._anchor_times, self._anchors, t_now, x0_now) <= config.anchor_tolerance
                widest = config.max_lagrange_int or config.lagrange_int
                self._anchor_interval = min(self._anchor_interval + 1, widest) if within else config.lagrange_int
            self._anchor_times.append(t_now)
            self._anchors.append(x0_now)
        self._next_anchor = n + self._anchor_interval

    def _begin_phase(self, n: int, called: bool, t_now: float, x0_now: torch.Tensor) -> bool:
        """Whether an adaptive phase begins at step ``n`` (then seeded with the calls the probe read)."""
        bounds = self.bounds
        if called and bounds.accelerated(n) and n >= bounds.lagrange_step:
            nodes = self._probe_nodes(n)
            within = nodes is not None and self._probe(n, *nodes, t_now, x0_now) <= self.config.anchor_tolerance
            if within or n >= bounds.lagrange_latest:
                logger.debug("SADA: adaptive Lagrange phase begins at step %d", n)
                self._phase_start = self._next_anchor = n
                self._called.clear()
                self._anchor_times.extend(nodes[0] if nodes else [])
                self._anchors.extend(nodes[1] if nodes else [])
                return True
        if called:
            self._remember_call(n, t_now, x0_now)
        return False

    def _remember_call(self, n: int, t: float, x0: torch.Tensor) -> None:
        self._called[n] = (t, x0)
        span = self.config.lagrange_term * self.config.lagrange_int
        for old in [step for step in self._called if step <= n - span]:
            del self._called[old]

    def _probe_nodes(self, n: int) -> tuple[list[float], list[torch.Tensor]] | None:
        """The anchors the phase would hold at ``n`` had it begun earlier: the real calls ``lagrange_int`` apart
        before ``n`` (up to ``lagrange_term``, oldest first), or None when the nearest one was not called."""
        steps = [n - k * self.config.lagrange_int for k in range(self.config.lagrange_term, 0, -1)]
        if steps[-1] not in self._called:
            return None
        known = [self._called[step] for step in steps if step in self._called]
        return [t for t, _ in known], [x0 for _, x0 in known]

    def _probe(
        self, n: int, times: Sequence[float], anchors: Sequence[torch.Tensor], t: float, x0: torch.Tensor
    ) -> float:
        """The anchor probe at step ``n``: relative error of the Lagrange extrapolation through ``anchors`` (one
        anchor: kept constant) to the step's data prediction ``x0`` at solver time ``t``."""
        error = relative_change(x0, lagrange_data_prediction(list(times), list(anchors), t))
        logger.debug("SADA: anchor probe at step %d: %.4f", n, error)
        return error

    def _published_gradient(self, output: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
        solver = self._solver
        scheduler = solver.scheduler
        _, t = solver.ode_time(n)
        alpha = 1.0 / math.sqrt(1.0 + t * t)
        beta = float(scheduler.betas[int(scheduler.timesteps[n])])
        prediction_type = scheduler.config.prediction_type
        return published_gradient(output, z, prediction_type, beta, solver.num_steps, alpha, t * alpha)

    def _stability(self, z_next: torch.Tensor, z_now: torch.Tensor, a_next: float, t_next: float) -> Stability:
        """The configured criterion's verdict on the step just made (``z``: scaled states)."""
        history, criterion = self._history, self.criterion
        if criterion == "published":
            _, t_now = self._solver.ode_time(self.step - 1)
            return published_stability(
                z_next,
                z_now,
                list(history.published),
                self._solver.num_steps,
                alpha_now=1.0 / math.sqrt(1.0 + t_now * t_now),
                alpha_next=1.0 / math.sqrt(1.0 + t_next * t_next),
                scale_next=a_next,
            )
        verdict = stability(z_next, z_now, list(history.gradients), list(history.times), t_next)
        if criterion == "data_change":
            newest, previous = history.data_predictions
            verdict.decided = relative_change(newest, previous) <= self.config.change_threshold
        return verdict

    def _in_phase(self, step: int) -> bool:
        return self._phase_start is not None and self.bounds.accelerated(step) and step >= self._phase_start

    def _probing(self, step: int) -> bool:
        """An adaptive phase may begin at ``step``: the anchor probe needs its data prediction, so it is called."""
        return self._adaptive and self._phase_start is None and step >= self.bounds.lagrange_step

    def _plan_next(
        self, verdict: Callable[[], Stability], next_state: torch.Tensor, a_next: float, t_next: float
    ) -> None:
        """Plan step ``self.step``; ``verdict()``: the stability criterion on the step just made."""
        config, step = self.config, self.step
        mode = StepMode.FULL
        # Skipping needs three known gradients (the criterion and the extrapolation read them).
        if len(self._history) == 3 and self.bounds.accelerated(step):
            if config.tokenwise:
                # Token maps are tiny (H x W); selection runs on the CPU whatever the model's device.
                self._token_momentum = verdict().token_momentum().cpu()
            can_skip = config.stepwise and self._skip_streak < config.max_interval
            # Lagrange anchors are computed in full: the extrapolating polynomial amplifies their errors. A step
            # at which an adaptive phase may begin may become its first anchor.
            anchor = (self._in_phase(step) and step == self._next_anchor) or self._probing(step)
            if self.forced_skips is not None:
                if step in self.forced_skips:
                    mode = StepMode.SKIPPED
            elif can_skip and self._in_phase(step):
                if not anchor and len(self._anchors) >= 2:
                    mode = StepMode.SKIPPED
            elif config.shallow != "replace_skips" and can_skip and not self._probing(step) and self._stable(verdict):
                mode = StepMode.SKIPPED
            if mode is StepMode.FULL and not anchor and self._shallow_allowed(step, verdict):
                mode = StepMode.SHALLOW
            if (
                mode is StepMode.FULL
                and not anchor
                and config.tokenwise
                and self._pruned_since_refresh < config.max_interval
            ):
                mode = StepMode.PRUNED
        if mode is StepMode.SKIPPED:
            x0 = self._reconstruct_data_prediction(verdict, next_state, a_next, t_next)
            self._reconstructed[step] = self._solver.from_data_prediction(x0, next_state, step)
        self._skip_streak = self._skip_streak + 1 if mode is StepMode.SKIPPED else 0
        if mode is StepMode.FULL or mode is StepMode.PRUNED:  # (a shallow step leaves the token caches be)
            self._pruned_since_refresh = self._pruned_since_refresh + 1 if mode is StepMode.PRUNED else 0
        self._modes[step] = mode

    def _seeds_anchor(self, step: int) -> bool:
        """Whether the anchor probe at the first step an adaptive phase may begin reads ``step``'s data
        prediction (one of the calls ``lagrange_int`` apart before ``lagrange_step``): such a call is never
        shallow, whose stale deep features would keep the phase from beginning there."""
        first = self.bounds.lagrange_step
        return self._adaptive and first is not None and step < first and (first - step) % self.config.lagrange_int == 0

    def _shallow_allowed(self, step: int, verdict: Callable[[], Stability]) -> bool:
        """Whether ``step``, about to be a real call, may be shallow: its deep features are at most
        ``shallow_max_age`` steps old, it seeds no Lagrange anchor, and with ``shallow="stable"`` (or
        ``"replace_skips"``) the step is one that the criterion (or the late phase's rhythm) calls stable
        but is not skipped (a limit forbids it, or ``"replace_skips"`` runs such steps shallow instead)."""
        config = self.config
        if config.shallow == "off" or step - self._deep_step > config.shallow_max_age or self._seeds_anchor(step):
            return False
        if config.shallow == "accelerated":
            return True
        return self._in_phase(step) or self._stable(verdict)

    def _stable(self, verdict: Callable[[], Stability]) -> bool:
        """The criterion's step-wise verdict (computed only when read), or "stable" under :attr:`always_stable`."""
        return self.always_stable or verdict().stable

    def _reconstruct_data_prediction(
        self, verdict: Callable[[], Stability], next_state: torch.Tensor, a_next: float, t_next: float
    ) -> torch.Tensor:
        """Data prediction ``x0 = z - t * y`` of the skipped next step."""
        if self._in_phase(self.step):
            return lagrange_data_prediction(list(self._anchor_times), list(self._anchors), t_next)
        z_next = next_state / a_next
        ys, times = list(self._history.gradients), list(self._history.times)
        reconstruction = self.config.reconstruction
        if reconstruction == "extrapolate" and self._solver.stochastic:
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
