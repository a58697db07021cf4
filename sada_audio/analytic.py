"""An analytic diffusion model: Gaussian-mixture data, whose exact denoiser is known in closed form.

Data: every coordinate is drawn independently from ``sum_k w_k N(mean_k, std^2)``. In the ODE
coordinates of ``sada_audio.solvers`` (``z = x0 + t * noise``) the noisy marginal of a coordinate is
``sum_k w_k N(mean_k, std^2 + t^2)``, the posterior mean ``E[x0 | z]`` is a weighted mix of linear
shrinkages, and for a single component the probability-flow ODE has the exact solution
``z(t) = mean + (z(T) - mean) * sqrt((std^2 + t^2) / (std^2 + T^2))``.

Flow matching (Flux, ``FlowMatchEulerDiscreteScheduler``) interpolates ``x_s = (1 - s) x0 + s noise``:
that is the variance-preserving form with ``alpha = 1 - s`` and ``sigma = s``, so ``E[x0 | x_s]`` is the
posterior mean at ``z = x_s / (1 - s)``, ``t = s / (1 - s)``, the velocity is ``(x_s - E[x0 | x_s]) / s``,
and for a single component the flow from noise is ``x_s = (1 - s) mean + sqrt((1 - s)^2 std^2 + s^2) noise``.

:class:`AnalyticDenoiser` answers each diffusers scheduler with the model output it expects
(epsilon or v for variance-preserving models, EDM-preconditioned output for the EDM-style schedulers,
the velocity for flow matching), so tests and the ablation benchmark run the real, unmodified
schedulers on exact model outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class GaussianMixtureData:
    means: tuple[float, ...] = (-1.0, 1.0)
    std: float = 0.3
    weights: tuple[float, ...] | None = None

    def posterior_mean(self, z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | z]`` at solver time ``t`` (elementwise)."""
        z = z.double()
        t2 = torch.as_tensor(t, dtype=torch.float64) ** 2
        variance = self.std**2 + t2
        weights = self.weights or tuple(1.0 / len(self.means) for _ in self.means)
        log_resp = torch.stack(
            [math.log(w) - (z - m) ** 2 / (2 * variance) for m, w in zip(self.means, weights, strict=True)]
        )
        resp = torch.softmax(log_resp, dim=0)
        shrink = self.std**2 / variance
        component_means = torch.stack([m + shrink * (z - m) for m in self.means])
        return (resp * component_means).sum(0)

    def flow_posterior_mean(self, x: torch.Tensor, s: float) -> torch.Tensor:
        """``E[x0 | x_s]`` for the flow-matching interpolation ``x_s = (1 - s) x0 + s noise``."""
        if s >= 1.0 - 1e-9:
            # pure noise: the prior mean
            weights = self.weights or tuple(1.0 / len(self.means) for _ in self.means)
            return torch.full_like(x, sum(w * m for w, m in zip(weights, self.means, strict=True)), dtype=torch.float64)
        return self.posterior_mean(x.double() / (1.0 - s), s / (1.0 - s))

    def exact_flow_solution(self, x_start: torch.Tensor, s_start: float, s_end: float) -> torch.Tensor:
        """Exact flow-matching ODE solution from ``s_start`` to ``s_end``; single-component data only."""
        if len(self.means) != 1:
            raise ValueError("the closed-form ODE solution exists for single-Gaussian data")
        mean, s2 = self.means[0], self.std**2

        def scale(s: float) -> float:
            return math.sqrt((1.0 - s) ** 2 * s2 + s**2)

        noise = (x_start.double() - (1.0 - s_start) * mean) / scale(s_start)
        return (1.0 - s_end) * mean + scale(s_end) * noise

    def exact_solution(self, z_start: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
        """Exact ODE solution from ``t_start`` to ``t_end``; single-component data only."""
        if len(self.means) != 1:
            raise ValueError("the closed-form ODE solution exists for single-Gaussian data")
        mean, s2 = self.means[0], self.std**2
        return mean + (z_start.double() - mean) * math.sqrt((s2 + t_end**2) / (s2 + t_start**2))


class AnalyticDenoiser(nn.Module):
    """Exact denoiser for :class:`GaussianMixtureData` speaking ``scheduler``'s conventions."""

    def __init__(self, data: GaussianMixtureData, scheduler) -> None:
        super().__init__()
        self.data = data
        self.scheduler = scheduler
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        self.log_sigmas = None
        if alphas_cumprod is not None:
            self.log_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod).double().numpy() ** 0.5)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        timestep = float(timestep)
        prediction_type = getattr(self.scheduler.config, "prediction_type", None)
        if type(self.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
            s = timestep / self.scheduler.config.num_train_timesteps
            x0 = self.data.flow_posterior_mean(sample, s)
            return ((sample.double() - x0) / s).to(sample.dtype)
        if hasattr(self.scheduler, "precondition_outputs"):
            # EDM-style schedulers: the input was scaled by c_in = 1 / sqrt(sigma^2 + sigma_data^2) in
            # scale_model_input, which also fixed the step index that locates sigma.
            sigma = float(self.scheduler.sigmas[self.scheduler.step_index])
            sigma_data = self.scheduler.config.sigma_data
            x = sample.double() * math.sqrt(sigma**2 + sigma_data**2)
            x0 = self.data.posterior_mean(x, sigma)
            one, zero = torch.ones(()), torch.zeros(())
            c_skip = float(self.scheduler.precondition_outputs(one, zero, torch.tensor(sigma)))
            c_out = float(self.scheduler.precondition_outputs(zero, one, torch.tensor(sigma)))
            return ((x0 - c_skip * x) / c_out).to(sample.dtype)
        # Variance-preserving model input x = alpha x0 + sigma eps; fractional timesteps (Karras
        # sigmas) map to sigma by log-linear interpolation, as diffusers maps sigma to timesteps.
        vp_time = math.exp(np.interp(timestep, np.arange(len(self.log_sigmas)), self.log_sigmas))
        alpha = 1.0 / math.sqrt(vp_time**2 + 1.0)
        z = sample.double() / alpha
        x0 = self.data.posterior_mean(z, vp_time)
        eps = (z - x0) / vp_time
        if prediction_type == "v_prediction":
            return (alpha * eps - vp_time * alpha * x0).to(sample.dtype)
        return eps.to(sample.dtype)


def run_sampler(
    denoiser: nn.Module, scheduler, noise: torch.Tensor, num_steps: int, seed: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Plain diffusers sampling loop; returns the final sample and every intermediate state.

    ``seed`` seeds the noise of SDE samplers (Stable Audio's cosine DPM-Solver draws its Brownian
    noise from the generator's seed), so that runs are comparable; ODE samplers ignore it.
    """
    step_kwargs = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    scheduler.set_timesteps(num_steps)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    states = [x]
    # flow-matching schedulers take the state as it is (no scale_model_input)
    scale = getattr(scheduler, "scale_model_input", lambda sample, timestep: sample)
    for timestep in scheduler.timesteps:
        model_input = scale(x, timestep)
        x = scheduler.step(denoiser(model_input, timestep), timestep, x, **step_kwargs).prev_sample
        states.append(x)
    return x, states


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def sd_betas_config(prediction_type: str = "epsilon") -> dict:
    """Stable-Diffusion-style scaled-linear betas, as MusicLDM and AudioLDM use."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085 if prediction_type == "epsilon" else 0.0015,
        "beta_end": 0.012 if prediction_type == "epsilon" else 0.0195,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
    }


def scheduler_zoo(prediction_type: str = "epsilon") -> dict[str, object]:
    """One instance of every supported ODE scheduler (the variance-preserving ones on the same betas)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EDMDPMSolverMultistepScheduler,
        EDMEulerScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    config = sd_betas_config(prediction_type)
    return {
        "ddim": DDIMScheduler(**config, set_alpha_to_one=False, steps_offset=1, clip_sample=False),
        "euler": EulerDiscreteScheduler(**config, timestep_spacing="leading", steps_offset=1),
        "euler-karras": EulerDiscreteScheduler(**config, use_karras_sigmas=True),
        "edm": EDMEulerScheduler(prediction_type=prediction_type),
        "dpm++": DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2),
        "dpm++3m": DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=3),
        "unipc": UniPCMultistepScheduler(**config, solver_order=2, predict_x0=True, solver_type="bh2"),
        "edm-dpm++": EDMDPMSolverMultistepScheduler(prediction_type=prediction_type),
        # flow matching has no prediction type: the model always predicts the velocity (SD3 / Flux shift)
        "flow": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def latent_noise(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
