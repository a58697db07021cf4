"""Attach SADA to a diffusers pipeline, and remove it again, without modifying diffusers objects.

Five attachments, all undone by :meth:`SADAHandle.remove`:
- a diffusers ``ModelHook`` on the denoiser: runs the model, or answers a skipped step with the
  reconstructed output;
- a ``ModelHook`` on every transformer block (with token-wise sparsity): on pruned steps it computes
  only the selected tokens and fills the others from the block's cached residual;
- a ``ModelHook`` on every block below a UNet's outermost level (with shallow steps): on a shallow
  step it returns its output of the last call that ran it instead of running;
- a ``ModelHook`` on every module that only feeds the denoiser (a ControlNet): skipped with it;
- instance-level wrappers of the scheduler's ``set_timesteps`` (a new call starts: reset all state)
  and ``step`` (feed a skipped step's reconstruction to the unmodified solver, then let the engine
  read the step's ODE quantities).

The hooks share the engine's :class:`~.method.engine.SamplingRun`, new at every sampling call; the handle
reads each model call's plan in eager Python and sets every hook's part in it before the denoiser runs.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from .config import SADAConfig, level_grid
from .errors import SADAError, UnsupportedModelError
from .hooks import register_hook, remove_hook
from .method.engine import PlanningPolicy, SADAEngine, SADAStats, SamplingRun, StepMode
from .method.planner import plan_step
from .models import DenoiserLayout, ModelAdapter, TokenBlock, model_adapter_for
from .solvers import SolverAdapter, check_scheduler, check_step_arguments, solver_adapter_for

logger = logging.getLogger(__name__)

_HOOK_NAME = "sada"
_SCHEDULER_METHODS = ("set_timesteps", "step")


# What a token block does in the current model call. The hooks' decisions are made in eager Python before the
# denoiser runs (see ``SADAHandle._prepare_blocks``); inside the denoiser, which ``torch.compile`` may trace,
# a block reads only these small constants and tensors, so a compiled denoiser gets one graph for full calls
# and one for pruned calls, whatever the step.
_OFF = 0  # no sampling run: the plain block
_FULL = 1  # every token, nothing cached (a level SADA never prunes)
_FULL_STORE = 2  # every token, residual cached for later pruned calls
_PRUNE = 3  # the kept tokens only, the others from the cached residual
_REUSE = 4  # a deep block on a shallow step: its cached output, not run


class _DenoiserHook(ModelHook):
    def __init__(self, handle: SADAHandle) -> None:
        super().__init__()
        self.handle = handle

    # Only the denoiser's own forward is left to dynamo. This frame is skipped (recursive=False: the forward it
    # calls is still compiled when the caller compiles), and the decisions before and after the call run with
    # dynamo disabled altogether: they branch on Python state and tensor values, and traced they would cost a
    # recompilation per step kind and graph breaks; here they cost the compiled graph nothing.
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        replaced = handle._before_model_call(args, kwargs)
        if replaced is not None:
            return replaced
        output = self.fn_ref.original_forward(*args, **kwargs)
        handle.end_model_call()
        return output


class _FeederHook(ModelHook):
    """A module whose output only feeds the denoiser (a ControlNet): on a skipped step the denoiser's
    output is rebuilt without reading it, so the module is not run and its last output stands in."""

    def __init__(self, handle: SADAHandle, index: int) -> None:
        super().__init__()
        self.handle = handle
        self.index = index

    @torch.compiler.disable(recursive=False)  # as for the denoiser: only the module's own forward is compiled
    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        last = self.handle._feeder_stand_in(self.index)
        if last is not None:
            return last
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.handle.engine.run.feeder_outputs[self.index] = output
        return output


class _TokenBlockHook(ModelHook):
    """Runs inside the denoiser, so possibly traced by dynamo: no engine state, no tensor-valued branching,
    only the per-call plan that :meth:`SADAHandle._prepare_blocks` set (``action``, ``kept``, ``cache_in``).
    Its results (``cache_out``, token counts, whether it pruned) are attributes the handle collects after the
    call."""

    def __init__(self, handle: SADAHandle, block: TokenBlock, index: int) -> None:
        super().__init__()
        self.level = block.level
        self.layout = block.layout
        self.index = index
        self.action = _OFF
        self.kept: torch.Tensor | None = None
        self.grid_tokens = 0
        """Tokens of the grid the kept indices index (a block holding another number runs in full)."""
        self.cache_in: torch.Tensor | None = None
        self.cache_out: torch.Tensor | None = None
        self.computed = 0
        self.total = 0
        self.pruned = False

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward, layout, action = self.fn_ref.original_forward, self.layout, self.action
        if action == _OFF:
            return forward(*args, **kwargs)
        by_name = len(args) == 0  # (dynamo cannot trace ``not`` on a tuple)
        hidden_states = kwargs["hidden_states"] if by_name else args[0]
        rest = args[1:]
        prefix = layout.prefix_tokens
        tokens = hidden_states[:, prefix:]
        num_tokens = tokens.shape[1]
        kept, cache = self.kept, self.cache_in
        self.total = num_tokens
        if (
            action != _PRUNE
            or kept is None
            or cache is None
            or cache.shape != tokens.shape
            or num_tokens != self.grid_tokens
            or not layout.prunable(rest, kwargs)
        ):
            output = forward(*args, **kwargs)
            if action != _FULL:
                self.cache_out = layout.hidden_output(output)[:, prefix:] - tokens
            self.computed = num_tokens
            return output
        kept_tokens = tokens.index_select(1, kept)
        pruned = torch.cat([hidden_states[:, :prefix], kept_tokens], dim=1) if prefix else kept_tokens
        kwargs = layout.pruned_kwargs(kwargs, kept)
        output = forward(*rest, **{**kwargs, "hidden_states": pruned}) if by_name else forward(pruned, *rest, **kwargs)
        computed = layout.hidden_output(output)
        # Skipped tokens keep their current input plus the block's last computed residual. Out of place, so
        # that a compiled denoiser mutates none of its inputs (CUDA graphs would be refused otherwise).
        cache = cache.index_copy(1, kept, computed[:, prefix:] - kept_tokens)
        self.cache_out = cache
        self.computed = kept.shape[0]
        self.pruned = True
        merged = tokens + cache
        if prefix:
            merged = torch.cat([computed[:, :prefix], merged], dim=1)
        return layout.with_hidden_output(output, merged)


class _DeepBlockHook(ModelHook):
    """A block below a UNet's outermost level. Like a token block it may be traced, and reads only its per-call
    plan: ``_FULL_STORE`` runs it and leaves its output in ``cache_out``; ``_REUSE`` returns ``cache_in``, the
    output of the last call that ran it, so that nothing inside it runs. The UNet's own forward then carries
    the cached deep features to the outermost up block, which recomputes the outer level on fresh input."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.action = _OFF
        self.cache_in: Any = None
        self.cache_out: Any = None

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.action == _REUSE:
            return self.cache_in
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.action == _FULL_STORE:
            self.cache_out = output
        return output


def _own_copy(value: Any) -> Any:
    """A block output (a tensor or nested tuples of them) in memory of our own where a CUDA-graph replay would
    reuse its memory."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_cuda else value
    return tuple(_own_copy(item) for item in value)


class SADAHandle:
    """SADA attached to one denoiser and scheduler; ``remove()`` restores them exactly.

    Use :func:`apply_sada` for pipelines; the constructor is the lower-level entry for a custom
    sampling loop (a denoiser module called once per step, then the scheduler's ``step``). ``policy`` plans
    every step (:func:`~.method.planner.plan_step`) and ``solver_adapter`` reads each run's scheduler
    (:func:`~.solvers.solver_adapter_for`); a study passes its own (``evaluation/policies.py``).
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
        deep_blocks: Sequence[nn.Module] = (),
        policy: PlanningPolicy = plan_step,
        solver_adapter: Callable[[Any], SolverAdapter] = solver_adapter_for,
    ) -> None:
        if hasattr(denoiser, "_sada_handle"):
            raise SADAError("SADA is already applied to this model; call remove() on the first handle")
        if config.shallow != "off" and not deep_blocks:
            raise SADAError(
                f"shallow={config.shallow!r} needs a UNet's deep blocks to reuse ({type(denoiser).__name__} has "
                "none); use shallow='off'"
            )
        check_scheduler(scheduler)
        self.config = config
        self.engine = SADAEngine(config, policy)
        # How each sampling run reads its scheduler's ODE quantities; a study may pass another reading of the
        # same sampler (the flow-matching reading in ``tools/family_nfe.py --analytic``).
        self._solver_adapter = solver_adapter
        self._denoiser = denoiser
        self._owner = scheduler_owner
        self._scheduler: Any = None
        self._layout = layout or DenoiserLayout()
        self._input_name = next(iter(inspect.signature(denoiser.forward).parameters), "sample")
        self._block_hooks: list[_TokenBlockHook] = []
        self._deep_hooks: list[_DeepBlockHook] = []
        # (module, whether its hook registry was created for SADA)
        self._hooked: list[tuple[nn.Module, bool]] = []
        self._register(denoiser, _DenoiserHook(self))
        for index, feeder in enumerate(feeders):
            self._register(feeder, _FeederHook(self, index))
        if config.tokenwise:
            for index, block in enumerate(blocks):
                hook = _TokenBlockHook(self, block, index)
                self._register(block.module, hook)
                self._block_hooks.append(hook)
        if config.shallow != "off":
            for index, module in enumerate(deep_blocks):
                deep_hook = _DeepBlockHook(index)
                self._register(module, deep_hook)
                self._deep_hooks.append(deep_hook)
        self._wrap_scheduler(scheduler)
        denoiser._sada_handle = self
        self._removed = False

    @property
    def stats(self) -> SADAStats:
        """Statistics of the last (or current) sampling call."""
        return self.engine.stats

    @property
    def run(self) -> SamplingRun | None:
        """State of the current (or last) sampling call, for inspection: its step, plan, token grid and caches."""
        return self.engine.run

    def set_token_momentum(self, momentum: torch.Tensor) -> None:
        """Let ``momentum`` (one value per latent-grid token, unstable where >= 0) instead of the criterion's
        map pick the tokens the current step's pruned calls recompute; call it before the step's first denoiser
        call. For studies that price or test a pruned call outside a sampling trajectory, where the criterion
        has no history to read (``evaluation/policies.py``); sampling never calls it."""
        self._sync_scheduler().run.token_momentum = momentum

    @torch.compiler.disable
    def _before_model_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Plan the denoiser call about to run: the wrapped output that replaces it on a skipped step, or None
        after planning every token block's part in the real call."""
        engine = self._sync_scheduler()
        # The latent is the first argument, whether passed by position or by name.
        sample = args[0] if args else kwargs[self._input_name]
        grid = self._layout.latent_grid(sample, kwargs)
        replacement = self._replacement()
        if replacement is not None:
            repeats, remainder = divmod(sample.shape[0], replacement.shape[0])
            if remainder == 0:
                engine.run.grid = grid  # (the scheduler wrapper maps the step's output with it)
                # Every guidance branch gets the same output, so the pipeline's guidance
                # arithmetic returns it unchanged; the scheduler wrapper uses it directly anyway.
                output = replacement.to(sample.dtype).repeat(repeats, *([1] * (replacement.dim() - 1)))
                return self._layout.wrap_output(output, kwargs.get("return_dict", True))
            engine.fall_back("a batch the reconstruction does not divide")
        self.begin_model_call(grid, sample.device, sample.shape[0])
        return None

    def begin_model_call(
        self, grid: tuple[int, int], device: torch.device | str | None = None, batch: int | None = None
    ) -> None:
        """A denoiser call on a latent with token grid ``grid`` (and ``batch`` rows) is about to run (the
        denoiser hook says so; tests and benches that call blocks directly say it themselves): plan every
        token block's and deep block's part; :meth:`end_model_call` collects their results."""
        self.end_model_call()
        self.engine.begin_model_call(grid)
        self._prepare_blocks(device)
        self._prepare_deep_blocks(batch)

    def _prepare_blocks(self, device: torch.device | str | None) -> None:
        """Set what every token block does in this call: the decisions a traced block must not make."""
        # Pipelines that call the denoiser twice per step (Flux's true CFG) get one cache per call of the step.
        engine, run = self.engine, self.engine.run
        for hook in self._block_hooks:
            kept = engine.kept_tokens(hook.level, device)
            cache = run.block_caches.get((hook.index, run.slot))
            if kept is not None and cache is not None:
                hook.action, hook.kept, hook.cache_in = _PRUNE, kept, cache
                height, width = level_grid(run.grid, hook.level)
                hook.grid_tokens = height * width
            else:
                caches = engine.config.prunes_level(hook.level, run.grid)
                hook.action, hook.kept, hook.cache_in = (_FULL_STORE if caches else _FULL), None, None

    def _prepare_deep_blocks(self, batch: int | None) -> None:
        """A shallow step reuses every deep block's output of the last call (of the same slot and batch) that
        ran it; without them it runs as a full call, and every other call caches the deep outputs."""
        if not self._deep_hooks:
            return
        engine = self.engine
        run, shallow = engine.run, engine.mode() is StepMode.SHALLOW
        if shallow and (run.deep_batch.get(run.slot) != batch or (0, run.slot) not in run.deep_outputs):
            engine.fall_back("no deep features of this call's batch")
            shallow = False
        for hook in self._deep_hooks:
            if shallow:
                hook.action, hook.cache_in = _REUSE, run.deep_outputs[(hook.index, run.slot)]
            else:
                hook.action, hook.cache_in = _FULL_STORE, None
        if not shallow:
            run.deep_batch[run.slot] = batch

    @torch.compiler.disable
    def end_model_call(self) -> None:
        """Collect what the blocks of the last call left: their new cached residuals and outputs, token counts
        (the denoiser hook calls it after every call; callers of :meth:`begin_model_call` call it themselves)."""
        engine, run = self.engine, self.engine.run
        for hook in self._block_hooks:
            if hook.action == _OFF:
                continue
            if hook.cache_out is not None:
                # A CUDA-graph replay reuses its output memory: keep the residual in memory of our own.
                run.block_caches[(hook.index, run.slot)] = _own_copy(hook.cache_out)
            if hook.total:
                engine.count_tokens(hook.computed, hook.total, hook.pruned)
            hook.action, hook.kept, hook.cache_in, hook.cache_out = _OFF, None, None, None
            hook.computed = hook.total = 0
            hook.pruned = False
        for deep in self._deep_hooks:
            if deep.cache_out is not None:
                run.deep_outputs[(deep.index, run.slot)] = _own_copy(deep.cache_out)
            deep.action, deep.cache_in, deep.cache_out = _OFF, None, None

    def remove(self) -> None:
        """Detach every hook and wrapper; the pipeline behaves exactly as before ``apply_sada``."""
        if self._removed:
            return
        if self.engine.running:
            self.end_model_call()  # the stats then count the last call's tokens
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
            if not engine.running or engine.run.step >= engine.stats.num_steps:
                return step(model_output, timestep, sample, *args, **kwargs)
            check_step_arguments(kwargs)
            replacement = engine.reconstructed_output()
            if replacement is not None:
                model_output = self._layout.from_grid(replacement).to(model_output.dtype)
            result = step(model_output, timestep, sample, *args, **kwargs)
            next_sample = result[0] if isinstance(result, tuple) else result.prev_sample
            to_grid, grid = self._layout.to_grid, engine.run.grid or self._layout.latent_grid(sample, {})
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
        """A new sampling run: fresh engine state, no stand-in outputs or deep features from an earlier run."""
        if self.engine.running:
            self.end_model_call()
        self.engine.start(self._solver_adapter(scheduler))

    @torch.compiler.disable
    def _feeder_stand_in(self, index: int) -> Any:
        """Feeder ``index``'s last output if the current step is skipped (its module need not run), else None."""
        last = self._sync_scheduler().run.feeder_outputs.get(index)
        return last if last is not None and self._replacement() is not None else None

    def _replacement(self) -> torch.Tensor | None:
        """The current step's rebuilt denoiser output (in the denoiser's layout), or None if the model runs.

        A non-finite reconstruction turns the planned skip into a real call.
        """
        replacement = self.engine.reconstructed_output()
        if replacement is None:
            return None
        if not torch.isfinite(replacement).all():
            self.engine.fall_back("non-finite reconstruction")
            return None
        return self._layout.from_grid(replacement)


def apply_sada(pipe: Any, config: SADAConfig | None = None, policy: PlanningPolicy = plan_step) -> SADAHandle:
    """Attach SADA to a diffusers pipeline in place and return its handle.

    With ``config=None`` the preset of the pipeline's family is used. The handle's ``stats``
    describe the last call; ``remove()`` (or leaving a ``with`` block) restores the pipeline.
    ``policy`` plans every step (:func:`~.method.planner.plan_step`; a study passes its own).
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
        deep_blocks=adapter.deep_blocks(),
        policy=policy,
    )
    logger.info("SADA applied to %s (%s preset values)", type(pipe).__name__, adapter.family)
    return handle


def handle_of(pipe: Any) -> SADAHandle | None:
    """The SADA handle attached to ``pipe`` (by :func:`apply_sada`), or None (also for a pipeline SADA does not
    support)."""
    try:
        denoiser = model_adapter_for(pipe).denoiser()
    except UnsupportedModelError:
        return None
    return getattr(denoiser, "_sada_handle", None)
