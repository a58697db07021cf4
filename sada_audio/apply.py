"""Attach SADA to a diffusers pipeline, and remove it again, without modifying diffusers objects.

Three attachments, all undone by :meth:`SADAHandle.remove`:
- a diffusers ``ModelHook`` on the denoiser: runs the model, or answers a skipped step with the
  reconstructed output;
- a ``ModelHook`` on every transformer block: on pruned steps it computes only the selected tokens
  and fills the others from the block's cached residual;
- a ``ModelHook`` on every module that only feeds the denoiser (a ControlNet): skipped with it;
- instance-level wrappers of the scheduler's ``set_timesteps`` (a new call starts: reset all state)
  and ``step`` (feed a skipped step's reconstruction to the unmodified solver, then let the engine
  read the step's ODE quantities).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from .config import SADAConfig
from .errors import SADAError
from .hooks import register_hook, remove_hook
from .method.engine import SADAEngine, SADAStats
from .models import DenoiserLayout, ModelAdapter, TokenBlock, model_adapter_for
from .solvers import check_scheduler, check_step_arguments, solver_adapter_for

logger = logging.getLogger(__name__)

_HOOK_NAME = "sada"
_SCHEDULER_METHODS = ("set_timesteps", "step")


class _DenoiserHook(ModelHook):
    def __init__(self, handle: SADAHandle) -> None:
        super().__init__()
        self.handle = handle

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        engine = handle._sync_scheduler()
        # The latent is the first argument, whether passed by position or by name.
        sample = args[0] if args else kwargs[handle._input_name]
        handle._grid = handle._layout.latent_grid(sample, kwargs)
        replacement = handle._replacement()
        if replacement is not None:
            repeats, remainder = divmod(sample.shape[0], replacement.shape[0])
            if remainder == 0:
                # Every guidance branch gets the same output, so the pipeline's guidance
                # arithmetic returns it unchanged; the scheduler wrapper uses it directly anyway.
                output = replacement.to(sample.dtype).repeat(repeats, *([1] * (replacement.dim() - 1)))
                return handle._layout.wrap_output(output, kwargs.get("return_dict", True))
            engine.fall_back()
        handle._call_in_step = handle._call_in_step + 1 if engine.step == handle._last_call_step else 0
        handle._last_call_step = engine.step
        engine.begin_model_call(handle._grid)
        return self.fn_ref.original_forward(*args, **kwargs)


class _FeederHook(ModelHook):
    """A module whose output only feeds the denoiser (a ControlNet): on a skipped step the denoiser's
    output is rebuilt without reading it, so the module is not run and its last output stands in."""

    def __init__(self, handle: SADAHandle, index: int) -> None:
        super().__init__()
        self.handle = handle
        self.index = index

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        handle._sync_scheduler()
        last = handle._feeder_outputs.get(self.index)
        if last is not None and handle._replacement() is not None:
            return last
        output = self.fn_ref.original_forward(*args, **kwargs)
        handle._feeder_outputs[self.index] = output
        return output


class _TokenBlockHook(ModelHook):
    def __init__(self, handle: SADAHandle, block: TokenBlock, index: int) -> None:
        super().__init__()
        self.handle = handle
        self.engine = handle.engine
        self.level = block.level
        self.layout = block.layout
        self.index = index

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        engine, forward, layout = self.engine, self.fn_ref.original_forward, self.layout
        by_name = not args
        hidden_states = kwargs["hidden_states"] if by_name else args[0]
        rest = args[1:]
        prefix = layout.prefix_tokens
        tokens = hidden_states[:, prefix:]
        num_tokens = tokens.shape[1]
        kept = engine.kept_tokens(self.level, num_tokens) if engine.running else None
        # Pipelines that call the denoiser twice per step (Flux's true CFG) get one cache per call.
        key = (self.index, self.handle._call_in_step)
        cache = engine.block_caches.get(key)
        if kept is None or cache is None or cache.shape != tokens.shape or not layout.prunable(rest, kwargs):
            output = forward(*args, **kwargs)
            if engine.running and engine.config.prunes_level(self.level, engine.latent_hw):
                engine.block_caches[key] = layout.hidden_output(output)[:, prefix:] - tokens
            engine.count_tokens(num_tokens, num_tokens)
            return output
        kept = kept.to(hidden_states.device)
        kept_tokens = tokens[:, kept]
        pruned = torch.cat([hidden_states[:, :prefix], kept_tokens], dim=1) if prefix else kept_tokens
        kwargs = layout.pruned_kwargs(kwargs, kept)
        output = forward(*rest, **{**kwargs, "hidden_states": pruned}) if by_name else forward(pruned, *rest, **kwargs)
        computed = layout.hidden_output(output)
        # Skipped tokens keep their current input plus the block's last computed residual.
        cache[:, kept] = computed[:, prefix:] - kept_tokens
        engine.count_tokens(int(kept.numel()), num_tokens)
        merged = tokens + cache
        if prefix:
            merged = torch.cat([computed[:, :prefix], merged], dim=1)
        return layout.with_hidden_output(output, merged)


class SADAHandle:
    """SADA attached to one denoiser and scheduler; ``remove()`` restores them exactly.

    Use :func:`apply_sada` for pipelines; the constructor is the lower-level entry for a custom
    sampling loop (a denoiser module called once per step, then the scheduler's ``step``).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler: Any,
        config: SADAConfig,
        blocks: Sequence[TokenBlock] = (),
        layout: DenoiserLayout | None = None,
        feeders: Sequence[nn.Module] = (),
        scheduler_owner: Any = None,
    ) -> None:
        if hasattr(denoiser, "_sada_handle"):
            raise SADAError("SADA is already applied to this model; call remove() on the first handle")
        check_scheduler(scheduler)
        self.config = config
        self.engine = SADAEngine(config)
        self._denoiser = denoiser
        self._owner = scheduler_owner
        self._scheduler: Any = None
        self._layout = layout or DenoiserLayout()
        self._input_name = next(iter(inspect.signature(denoiser.forward).parameters), "sample")
        self._grid: tuple[int, int] | None = None
        self._call_in_step = 0
        self._last_call_step = -1
        self._feeder_outputs: dict[int, Any] = {}
        # (module, whether its hook registry was created for SADA)
        self._hooked: list[tuple[nn.Module, bool]] = []
        self._register(denoiser, _DenoiserHook(self))
        for index, feeder in enumerate(feeders):
            self._register(feeder, _FeederHook(self, index))
        if config.tokenwise:
            for index, block in enumerate(blocks):
                self._register(block.module, _TokenBlockHook(self, block, index))
        self._wrap_scheduler(scheduler)
        denoiser._sada_handle = self
        self._removed = False

    @property
    def stats(self) -> SADAStats:
        """Statistics of the last (or current) sampling call."""
        return self.engine.stats

    def remove(self) -> None:
        """Detach every hook and wrapper; the pipeline behaves exactly as before ``apply_sada``."""
        if self._removed:
            return
        for module, created_registry in self._hooked:
            remove_hook(module, _HOOK_NAME, created_registry)
        self._unwrap_scheduler()
        del self._denoiser._sada_handle
        self._removed = True

    def __enter__(self) -> SADAHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # -- attachments ------------------------------------------------------------------------------

    def _register(self, module: nn.Module, hook: ModelHook) -> None:
        self._hooked.append((module, register_hook(module, hook, _HOOK_NAME)))

    def _wrap_scheduler(self, scheduler: Any) -> None:
        engine = self.engine
        set_timesteps, step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(set_timesteps)
        def set_timesteps_and_reset(*args: Any, **kwargs: Any) -> Any:
            result = set_timesteps(*args, **kwargs)
            self._start(scheduler)
            return result

        @functools.wraps(step)
        def step_with_sada(
            model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
        ) -> Any:
            if not engine.running or engine.step >= engine.stats.num_steps:
                return step(model_output, timestep, sample, *args, **kwargs)
            check_step_arguments(kwargs)
            replacement = engine.reconstructed_output()
            if replacement is not None:
                model_output = self._layout.from_grid(replacement).to(model_output.dtype)
            result = step(model_output, timestep, sample, *args, **kwargs)
            next_sample = result[0] if isinstance(result, tuple) else result.prev_sample
            to_grid, grid = self._layout.to_grid, self._grid or self._layout.latent_grid(sample, {})
            engine.after_step(to_grid(model_output, grid), to_grid(sample, grid), to_grid(next_sample, grid))
            return result

        scheduler.set_timesteps = set_timesteps_and_reset
        scheduler.step = step_with_sada
        self._scheduler = scheduler

    def _unwrap_scheduler(self) -> None:
        for name in _SCHEDULER_METHODS:
            self._scheduler.__dict__.pop(name, None)

    def _sync_scheduler(self) -> SADAEngine:
        """Follow a scheduler swapped on the pipeline after ``apply_sada``, and start lazily."""
        current = getattr(self._owner, "scheduler", self._scheduler)
        if current is not self._scheduler:
            self._unwrap_scheduler()
            self._wrap_scheduler(current)
            self._start(current)
        elif not self.engine.running:
            self._start(current)
        return self.engine

    def _start(self, scheduler: Any) -> None:
        """A new sampling run: fresh engine state, no stand-in outputs from an earlier run."""
        self.engine.start(solver_adapter_for(scheduler))
        self._feeder_outputs.clear()
        self._last_call_step = -1

    def _replacement(self) -> torch.Tensor | None:
        """The current step's rebuilt denoiser output (in the denoiser's layout), or None if the model runs.

        A non-finite reconstruction turns the planned skip into a real call.
        """
        replacement = self.engine.reconstructed_output()
        if replacement is None:
            return None
        if not torch.isfinite(replacement).all():
            self.engine.fall_back()
            return None
        return self._layout.from_grid(replacement)


def apply_sada(pipe: Any, config: SADAConfig | None = None) -> SADAHandle:
    """Attach SADA to a diffusers pipeline in place and return its handle.

    With ``config=None`` the preset of the pipeline's family is used. The handle's ``stats``
    describe the last call; ``remove()`` (or leaving a ``with`` block) restores the pipeline.
    """
    adapter: ModelAdapter = model_adapter_for(pipe)
    config = config if config is not None else SADAConfig.preset(adapter.family)
    if not isinstance(config, SADAConfig):
        raise SADAError(f"config must be a SADAConfig, got {type(config).__name__}")
    handle = SADAHandle(
        adapter.denoiser(),
        pipe.scheduler,
        config,
        blocks=adapter.token_blocks(),
        layout=adapter.layout,
        feeders=adapter.feeder_modules(),
        scheduler_owner=pipe,
    )
    logger.info("SADA applied to %s (%s preset values)", type(pipe).__name__, adapter.family)
    return handle
