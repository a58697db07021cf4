"""Solver adapters: read an unmodified diffusers scheduler's ODE quantities.

Every supported sampler integrates the probability-flow ODE, which we write in one coordinate
system for all of them: the scaled state ``z = x / a`` moves in the solver time ``t`` along

    dz/dt = y,        with the data prediction  x0 = z - t * y.

For variance-preserving models (DDIM, DPM-Solver++) ``a = alpha``, ``t = sigma / alpha`` and ``y``
is the noise prediction; for sigma-parameterised samplers (Euler, EDM, Stable Audio's cosine
DPM-Solver) ``a = 1`` and ``t = sigma``; flow matching (Flux: ``x = (1 - s) x0 + s noise``, the
model predicts the velocity ``noise - x0``) is the variance-preserving case ``alpha = 1 - s``,
``sigma = s``, with ``x0 = x - s * v``. In these coordinates DDIM (and flow-matching Euler) is
exactly Euler's method, so the stability criterion and the reconstructions are solver-agnostic.

Each adapter only says where state ``n`` sits (``a_n``, ``t_n``) and how the model's output maps to
the data prediction at that step (``x0 = c_skip * x + c_out * output``); the conversions between
model outputs and ODE gradients are shared.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import UnsupportedSchedulerError


class SolverAdapter:
    """Base class; subclasses implement :meth:`ode_time` and :meth:`preconditioning`."""

    scheduler_classes: tuple[str, ...] = ()
    stochastic_classes: tuple[str, ...] = ()
    """Schedulers among ``scheduler_classes`` that inject fresh noise in every step (SDE samplers)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.num_steps = len(scheduler.timesteps)
        self.stochastic = type(scheduler).__name__ in self.stochastic_classes

    @classmethod
    def matches(cls, scheduler: Any) -> bool:
        return type(scheduler).__name__ in cls.scheduler_classes

    @classmethod
    def check(cls, scheduler: Any) -> None:
        """Raise :class:`UnsupportedSchedulerError` for configurations that are not an ODE SADA can drive."""
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise UnsupportedSchedulerError(
                f"prediction_type {prediction_type!r} is not supported; use epsilon, v_prediction or sample"
            )
        algorithm = getattr(scheduler.config, "algorithm_type", None)
        if algorithm is not None and algorithm not in ("dpmsolver++", "dpmsolver"):
            raise UnsupportedSchedulerError(
                f"DPM-Solver algorithm_type {algorithm!r} is stochastic; use dpmsolver++ (the ODE solver)"
            )

    def ode_time(self, n: int) -> tuple[float, float]:
        """``(a_n, t_n)`` of the state at step ``n``; ``n == num_steps`` is the final state."""
        raise NotImplementedError

    def preconditioning(self, n: int) -> tuple[float, float]:
        """``(c_skip, c_out)`` such that the data prediction at step ``n`` is ``c_skip*x + c_out*output``."""
        raise NotImplementedError

    def _prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
        c_skip, c_out = self.preconditioning(n)
        return c_skip * sample + c_out * model_output

    def to_gradient(self, model_output: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
        """ODE gradient ``y_n = dz/dt`` at step ``n`` from the (guided) model output."""
        a, t = self.ode_time(n)
        return (sample / a - self.data_prediction(model_output, sample, n)) / t

    def from_data_prediction(self, x0: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
        """The model output that makes the scheduler see data prediction ``x0`` at step ``n``."""
        c_skip, c_out = self.preconditioning(n)
        return (x0 - c_skip * sample) / c_out


def _vp_preconditioning(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    """Data prediction of a variance-preserving model, x = alpha * x0 + sigma * eps."""
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    return 0.0, 1.0


class DDIMAdapter(SolverAdapter):
    """DDIM (deterministic, eta = 0): Euler's method in (z, t)."""

    scheduler_classes = ("DDIMScheduler",)

    def _alpha_sigma(self, n: int) -> tuple[float, float]:
        scheduler = self.scheduler
        if n < self.num_steps:
            alpha_bar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[n])])
        else:
            # The state after the last step sits where DDIM's final update puts it.
            last = int(scheduler.timesteps[-1])
            previous = last - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            alpha_bar = float(scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod)
        return math.sqrt(alpha_bar), math.sqrt(max(1.0 - alpha_bar, 0.0))

    def ode_time(self, n: int) -> tuple[float, float]:
        alpha, sigma = self._alpha_sigma(n)
        return alpha, sigma / alpha

    def preconditioning(self, n: int) -> tuple[float, float]:
        return _vp_preconditioning(self._prediction_type(), *self._alpha_sigma(n))


class DPMSolverMultistepAdapter(SolverAdapter):
    """DPM-Solver++ multistep (any order) and UniPC: their ``sigmas`` already are the VP solver time
    sigma / alpha. UniPC's corrector refines the state with the model output at that state, so the output
    SADA reconstructs for a skipped step feeds the corrector too, as a real call's would."""

    scheduler_classes = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")

    def _alpha_sigma(self, n: int) -> tuple[float, float]:
        vp_time = float(self.scheduler.sigmas[n])
        alpha = 1.0 / math.sqrt(vp_time**2 + 1.0)
        return alpha, vp_time * alpha

    def ode_time(self, n: int) -> tuple[float, float]:
        return self._alpha_sigma(n)[0], float(self.scheduler.sigmas[n])

    def preconditioning(self, n: int) -> tuple[float, float]:
        return _vp_preconditioning(self._prediction_type(), *self._alpha_sigma(n))


class EulerDiscreteAdapter(SolverAdapter):
    """Euler on sigma (with or without Karras sigmas): x = x0 + sigma * eps, model input rescaled."""

    scheduler_classes = ("EulerDiscreteScheduler",)

    def ode_time(self, n: int) -> tuple[float, float]:
        return 1.0, float(self.scheduler.sigmas[n])

    def preconditioning(self, n: int) -> tuple[float, float]:
        sigma = float(self.scheduler.sigmas[n])
        prediction_type = self._prediction_type()
        if prediction_type == "epsilon":
            return 1.0, -sigma
        if prediction_type == "v_prediction":
            return 1.0 / (sigma**2 + 1.0), -sigma / math.sqrt(sigma**2 + 1.0)
        return 0.0, 1.0


class EDMAdapter(SolverAdapter):
    """EDM-preconditioned samplers on ``sigma``; the scheduler's own ``precondition_outputs`` gives c_skip, c_out.

    ``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler`` (its ``dpmsolver++`` ODE variant) and
    ``CosineDPMSolverMultistepScheduler``, the scheduler Stable Audio Open ships. The latter is always
    an SDE (sde-dpmsolver++ with a Brownian-tree noise sampler seeded from the generator) and it is
    the only diffusers scheduler with the timestep conditioning that model was trained on, so SADA
    drives it rather than refusing it. A skipped step never touches the noise: the unmodified
    scheduler still draws its Brownian increment and gets a reconstructed data prediction, rebuilt
    from the multistep-predicted state (noise-free) instead of extrapolated noisy gradients. On the
    analytic model the step-wise criterion did not fire on the noisy states, the skips came from the
    Lagrange phase, and they cost more accuracy than simply running as few steps: on an SDE, a skipped
    step leaves that step's injected noise undenoised (BENCHMARKS.md, "Measurements the code refers to").
    """

    scheduler_classes = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", "CosineDPMSolverMultistepScheduler")
    stochastic_classes = ("CosineDPMSolverMultistepScheduler",)

    @classmethod
    def check(cls, scheduler: Any) -> None:
        super().check(scheduler)
        if scheduler.config.prediction_type == "sample":
            raise UnsupportedSchedulerError(
                f"{type(scheduler).__name__} supports epsilon or v_prediction, not 'sample'"
            )

    def ode_time(self, n: int) -> tuple[float, float]:
        return 1.0, float(self.scheduler.sigmas[n])

    def preconditioning(self, n: int) -> tuple[float, float]:
        sigma = self.scheduler.sigmas[n]
        one, zero = torch.ones(()), torch.zeros(())
        c_skip = float(self.scheduler.precondition_outputs(one, zero, sigma))
        c_out = float(self.scheduler.precondition_outputs(zero, one, sigma))
        return c_skip, c_out


class FlowMatchEulerAdapter(SolverAdapter):
    """Flow matching (Flux): ``x = (1 - s) x0 + s noise``, the model predicts the velocity ``v = noise - x0``.

    The scheduler's Euler step ``x + (s_next - s) v`` is exactly DDIM for the variance-preserving
    model ``alpha = 1 - s``, ``sigma = s``, so we read it in the same coordinates as DDIM:
    ``a = 1 - s``, ``t = s / (1 - s)``; the data prediction is ``x0 = x - s v`` and the ODE gradient
    is the predicted noise ``x + (1 - s) v``. A skipped step's velocity is rebuilt from that
    gradient extrapolated linearly in ``t``. Reading the sampler instead as Euler in ``t = s`` with
    ``a = 1`` (gradient = velocity, so extrapolation is the published ``2 v_n - v_{n-1}`` rule for
    uneven steps) describes the same sampler, but the criterion and the reconstructions are less
    accurate there (measured on the analytic flow model: BENCHMARKS.md, "Measurements the code refers to").
    """

    scheduler_classes = ("FlowMatchEulerDiscreteScheduler",)
    # The first state is pure noise (s = 1, a = 0); it is read just below it so that every
    # quantity stays finite. Its gradient only enters the criterion before acceleration starts.
    _max_sigma = 1.0 - 1e-6

    @classmethod
    def check(cls, scheduler: Any) -> None:
        if getattr(scheduler.config, "stochastic_sampling", False):
            raise UnsupportedSchedulerError(
                "FlowMatchEulerDiscreteScheduler with stochastic_sampling=True re-noises every step; "
                "SADA needs the ODE sampler (stochastic_sampling=False)"
            )
        if getattr(scheduler.config, "invert_sigmas", False):
            raise UnsupportedSchedulerError("FlowMatchEulerDiscreteScheduler with invert_sigmas=True is not supported")

    def _sigma(self, n: int) -> float:
        return min(float(self.scheduler.sigmas[n]), self._max_sigma)

    def ode_time(self, n: int) -> tuple[float, float]:
        sigma = self._sigma(n)
        return 1.0 - sigma, sigma / (1.0 - sigma)

    def preconditioning(self, n: int) -> tuple[float, float]:
        return 1.0, -float(self.scheduler.sigmas[n])


SOLVER_ADAPTERS: tuple[type[SolverAdapter], ...] = (
    DDIMAdapter,
    EulerDiscreteAdapter,
    EDMAdapter,
    DPMSolverMultistepAdapter,
    FlowMatchEulerAdapter,
)


def supported_schedulers() -> list[str]:
    return [name for adapter in SOLVER_ADAPTERS for name in adapter.scheduler_classes]


def _adapter_class(scheduler: Any) -> type[SolverAdapter]:
    """The adapter class of ``scheduler``; raises a clear error for what SADA cannot drive."""
    for adapter_cls in SOLVER_ADAPTERS:
        if adapter_cls.matches(scheduler):
            break
    else:
        raise UnsupportedSchedulerError(
            f"SADA does not support {type(scheduler).__name__}; supported schedulers: "
            f"{', '.join(supported_schedulers())}"
        )
    adapter_cls.check(scheduler)
    return adapter_cls


def check_scheduler(scheduler: Any) -> None:
    """Raise before sampling starts if SADA cannot drive ``scheduler``."""
    _adapter_class(scheduler)


def solver_adapter_for(scheduler: Any) -> SolverAdapter:
    """The adapter of ``scheduler``, whose timesteps must be set for the current call."""
    return _adapter_class(scheduler)(scheduler)


def check_step_arguments(kwargs: dict[str, Any]) -> None:
    """Reject the stochastic variants that are switched on per call of ``scheduler.step``."""
    if float(kwargs.get("eta", 0.0) or 0.0) != 0.0:
        raise UnsupportedSchedulerError("DDIM with eta > 0 is stochastic; SADA needs the ODE sampler (eta=0)")
    if float(kwargs.get("s_churn", 0.0) or 0.0) > 0.0:
        raise UnsupportedSchedulerError("stochastic Euler (s_churn > 0) is not an ODE solver; use s_churn=0")
    if kwargs.get("per_token_timesteps") is not None:
        raise UnsupportedSchedulerError("per-token timesteps are not supported by SADA; pass one timestep per step")
