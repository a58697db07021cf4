"""The accelerators ``sada-audio benchmark`` compares, behind one small interface.

An :class:`Accelerator` is one method at one setting (``DeepCache``, ``interval 3``). It attaches to a
diffusers pipeline and comes off again (:meth:`Accelerator.attach` returns an :class:`Attachment`), and it
prices its own kinds of step on a bare denoiser (:meth:`Accelerator.step_costs`), which is how the real-size
workloads turn a decision schedule measured on the tiny model into an end-to-end speedup.

Step kinds are plain strings: every method has ``"full"`` (an unmodified model call), and names its cheaper
kinds itself (SADA: ``"pruned"``, ``"shallow"``, ``"skipped"``; DeepCache: ``"cached"``; ...). An attachment
reports the kind of every sampling step of the last pipeline call, in order.

SADA and the baseline live here; the peers in :mod:`.peers` and :mod:`.adaptive_diffusion`.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from sada_audio import SADAConfig, SADAHandle, StepMode, apply_sada
from sada_audio.method.engine import SADAEngine
from sada_audio.models import unet_deep_blocks, unet_token_blocks
from sada_audio.solvers import solver_adapter_for

from .policies import ForcedPlan

__all__ = [
    "Accelerator",
    "Attachment",
    "Baseline",
    "DenoiserBench",
    "FewerSteps",
    "SADA",
    "median_time",
    "sada_accelerators",
]


def median_time(
    fn: Callable[[], object],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    setup: Callable[[], object] | None = None,
) -> float:
    """Median time of ``fn()`` on ``clock`` (wall time by default) over ``repeats`` calls, after one untimed
    warm-up call; ``setup``, when given, runs untimed before every call (the warm-up included)."""
    times = []
    for repeat in range(repeats + 1):
        if setup is not None:
            setup()
        start = clock()
        fn()
        if repeat:
            times.append(clock() - start)
    return statistics.median(times)


@dataclass
class DenoiserBench:
    """A bare denoiser with fixed inputs, called as the pipelines call it: ``denoiser(sample, t, **kwargs)``.

    Attributes:
        denoiser: the UNet (random weights at real size: only cost is measured).
        scheduler: a scheduler whose ``set_timesteps(num_steps)`` has been called.
        sample: the (guidance-batched) latent every call gets.
        kwargs: the other keyword arguments of every call (``class_labels``, ``encoder_hidden_states``...).
        repeats: timed calls per measurement (the median is kept).
        clock: ``"wall"``, or ``"process"``: the CPU time of this process, which other processes sharing
            the CPU do not inflate (with one thread, what a call costs; CPU only).
    """

    denoiser: nn.Module
    scheduler: Any
    sample: torch.Tensor
    kwargs: dict[str, Any]
    repeats: int = 5
    step: int = 10
    clock: str = "wall"

    @property
    def pipe(self) -> SimpleNamespace:
        """A pipeline-shaped view (``.unet``, ``.transformer``, ``.scheduler``) for methods that attach to one."""
        return SimpleNamespace(unet=self.denoiser, transformer=self.denoiser, scheduler=self.scheduler)

    def call(self, step: int | None = None) -> Any:
        """One denoiser call at sampling step ``step`` (default :attr:`step`), under ``torch.no_grad``."""
        timestep = self.scheduler.timesteps[self.step if step is None else step]
        with torch.no_grad():
            return self.denoiser(self.sample, timestep, return_dict=False, **self.kwargs)[0]

    def time(self, fn: Callable[[], object], setup: Callable[[], object] | None = None) -> float:
        """Median seconds of ``fn`` (see :func:`median_time`), with ``setup`` untimed before each call, waiting
        for the GPU to finish each."""
        if self.sample.device.type != "cuda":
            clock = time.process_time if self.clock == "process" else time.perf_counter
            return median_time(fn, self.repeats, clock, setup)

        def synchronised(part: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                part()
                torch.cuda.synchronize(self.sample.device)

            return run

        return median_time(synchronised(fn), self.repeats, setup=None if setup is None else synchronised(setup))


class Attachment(ABC):
    """An accelerator attached to one pipeline; :meth:`remove` restores the pipeline exactly."""

    @abstractmethod
    def remove(self) -> None: ...

    @abstractmethod
    def step_kinds(self) -> list[str]:
        """Kind of every sampling step of the last pipeline call, in order."""

    def stats(self) -> dict[str, Any]:
        """Extra per-call statistics worth reporting (SADA: pruned token share)."""
        return {}


class Accelerator(ABC):
    """One acceleration method at one setting."""

    #: Method family as the tables name it ("DeepCache").
    name: str
    #: The setting, short ("interval 3"); empty for methods without one.
    setting: str = ""
    #: PyPI distribution whose version the report states; None for code of this project.
    package: str | None = None
    #: Sampling steps this method runs instead of the benchmark's (a fewer-steps peer, SADA on a shorter base
    #: run); None = the benchmark's steps.
    steps: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.setting})" if self.setting else self.name

    def unavailable_reason(self, pipe: Any) -> str | None:
        """Why this method cannot run on ``pipe`` (one line), or None if it can."""
        return None

    @abstractmethod
    def attach(self, pipe: Any) -> Attachment: ...

    @abstractmethod
    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """Seconds of each kind of step this method takes, on ``bench``'s denoiser; the method is attached
        only while measuring."""


class _NoAttachment(Attachment):
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def remove(self) -> None:
        return None

    def step_kinds(self) -> list[str]:
        return ["full"] * len(self._pipe.scheduler.timesteps)


class _Unmodified(Accelerator):
    """The unmodified pipeline: nothing attaches, every step is a full call."""

    def attach(self, pipe: Any) -> Attachment:
        return _NoAttachment(pipe)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        return {"full": bench.time(bench.call)}


class Baseline(_Unmodified):
    """No acceleration: the reference every speedup and fidelity is measured against."""

    name = "baseline"


class FewerSteps(_Unmodified):
    """The unmodified sampler with fewer steps: the first thing to compare a step-skipping accelerator with.

    Fair only on a grid where every step count starts at the baseline's first timestep; the samplers
    :func:`sada_audio.pipelines.scheduler_from_config` builds use trailing spacing for that (BENCHMARKS.md,
    "Fair fewer-steps peers")."""

    name = "steps"

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.setting = f"{steps} steps"


class _SADAAttachment(Attachment):
    def __init__(self, handle: SADAHandle) -> None:
        self.handle = handle

    def remove(self) -> None:
        self.handle.remove()

    def step_kinds(self) -> list[str]:
        return list(self.handle.stats.step_modes)

    def stats(self) -> dict[str, Any]:
        stats = self.handle.stats
        return {"nfe": stats.model_calls, "pruned_token_share": stats.pruned_fraction, "sada_stats": stats.to_dict()}


class SADA(Accelerator):
    """SADA (this project) with a given configuration."""

    name = "SADA"

    def __init__(self, config: SADAConfig, setting: str, steps: int | None = None) -> None:
        self.config = config
        self.setting = setting if steps is None else f"{setting}, {steps} steps"
        self.steps = steps

    def attach(self, pipe: Any) -> Attachment:
        return _SADAAttachment(apply_sada(pipe, self.config))

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """Full, pruned (with token-wise sparsity) and shallow (with shallow steps) calls with the hooks
        attached, each plus the bookkeeping of one solver step; a skipped step (with step-wise sparsity) costs
        the bookkeeping alone.

        Every priced call is the second step of a fresh run whose first is an untimed full call (see
        :func:`after_full_call`), so a pruned call finds the token caches and a shallow call the deep features of
        the full call before it; each kind is timed by itself, not as a difference of timings. As proof that they
        happen, :attr:`pruned_call_tokens` records the grid tokens the pruned call's blocks computed and had, and
        :attr:`shallow_call_deep_runs` how many deep-block modules ran in a shallow and in a full call."""
        token_momentum = torch.randn(*bench.sample.shape[-2:], generator=torch.Generator().manual_seed(0))
        handle, policy = forced_plan_handle(bench, self.config)
        self.pruned_call_tokens: tuple[int, int] | None = None
        self.shallow_call_deep_runs: tuple[int, int] | None = None

        def after_full(mode: StepMode) -> Callable[[], None]:
            """Untimed before each priced call: the full call, then the plan of the call to price."""
            return functools.partial(after_full_call, handle, policy, bench, mode, token_momentum)

        try:
            full = bench.time(bench.call, setup=after_full(StepMode.FULL))
            costs = {}
            if self.config.tokenwise:
                costs["pruned"] = bench.time(bench.call, setup=after_full(StepMode.PRUNED))
                after_full(StepMode.PRUNED)()
                computed, total = handle.stats.tokens_computed, handle.stats.tokens_total
                bench.call()
                self.pruned_call_tokens = handle.stats.tokens_computed - computed, handle.stats.tokens_total - total
            if self.config.shallow != "off":
                costs["shallow"] = bench.time(bench.call, setup=after_full(StepMode.SHALLOW))
                # the deep blocks themselves are always called (their hooks decide): count the modules inside
                deep_blocks = unet_deep_blocks(bench.denoiser)
                inner = [module for block in deep_blocks for module in block.modules() if module is not block]

                def inner_calls(mode: StepMode) -> int:
                    after_full(mode)()
                    with _counting_calls(inner) as calls:
                        bench.call()
                    return len(calls)

                self.shallow_call_deep_runs = inner_calls(StepMode.SHALLOW), inner_calls(StepMode.FULL)
        finally:
            handle.remove()
        bookkeeping = step_bookkeeping(self.config, bench)
        costs = {"full": full + bookkeeping, **{kind: cost + bookkeeping for kind, cost in costs.items()}}
        if self.config.stepwise:
            costs["skipped"] = bookkeeping
        return costs


def forced_plan_handle(bench: DenoiserBench, config: SADAConfig) -> tuple[SADAHandle, ForcedPlan]:
    """SADA at ``config`` on ``bench``'s UNet and scheduler, with the :class:`ForcedPlan` that plans its steps."""
    policy = ForcedPlan()
    handle = SADAHandle(
        bench.denoiser,
        bench.scheduler,
        config,
        blocks=unet_token_blocks(bench.denoiser),
        deep_blocks=unet_deep_blocks(bench.denoiser),
        policy=policy,
    )
    return handle, policy


def after_full_call(
    handle: SADAHandle,
    policy: ForcedPlan,
    bench: DenoiserBench,
    mode: StepMode,
    token_momentum: torch.Tensor | None = None,
) -> None:
    """Begin a fresh run of ``handle`` (made with ``policy`` on ``bench``'s denoiser and scheduler), make its first
    step an untimed full call that fills the token caches and deep features, and plan the next step as ``mode``
    (``token_momentum``: its kept tokens), so that the next ``bench.call()`` is a call of that kind, priced by
    itself."""
    scheduler = bench.scheduler
    # The wrapped set_timesteps begins the run; the same step count keeps the bench's timesteps.
    scheduler.set_timesteps(len(scheduler.timesteps))
    bench.call()
    policy.next_step(handle, scheduler, mode, bench.sample, token_momentum)


@contextlib.contextmanager
def _counting_calls(modules: list[nn.Module]) -> Iterator[list[nn.Module]]:
    """Every forward call of ``modules`` inside the block, appended to the yielded list."""
    calls: list[nn.Module] = []
    handles = [module.register_forward_pre_hook(lambda module, _: calls.append(module)) for module in modules]
    try:
        yield calls
    finally:
        for hook_handle in handles:
            hook_handle.remove()


def step_bookkeeping(config: SADAConfig, bench: DenoiserBench) -> float:
    """Mean seconds SADA spends per solver step outside the model (gradients, criterion, plan), over a whole
    run of ``bench``'s steps, on states of one guidance branch on the bench's device."""
    generator = torch.Generator().manual_seed(1)
    like = bench.sample[:1]
    samples = [torch.randn(like.shape, generator=generator).to(like) for _ in range(4)]
    engine = SADAEngine(config)
    num_steps = len(bench.scheduler.timesteps)

    def run() -> None:
        engine.start(solver_adapter_for(bench.scheduler))
        for step in range(num_steps - 1):
            engine.after_step(samples[step % 4], samples[(step + 1) % 4], samples[(step + 2) % 4])

    return bench.time(run) / (num_steps - 1)


_SPARSITIES = {
    (True, True): "step-wise + token-wise",
    (True, False): "step-wise only",
    (False, True): "token-wise only",
}


def sada_accelerators(config: SADAConfig, preset: str) -> list[Accelerator]:
    """SADA at ``config`` (named after ``preset``), then the ablations: the same settings with the other
    combinations of step-wise and token-wise sparsity (shallow steps count as step-wise: off without it)."""
    own = (config.stepwise, config.tokenwise)
    return [SADA(config, f"preset {preset}")] + [
        SADA(
            config.replace(stepwise=stepwise, tokenwise=tokenwise, shallow=config.shallow if stepwise else "off"), label
        )
        for (stepwise, tokenwise), label in _SPARSITIES.items()
        if (stepwise, tokenwise) != own
    ]
