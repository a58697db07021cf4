"""The stability criterion and the reconstructions, as plain functions of ODE quantities.

Coordinates: the scaled state ``z`` moves in solver time ``t`` with gradient ``y = dz/dt`` (see
``sada_audio.solvers``). Time steps are non-uniform, so every formula takes the actual times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def lagrange_weights(nodes: Sequence[float], at: float) -> list[float]:
    """Weights ``w_j`` with ``sum_j w_j f(nodes[j]) = p(at)`` for the interpolating polynomial ``p``."""
    weights = []
    for j, node_j in enumerate(nodes):
        weight = 1.0
        for m, node_m in enumerate(nodes):
            if m != j:
                weight *= (at - node_m) / (node_j - node_m)
        weights.append(weight)
    return weights


def multistep_weights(times: Sequence[float], t_next: float) -> list[float]:
    """Adams-Bashforth weights for non-uniform steps.

    ``times`` are the nodes ``t_n, t_{n-1}, ...`` (newest first) where gradients are known; the
    returned ``w_j`` satisfy ``z_{n+1} ~= z_n + sum_j w_j y_{n-j}``: the exact integral over
    ``[t_n, t_next]`` of the polynomial interpolating the gradients. For equal steps ``h`` and three
    nodes this is the classic ``h * (23, -16, 5) / 12``.
    """
    weights = []
    for j, node_j in enumerate(times):
        basis = np.poly1d([1.0])
        for m, node_m in enumerate(times):
            if m != j:
                basis *= np.poly1d([1.0, -node_m]) / (node_j - node_m)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(t_next) - antiderivative(times[0])))
    return weights


def second_difference(ys: Sequence[torch.Tensor], times: Sequence[float]) -> torch.Tensor:
    """Curvature ``d2y/dt2`` from three gradients (newest first) by divided differences.

    For equal steps ``h`` this is ``(y_n - 2 y_{n-1} + y_{n-2}) / h^2``: the published curvature up to
    a positive factor, so its sign, the only thing the criterion reads, is unchanged.
    """
    y0, y1, y2 = ys
    t0, t1, t2 = times
    slope_new = (y0 - y1) / (t0 - t1)
    slope_old = (y1 - y2) / (t1 - t2)
    return (slope_new - slope_old) * (2.0 / (t0 - t2))


@dataclass
class Stability:
    """The criterion's verdict after one solver step."""

    predicted_state: torch.Tensor
    """Multistep prediction ``zhat_{n+1}`` of the next scaled state from gradients alone."""
    momentum: torch.Tensor
    """Elementwise ``residual * curvature``; same shape as the latent."""
    decided: bool | None = None
    """The step-wise verdict of a criterion that does not read the momentum's sign (``data_change``)."""

    @property
    def stable(self) -> bool:
        """Step-wise verdict: the next model call may be skipped."""
        if self.decided is not None:
            return self.decided
        return bool(self.momentum.mean() <= 0)

    def token_momentum(self) -> torch.Tensor:
        """Per-token momentum on the latent grid ``(H, W)`` of a ``(B, C, H, W)`` latent.

        Channel mean, then the worst case over the batch: every sample of a batch shares one token set.
        """
        return self.momentum.mean(dim=1).amax(dim=0)


def stability(
    z_next: torch.Tensor,
    z_now: torch.Tensor,
    ys: Sequence[torch.Tensor],
    times: Sequence[float],
    t_next: float,
) -> Stability:
    """Evaluate the criterion once the solver has produced ``z_{n+1}``.

    ``ys`` and ``times`` hold the last three gradients and their times, newest first.
    """
    weights = multistep_weights(times, t_next)
    predicted = z_now + sum(w * y for w, y in zip(weights, ys, strict=True))
    residual = z_next - predicted
    curvature = second_difference(ys, times)
    return Stability(predicted_state=predicted, momentum=residual * curvature)


def published_gradient(
    model_output: torch.Tensor,
    z: torch.Tensor,
    prediction_type: str,
    beta: float,
    num_steps: int,
    alpha: float,
    sigma: float,
) -> torch.Tensor:
    """The published code's ODE gradient ``f_n`` at one step, restated (not our ``y = dz/dt``).

    With ``z`` the scaled state, ``x = alpha * z`` the variance-preserving one, ``beta`` the training beta
    at the step's timestep and ``N`` inference steps: ``f = N * beta / 2 * (eps / sigma - x)`` for
    noise-predicting models and ``f = N * beta / 2 * alpha / sigma * v`` for v-predicting ones (the
    published v branch has no state term). ``f`` is the VP probability-flow gradient in
    *training*-step units, times ``N``.
    """
    scale = 0.5 * beta * num_steps
    if prediction_type == "v_prediction":
        return (scale * alpha / sigma) * model_output
    return (scale / sigma) * model_output - scale * (alpha * z)


#: Weights of the published three-step predictor ``xhat_{n+1} = x_n - delta (5/8 f_n + 3/4 f_{n-1} - 3/8 f_{n-2})``.
PUBLISHED_PREDICTOR_WEIGHTS: tuple[float, float, float] = (0.625, 0.75, -0.375)


def published_stability(
    z_next: torch.Tensor,
    z_now: torch.Tensor,
    fs: Sequence[torch.Tensor],
    num_steps: int,
    alpha_now: float,
    alpha_next: float,
    scale_next: float,
) -> Stability:
    """The published criterion, exactly: scaling, weights and signs of the authors' code.

    ``fs`` are the last three :func:`published_gradient` values, newest first; ``z`` are scaled states
    (``x / a`` in ``sada_audio.solvers``' coordinates), ``alpha_*`` the VP ``alpha`` of the two states and
    ``scale_next`` the sampler's own state scale ``a_{n+1}``. The predictor steps the VP state by
    ``delta = 1 / N``; the residual is taken in the sampler's own state (VP state for DDIM / DPM++,
    sigma-scaled state for Euler), so mean and token map equal the published ones bit for bit in exact
    arithmetic. The curvature is the plain second difference ``f_n - 2 f_{n-1} + f_{n-2}``.
    ``predicted_state`` is the prediction in ``z`` coordinates, so the ``predicted_state`` reconstruction
    with this criterion is the published reconstruction (last output at the predicted state).
    """
    f0, f1, f2 = fs
    w0, w1, w2 = PUBLISHED_PREDICTOR_WEIGHTS
    delta = 1.0 / num_steps
    predicted_vp = alpha_now * z_now - delta * (w0 * f0 + w1 * f1 + w2 * f2)
    predicted = predicted_vp / alpha_next
    residual = scale_next * (z_next - predicted)
    curvature = f0 - 2.0 * f1 + f2
    return Stability(predicted_state=predicted, momentum=residual * curvature)


def relative_change(newer: torch.Tensor, older: torch.Tensor) -> float:
    """``|newer - older| / |newer|`` over the whole tensor (a step-to-step change of a model quantity)."""
    return float((newer - older).norm() / newer.norm().clamp_min(1e-12))


def extrapolate_gradient(ys: Sequence[torch.Tensor], times: Sequence[float], t_next: float) -> torch.Tensor:
    """Gradient at ``t_next`` by linear extrapolation through the two newest gradients."""
    w_new, w_old = lagrange_weights(times[:2], t_next)
    return w_new * ys[0] + w_old * ys[1]


def lagrange_data_prediction(anchor_times: Sequence[float], anchors: Sequence[torch.Tensor], t: float) -> torch.Tensor:
    """Data prediction at solver time ``t`` from the polynomial through the anchors' data predictions.

    The published rule interpolates over step indices; over the solver time it is far more accurate
    on non-uniform (Karras / EDM) schedules and no worse on uniform ones (see the analytic ablation).
    """
    weights = lagrange_weights(anchor_times, t)
    return sum(w * x0 for w, x0 in zip(weights, anchors, strict=True))
