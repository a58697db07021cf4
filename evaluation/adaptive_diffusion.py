"""AdaptiveDiffusion (Ye et al., NeurIPS 2024): skip a noise prediction when the latent trajectory is smooth.

This is OUR RE-IMPLEMENTATION of the published skipping rule, written for this benchmark from the paper
("Training-Free Adaptive Diffusion with Bounded Difference Approximation Strategy", arXiv 2410.09873) and
the estimator stated in the authors' README (github.com/UniModal4Reasoning/AdaptiveDiffusion); it is not
the authors' code, which ships as modified copies of diffusers pipelines.

The rule. Let ``y_k`` be the latent the denoiser receives at sampling step ``k`` and
``d_k = mean |y_k - y_{k-1}|`` the first-order latent difference. The third-order estimator is the second
difference of ``d``, normalised by the previous first-order difference:

    xi_k = | (d_k + d_{k-2}) / 2 - d_{k-1} | / d_{k-1}      (= |d_k - 2 d_{k-1} + d_{k-2}| / (2 d_{k-1}))

Step ``k`` reuses the last noise prediction (no model call) when ``xi_k <= threshold``, unless
``max_skips`` steps in a row have already been skipped; the first :data:`WARMUP_STEPS` steps always call
the model (the estimator needs four latents). The paper's defaults are ``threshold = 0.01`` and at most 4
consecutive skips. The solver is left untouched: it simply receives the reused prediction.

Differences from the authors' setting, stated so that results are read correctly: the estimator reads the
latent the denoiser *receives* (for DDIM/flow-matching Euler this is the solver's latent itself; for
schedulers that rescale the model input, e.g. EDM's ``c_in``, it is the rescaled latent), and the rule is
applied per sampling step, with one cached prediction per denoiser call of a step (pipelines that call the
model twice per step, e.g. Flux's true CFG, skip or compute both calls together).

Attachment is by composition with unmodified diffusers objects: one diffusers ``ModelHook`` on the
denoiser, removed again by :meth:`AdaptiveDiffusionHandle.remove`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from sada_audio.hooks import register_hook, remove_hook
from sada_audio.models import denoiser_of

from .accelerators import Accelerator, Attachment, DenoiserBench
from .step_watch import StepClock, StepKinds

__all__ = [
    "WARMUP_STEPS",
    "AdaptiveDiffusion",
    "AdaptiveDiffusionHandle",
    "adaptive_diffusion_accelerators",
    "clone_output",
    "third_order_estimate",
]

logger = logging.getLogger(__name__)

#: Steps that always call the model: the estimator needs the latents of four consecutive steps.
WARMUP_STEPS = 4
_HOOK_NAME = "adaptive_diffusion"


def third_order_estimate(latents: list[torch.Tensor]) -> float:
    """``xi`` of the last four latents (see the module docstring); 0 when the trajectory has stopped moving."""
    y0, y1, y2, y3 = (latent.float() for latent in latents[-4:])
    d1, d2, d3 = ((b - a).abs().mean() for a, b in ((y0, y1), (y1, y2), (y2, y3)))
    if float(d2) == 0.0:
        return 0.0 if float(d1) == float(d3) == 0.0 else float("inf")
    return float(((d3 + d1) / 2 - d2).abs() / d2)


def clone_output(output: Any) -> Any:
    """A copy of a denoiser output (tensor, tuple of tensors or a diffusers output dataclass) that the
    pipeline may modify without touching the cache."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(clone_output(item) for item in output)
    if dataclasses.is_dataclass(output):
        return type(output)(**{f.name: clone_output(getattr(output, f.name)) for f in dataclasses.fields(output)})
    return output


class _AdaptiveHook(ModelHook):
    def __init__(self, handle: AdaptiveDiffusionHandle) -> None:
        super().__init__()
        self.handle = handle

    # As SADA's denoiser hook: only the denoiser's own forward is left to a compiler (the benchmark's
    # --compile); the decisions around it branch on Python state and would recompile the graph every call.
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        cached = self._before_call(args, kwargs)
        if cached is not None:
            return cached
        output = self.fn_ref.original_forward(*args, **kwargs)
        self._after_call(output)
        return output

    @torch.compiler.disable
    def _before_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Account for the call and decide it: a copy of the cached output on a skipped step, else None."""
        handle = self.handle
        clock = handle.clock
        if clock.tick(args, kwargs):
            handle.reset()
        call = clock.call_in_step if handle.force is None else 0
        if call == 0:
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            handle.decide(sample)
        cached = handle.outputs.get(call)
        if handle.skipping and cached is not None:
            handle.kinds.record(clock, "skipped")
            return clone_output(cached)
        handle.pending_call = call
        return None

    @torch.compiler.disable
    def _after_call(self, output: Any) -> None:
        handle = self.handle
        handle.outputs[handle.pending_call] = clone_output(output)
        handle.kinds.record(handle.clock, "full")


class AdaptiveDiffusionHandle:
    """AdaptiveDiffusion attached to one denoiser; :meth:`remove` restores it exactly."""

    def __init__(self, denoiser: nn.Module, pipe: Any, threshold: float, max_skips: int) -> None:
        self.threshold = threshold
        self.max_skips = max_skips
        self.clock = StepClock(pipe)
        self.kinds = StepKinds()
        self.latents: list[torch.Tensor] = []
        self.outputs: dict[int, Any] = {}
        self.estimates: list[float] = []
        self.skipping = False
        self.pending_call = 0
        """Index within its step of the model call running now (where its output is cached)."""
        #: "full" / "skipped" forces every call's decision (cost measurement); None follows the rule.
        self.force: str | None = None
        self._consecutive = 0
        self._denoiser = denoiser
        self._created_registry = register_hook(denoiser, _AdaptiveHook(self), _HOOK_NAME)
        self._removed = False

    def reset(self) -> None:
        """Forget the previous run (called when a new one starts)."""
        self.kinds.reset()
        self.latents, self.outputs, self.estimates = [], {}, []
        self.skipping, self._consecutive = False, 0

    def decide(self, sample: torch.Tensor) -> None:
        """Skip or compute the current step, from the latents up to and including ``sample``."""
        self.latents = [*self.latents[-3:], sample.detach().clone()]
        skip = False
        if self.force is not None:
            third_order_estimate((self.latents * 4)[-4:])  # priced, not used
            skip = self.force == "skipped"
        elif self.clock.step >= WARMUP_STEPS and len(self.latents) == 4 and self._consecutive < self.max_skips:
            estimate = third_order_estimate(self.latents)
            self.estimates.append(estimate)
            skip = estimate <= self.threshold
        self.skipping = skip
        self._consecutive = self._consecutive + 1 if skip else 0

    def remove(self) -> None:
        """Take the hook off; the denoiser behaves exactly as before."""
        if self._removed:
            return
        remove_hook(self._denoiser, _HOOK_NAME, self._created_registry)
        self.latents, self.outputs = [], {}
        self._removed = True


class _Attachment(Attachment):
    def __init__(self, handle: AdaptiveDiffusionHandle) -> None:
        self.handle = handle

    def remove(self) -> None:
        self.handle.remove()

    def step_kinds(self) -> list[str]:
        return list(self.handle.kinds.kinds)

    def stats(self) -> dict[str, Any]:
        full = sum(kind == "full" for kind in self.handle.kinds.calls)
        return {"nfe": full, "full_calls": full}  # a skipped step calls no model at all


class AdaptiveDiffusion(Accelerator):
    """AdaptiveDiffusion (our re-implementation of the published rule) at one threshold and skip cap."""

    name = "AdaptiveDiffusion"
    package = None

    def __init__(self, threshold: float, max_skips: int = 4, setting: str | None = None) -> None:
        self.threshold = threshold
        self.max_skips = max_skips
        self.setting = setting or f"delta {threshold:g}, max {max_skips}"

    def attach(self, pipe: Any) -> Attachment:
        return _Attachment(AdaptiveDiffusionHandle(denoiser_of(pipe), pipe, self.threshold, self.max_skips))

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """A full step is one model call with the hook (and the estimator) attached; a skipped step is
        the estimator plus handing back the cached prediction."""
        handle = AdaptiveDiffusionHandle(bench.denoiser, bench.pipe, self.threshold, self.max_skips)
        try:
            handle.force = "full"
            full = bench.time(bench.call)
            handle.force = "skipped"
            skipped = bench.time(bench.call)
        finally:
            handle.remove()
        return {"full": full, "skipped": skipped}


def adaptive_diffusion_accelerators() -> list[AdaptiveDiffusion]:
    """The two settings the benchmark runs, both with the paper's cap of 4 consecutive skips: a conservative
    threshold (0.002) and the paper's default (0.01). How many steps each calls is in BENCHMARKS.md."""
    return [AdaptiveDiffusion(0.002, 4), AdaptiveDiffusion(0.01, 4)]
