"""The peer accelerators ``sada-audio benchmark`` compares SADA against, behind :class:`~.accelerators.Accelerator`.

Each peer is the released package or diffusers feature, attached to an unmodified pipeline and taken off
again exactly (``remove()`` leaves no hook, wrapper or attribute behind):

- DeepCache (``deepcache``): reuses the deep UNet features every ``cache_interval`` steps; UNets only.
- ToMe for SD (``tomesd``): merges similar tokens before the attention of the UNet's transformer blocks.
- Pyramid Attention Broadcast (diffusers): reuses attention outputs across steps in the middle of the run.
- First Block Cache and TaylorSeer (diffusers) and cache-dit's DBCache (``cache-dit``): transformer
  (DiT) backbones only.
- AdaptiveDiffusion: our re-implementation of the published rule, in :mod:`.adaptive_diffusion`.

Step kinds are observed, not assumed: a diffusers ``ModelHook`` on the denoiser (outermost of ours) groups
its calls into sampling steps (:class:`~.step_watch.StepClock`) and asks the method what each call
did (a DeepCache call that ran the UNet's middle block is ``"full"``, one answered from its cache
``"cached"``...). The optional packages are imported only when used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from sada_audio._compat import (
    HOOK_REGISTRY_ATTRIBUTE,
    attention_classes,
    current_cache_context,
    has_block_metadata,
    hook_registry,
    is_stateful,
    new_cache_context,
    registered_hook,
    tome_arguments,
    transformer_block_lists,
)
from sada_audio.hooks import drop_empty_registry, pop_bound_forward, register_hook, remove_hook
from sada_audio.models import denoiser_of

from .accelerators import Accelerator, Attachment, DenoiserBench
from .adaptive_diffusion import adaptive_diffusion_accelerators
from .step_watch import StepClock, StepKinds

__all__ = [
    "CacheDiT",
    "DeepCache",
    "FirstBlockCache",
    "PyramidAttentionBroadcast",
    "TaylorSeer",
    "ToMe",
    "peer_accelerators",
]

logger = logging.getLogger(__name__)

_WATCH_HOOK = "sada_audio_peer_watch"
_CONTEXT_NAME = "sada_audio_peer"
_TRANSFORMER_ONLY = "needs a transformer backbone (DiT); this pipeline has a UNet"
_UNET_ONLY = "needs a UNet backbone; this pipeline has a transformer"


def _missing(module: str, distribution: str) -> str | None:
    """``"pip install X"`` when the optional package cannot be imported, else None."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"pip install {distribution}"
    return None


def _is_unet(denoiser: nn.Module) -> bool:
    """A diffusers UNet (down, mid and up blocks), as opposed to a transformer backbone."""
    return all(hasattr(denoiser, name) for name in ("down_blocks", "mid_block", "up_blocks"))


def _instance_attributes(root: nn.Module) -> dict[int, set[str]]:
    return {id(module): set(vars(module)) for module in root.modules()}


def _drop_new_attributes(root: nn.Module, before: dict[int, set[str]]) -> None:
    """Delete instance attributes a package left on ``root``'s modules (``before``: the names they had)."""
    for module in root.modules():
        for name in set(vars(module)) - before.get(id(module), set()):
            delattr(module, name)


class _Watch(ModelHook):
    """Outermost hook of ours on the denoiser: clock, per-call kind, optional wrapping of the call."""

    def __init__(self, attachment: _WatchedAttachment) -> None:
        super().__init__()
        self.attachment = attachment

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        attachment = self.attachment
        if attachment.clock.tick(args, kwargs):
            attachment.kinds.reset()
            attachment.on_run(args, kwargs)
        output, kind = attachment.call(lambda: self.fn_ref.original_forward(*args, **kwargs))
        attachment.kinds.record(attachment.clock, kind)
        return output


class _WatchedAttachment(Attachment):
    """An attachment whose step kinds come from watching the denoiser's calls."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.denoiser = denoiser_of(pipe)
        self.clock = StepClock(pipe)
        self.kinds = StepKinds()
        self._created_registry = False
        self._removed = False

    def watch(self) -> None:
        """Register the watch hook (call after attaching the method, so that it is outermost)."""
        self._created_registry = register_hook(self.denoiser, _Watch(self), _WATCH_HOOK)
        self._invalidate_registry_cache()

    def _invalidate_registry_cache(self) -> None:
        # diffusers caches which submodules carry hook registries (to set cache contexts); hooks added or
        # removed below the denoiser make that list stale.
        registry = hook_registry(self.denoiser)
        if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
            registry.invalidate_child_registries_cache()

    def unwatch(self) -> None:
        remove_hook(self.denoiser, _WATCH_HOOK, self._created_registry)

    def on_run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A new sampling run starts: reset the method's state where the pipeline does not."""

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        """Run one denoiser call; return its output and the kind of call it was."""
        return forward(), "full"

    def detach(self) -> None:
        """Take the method itself off (after the watch hook, which :meth:`remove` takes off first)."""

    def remove(self) -> None:
        if self._removed:
            return
        # last attached, first removed: the watch hook wraps whatever the method installed
        self.unwatch()
        self.detach()
        self._invalidate_registry_cache()
        self._removed = True

    def step_kinds(self) -> list[str]:
        return list(self.kinds.kinds)

    def stats(self) -> dict[str, Any]:
        """``nfe``: denoiser calls (each runs at least part of the model); ``full_calls``: of them, unabridged."""
        calls = self.kinds.calls
        return {"nfe": len(calls), "full_calls": sum(kind == "full" for kind in calls)}


# -- DeepCache ---------------------------------------------------------------------------------------------


class _DeepCacheAttachment(_WatchedAttachment):
    def __init__(self, pipe: Any, interval: int, branch: int) -> None:
        from DeepCache import DeepCacheSDHelper

        super().__init__(pipe)
        unet = pipe.unet
        self.helper = DeepCacheSDHelper(pipe=pipe)
        self.helper.set_params(cache_interval=interval, cache_branch_id=branch)
        self.helper.enable()
        # The middle block's first resnet runs only when the helper computes the deep branch.
        self._deep_calls = 0
        self._probe = unet.mid_block.resnets[0].register_forward_pre_hook(self._count)
        self.watch()

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._deep_calls += 1

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        before = self._deep_calls
        output = forward()
        return output, "full" if self._deep_calls > before else "cached"

    def detach(self) -> None:
        self._probe.remove()
        self.helper.disable()
        # DeepCache "unwraps" by assigning the bound methods back as instance attributes: drop them.
        for module in self.pipe.unet.modules():
            pop_bound_forward(module)


class DeepCache(Accelerator):
    """DeepCache (Ma et al., CVPR 2024) through ``DeepCacheSDHelper``: a full UNet call every ``interval``
    steps, in between only the shallow branch ``cache_branch_id`` (0: the outermost) on cached deep features."""

    name = "DeepCache"
    package = "deepcache"

    def __init__(self, interval: int, branch: int = 0) -> None:
        self.interval = interval
        self.branch = branch
        self.setting = f"interval {interval}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        missing = _missing("DeepCache", "deepcache")
        if missing:
            return missing
        unet = getattr(pipe, "unet", None)
        if unet is None or not _is_unet(unet) or not _is_unet(denoiser_of(pipe)):
            return _UNET_ONLY
        if unet.mid_block is None or not getattr(unet.mid_block, "resnets", None):
            return "needs a UNet with a middle block"
        return None

    def attach(self, pipe: Any) -> Attachment:
        return _DeepCacheAttachment(pipe, self.interval, self.branch)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """A full call at step 0, then a cached one at step 1 (the helper caches every step between its
        refreshes; for ``interval`` 1 nothing is cached)."""
        attachment = _DeepCacheAttachment(bench.pipe, self.interval, self.branch)
        try:
            full = bench.time(lambda: bench.call(0))
            costs = {"full": full}
            if self.interval > 1:
                costs["cached"] = bench.time(lambda: bench.call(1))
        finally:
            attachment.remove()
        return costs


# -- ToMe for SD ---------------------------------------------------------------------------------------------


class _ToMeAttachment(_WatchedAttachment):
    def __init__(self, pipe: Any, ratio: float, max_downsample: int, seed: int) -> None:
        import tomesd

        super().__init__(pipe)
        self._seed = seed
        self._attributes = _instance_attributes(self.denoiser)
        tomesd.apply_patch(
            self.denoiser,
            ratio=ratio,
            max_downsample=max_downsample,
            sx=2,
            sy=2,
            use_rand=True,
            merge_attn=True,
            merge_crossattn=False,
            merge_mlp=False,
        )
        self.watch()

    def on_run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # tomesd forks its random generator from the global one on first use and keeps it across calls;
        # a seeded generator per run makes each run's random destination tokens reproducible.
        sample = args[0] if args else kwargs["sample"]
        generator = torch.Generator(device=sample.device).manual_seed(self._seed)
        tome_arguments(self.denoiser)["generator"] = generator

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        return forward(), "merged"

    def detach(self) -> None:
        import tomesd

        tomesd.remove_patch(self.denoiser)
        # remove_patch restores the block classes and hooks but leaves _tome_info (and, on current
        # diffusers, the use_ada_layer_norm flags it sets) on the modules.
        _drop_new_attributes(self.denoiser, self._attributes)


class ToMe(Accelerator):
    """ToMe for SD (Bolya & Hoffman, 2023): merges ``ratio`` of the tokens entering self-attention, in the
    transformer blocks at most ``max_downsample`` times below the latent resolution.

    tomesd's default ``max_downsample=1`` is SD's full-resolution level; the audio UNets have no attention
    there (their first level is a plain ``DownBlock2D``), so the default would merge nothing. ``2`` is
    their highest-resolution attention level -- the level ToMe targets by default on SD.
    """

    name = "ToMe"
    package = "tomesd"

    def __init__(self, ratio: float, max_downsample: int = 2, seed: int = 0) -> None:
        self.ratio = ratio
        self.max_downsample = max_downsample
        self.seed = seed
        self.setting = f"ratio {ratio:g}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        missing = _missing("tomesd", "tomesd")
        if missing:
            return missing
        denoiser = denoiser_of(pipe)
        if not _is_unet(denoiser):
            return _UNET_ONLY
        if not any(type(module).__name__ == "BasicTransformerBlock" for module in denoiser.modules()):
            return "needs BasicTransformerBlocks in the UNet (tomesd patches those)"
        return None

    def attach(self, pipe: Any) -> Attachment:
        return _ToMeAttachment(pipe, self.ratio, self.max_downsample, self.seed)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """Every step merges: one kind, a UNet call with the patch on."""
        attachment = _ToMeAttachment(bench.pipe, self.ratio, self.max_downsample, self.seed)
        try:
            merged = bench.time(bench.call)
        finally:
            attachment.remove()
        return {"merged": merged}


# -- Pyramid Attention Broadcast -----------------------------------------------------------------------------

_PAB_HOOK = "pyramid_attention_broadcast"


class _PABAttachment(_WatchedAttachment):
    def __init__(self, pipe: Any, config_kwargs: dict[str, Any]) -> None:
        from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        super().__init__(pipe)
        self._registries_before = {
            id(module) for module in self.denoiser.modules() if hook_registry(module) is not None
        }
        config = PyramidAttentionBroadcastConfig(**config_kwargs, current_timestep_callback=self.timestep)
        apply_pyramid_attention_broadcast(self.denoiser, config)
        self.hooked = [
            (module, hook)
            for module in self.denoiser.modules()
            if (hook := registered_hook(module, _PAB_HOOK)) is not None
        ]
        self.watch()

    def timestep(self) -> float:
        """The current timestep on the 0..1000 scale PAB's ranges use: the scheduler's own timestep when it
        is on that scale (DDPM-style and flow-matching schedulers), else the run's progress mapped onto it
        (EDM-style schedulers, whose timesteps are log-sigmas)."""
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        step = max(self.clock.step, 0)
        if timesteps is not None and len(timesteps) > step:
            value = float(timesteps[step])
            if 1.5 < float(timesteps.max()) <= 1000.5 and float(timesteps.min()) >= 0:
                return value
        return 1000.0 * (1.0 - self.clock.progress)

    def on_run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # The audio pipelines never reset stateful hooks: start every run with empty attention caches.
        for module, hook in self.hooked:
            hook.reset_state(module)

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        caches = [hook.state.cache for _, hook in self.hooked]
        output = forward()
        pairs = zip(caches, self.hooked, strict=True)
        reused = any(old is not None and hook.state.cache is old for old, (_, hook) in pairs)
        return output, "broadcast" if reused else "full"

    def detach(self) -> None:
        for module, _ in self.hooked:
            remove_hook(module, _PAB_HOOK, created_registry=id(module) not in self._registries_before)


class PyramidAttentionBroadcast(Accelerator):
    """Pyramid Attention Broadcast (Zhao et al., 2024) as diffusers implements it: inside the timestep range
    (PAB's published (100, 800)), each self-attention recomputes every ``spatial`` calls and each
    cross-attention every ``cross`` calls, broadcasting its last output in between.

    diffusers classes attention by the module: ``attn2`` of the audio UNets is built as a cross-attention
    (``cross_attention_dim`` set) although MusicLDM / AudioLDM pass no encoder states to it, so there it
    attends over the latent tokens but follows the cross-attention range.
    """

    name = "PAB"
    package = "diffusers"

    def __init__(self, spatial: int = 2, cross: int = 4, timestep_range: tuple[int, int] = (100, 800)) -> None:
        self.config_kwargs = {
            "spatial_attention_block_skip_range": spatial,
            "cross_attention_block_skip_range": cross,
            "spatial_attention_timestep_skip_range": timestep_range,
            "cross_attention_timestep_skip_range": timestep_range,
        }
        self.setting = f"self {spatial}, cross {cross}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        try:
            from diffusers import PyramidAttentionBroadcastConfig
        except ImportError:
            return "pip install -U diffusers (this one lacks Pyramid Attention Broadcast)"
        config = PyramidAttentionBroadcastConfig()
        identifiers = (*config.spatial_attention_block_identifiers, *config.cross_attention_block_identifiers)
        import re

        attention = attention_classes()
        for name, module in denoiser_of(pipe).named_modules():
            if isinstance(module, attention) and any(re.search(key, name) for key in identifiers):
                return None
        return "no attention module that diffusers' PAB recognises (block identifiers)"

    def attach(self, pipe: Any) -> Attachment:
        return _PABAttachment(pipe, self.config_kwargs)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """A call that computes every attention, and one that broadcasts every attention PAB hooks."""
        attachment = _PABAttachment(bench.pipe, self.config_kwargs)
        try:
            for _, hook in attachment.hooked:
                hook.timestep_skip_range = (-float("inf"), float("inf"))
            block_ranges = {id(hook): hook.block_skip_range for _, hook in attachment.hooked}

            def with_range(compute_every: int | None) -> Callable[[], None]:
                def call() -> None:
                    for _, hook in attachment.hooked:
                        hook.block_skip_range = compute_every or block_ranges[id(hook)]
                        hook.state.iteration = 1  # never the first call of a run
                    bench.call()

                return call

            full = bench.time(with_range(1))
            broadcast = bench.time(with_range(10**9))
        finally:
            attachment.remove()
        return {"full": full, "broadcast": broadcast}


# -- transformer-only caches: First Block Cache, TaylorSeer (diffusers), DBCache (cache-dit) ----------------


class _ContextAttachment(_WatchedAttachment):
    """Runs the call inside a diffusers cache context when the pipeline sets none: Stable Audio's pipeline
    does not (and its DiT has no ``cache_context``); Flux's sets ``"cond"`` / ``"uncond"`` itself."""

    state_managers: list[Any]

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        if current_cache_context(self.state_managers[0]) is not None:
            output = forward()
            return output, self.kind()
        context = new_cache_context(_CONTEXT_NAME)
        for manager in self.state_managers:
            manager.set_context(context)
        try:
            output = forward()
            return output, self.kind()
        finally:
            for manager in self.state_managers:
                manager.set_context(None)

    def kind(self) -> str:
        return "full"

    hook_names: tuple[str, ...] = ()
    hooked: list[nn.Module]

    def on_run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Neither audio pipeline resets stateful hooks between runs; resetting drops the cache context the
        # pipeline may have set for this call, so it is put back.
        contexts = [current_cache_context(manager) for manager in self.state_managers]
        for module in self.hooked:
            for name in self.hook_names:
                hook = registered_hook(module, name)
                if hook is not None and is_stateful(hook):
                    hook.reset_state(module)
        for manager, context in zip(self.state_managers, contexts, strict=True):
            manager.set_context(context)

    def detach(self) -> None:
        """Remove the method's hooks, then the hook registries it created (and their forward attributes)."""
        for module in self.hooked:
            for name in self.hook_names:
                registry = hook_registry(module)
                if registry is not None:
                    registry.remove_hook(name, recurse=False)
        for module in self.denoiser.modules():
            if module is self.denoiser or HOOK_REGISTRY_ATTRIBUTE in self._attributes[id(module)]:
                continue
            drop_empty_registry(module)


_FBC_HOOKS = ("fbc_leader_block_hook", "fbc_block_hook")


class _FBCAttachment(_ContextAttachment):
    hook_names = _FBC_HOOKS

    def __init__(self, pipe: Any, threshold: float) -> None:
        from diffusers import FirstBlockCacheConfig
        from diffusers.hooks import apply_first_block_cache

        super().__init__(pipe)
        self._attributes = _instance_attributes(self.denoiser)
        apply_first_block_cache(self.denoiser, FirstBlockCacheConfig(threshold=threshold))
        self.hooked = [
            module
            for module in self.denoiser.modules()
            if any(registered_hook(module, name) is not None for name in _FBC_HOOKS)
        ]
        leader = next(hook for m in self.hooked if (hook := registered_hook(m, _FBC_HOOKS[0])) is not None)
        self.state_manager = leader.state_manager
        self.state_managers = [self.state_manager]
        self.watch()

    def kind(self) -> str:
        return "full" if self.state_manager.get_state().should_compute else "cached"


def _transformer_reason(pipe: Any) -> str | None:
    denoiser = denoiser_of(pipe)
    return _TRANSFORMER_ONLY if _is_unet(denoiser) else None


class FirstBlockCache(Accelerator):
    """First Block Cache (ParaAttention; diffusers' ``apply_first_block_cache``): when the first block's
    residual changed by less than ``threshold`` (relative mean absolute difference) since the last full
    call, the remaining blocks are skipped and their cached residual is added instead."""

    name = "First Block Cache"
    package = "diffusers"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.setting = f"threshold {threshold:g}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        try:
            from diffusers.hooks import apply_first_block_cache  # noqa: F401
        except ImportError:
            return "pip install -U diffusers (this one lacks First Block Cache)"
        reason = _transformer_reason(pipe)
        if reason:
            return reason
        block_lists = transformer_block_lists()
        blocks = [
            block
            for name, child in denoiser_of(pipe).named_children()
            if name in block_lists and isinstance(child, nn.ModuleList)
            for block in child
        ]
        if len(blocks) < 2:
            return "needs at least two transformer blocks"
        for block in blocks:
            if not has_block_metadata(type(block)):
                return f"diffusers' First Block Cache has no block metadata for {type(block).__name__}"
        return None

    def attach(self, pipe: Any) -> Attachment:
        return _FBCAttachment(pipe, self.threshold)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """A full call (threshold -1: always recompute) and a cached one (threshold +inf after a first call)."""
        costs = {}
        for kind, threshold in (("full", -1.0), ("cached", float("inf"))):
            attachment = _FBCAttachment(bench.pipe, threshold)
            try:
                costs[kind] = bench.time(bench.call)
            finally:
                attachment.remove()
        return costs


_TAYLORSEER_HOOK = "taylorseer_cache"
# diffusers' default patterns (``^transformer_blocks.*attn``, matched with re.fullmatch) miss attention
# modules named ``attn1`` / ``attn2`` (Stable Audio's DiT); these also take a numbered suffix.
_TAYLORSEER_ATTENTION = (
    r"^blocks.*attn\d*",
    r"^transformer_blocks.*attn\d*",
    r"^single_transformer_blocks.*attn\d*",
    r"^temporal_transformer_blocks.*attn\d*",
)


class _TaylorSeerAttachment(_ContextAttachment):
    hook_names = (_TAYLORSEER_HOOK,)

    def __init__(self, pipe: Any, config_kwargs: dict[str, Any]) -> None:
        from diffusers import TaylorSeerCacheConfig
        from diffusers.hooks import apply_taylorseer_cache

        super().__init__(pipe)
        self._attributes = _instance_attributes(self.denoiser)
        apply_taylorseer_cache(self.denoiser, TaylorSeerCacheConfig(**config_kwargs))
        self.hooked = [
            module for module in self.denoiser.modules() if registered_hook(module, _TAYLORSEER_HOOK) is not None
        ]
        if not self.hooked:
            raise ValueError("TaylorSeer hooked no module of this denoiser")
        self.state_managers = [registered_hook(m, _TAYLORSEER_HOOK).state_manager for m in self.hooked]
        self.state_manager = self.state_managers[0]
        self.watch()

    def kind(self) -> str:
        state = self.state_manager.get_state()
        return "full" if state.last_update_step == state.current_step else "predicted"


class TaylorSeer(Accelerator):
    """TaylorSeer (Liu et al., 2025; diffusers' ``TaylorSeerCacheConfig``): the attention outputs are computed
    every ``interval`` steps after a warm-up and forecast in between by a Taylor expansion (order
    ``order``) of their past values."""

    name = "TaylorSeer"
    package = "diffusers"

    def __init__(self, interval: int = 5, order: int = 1, warmup: int = 3) -> None:
        self.config_kwargs = {
            "cache_interval": interval,
            "max_order": order,
            "disable_cache_before_step": warmup,
            "taylor_factors_dtype": torch.float32,
            "cache_identifiers": list(_TAYLORSEER_ATTENTION),
        }
        self.setting = f"interval {interval}, order {order}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        try:
            from diffusers import TaylorSeerCacheConfig  # noqa: F401
        except ImportError:
            return "pip install -U diffusers (this one lacks TaylorSeerCacheConfig)"
        return _transformer_reason(pipe)

    def attach(self, pipe: Any) -> Attachment:
        return _TaylorSeerAttachment(pipe, self.config_kwargs)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """A full call (warm-up never ends) and a forecast one (no refresh after the warm-up)."""
        costs = {}
        warmup = 2
        for kind, kwargs in (
            ("full", {"disable_cache_before_step": 10**9}),
            ("predicted", {"disable_cache_before_step": warmup, "cache_interval": 10**9}),
        ):
            attachment = _TaylorSeerAttachment(bench.pipe, {**self.config_kwargs, **kwargs})
            try:
                for _ in range(warmup + 2):  # past the warm-up and the first refresh
                    bench.call()
                costs[kind] = bench.time(bench.call)
            finally:
                attachment.remove()
        return costs


class _CacheDiTAttachment(_WatchedAttachment):
    def __init__(self, pipe: Any, config_kwargs: dict[str, Any]) -> None:
        import cache_dit
        from cache_dit import DBCacheConfig

        super().__init__(pipe)
        self._attributes = _instance_attributes(self.denoiser)
        self._forward_before = "forward" in vars(self.denoiser)
        cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(**config_kwargs))
        self.watch()

    def _cached_steps(self) -> int:
        """Cached steps cache-dit has counted so far in this run, over its contexts (it publishes them on
        the modules only after the whole pipeline call)."""
        manager = getattr(self.denoiser, "_context_manager", None)
        names = getattr(self.denoiser, "_context_names", None) or []
        total = 0
        for name in names if isinstance(names, list | tuple) else [names]:
            try:
                context = manager.get_context(name)
            except Exception:  # noqa: BLE001 -- a context is created on the first call only
                continue
            total += context.get_accumulated_cached_steps() + context.get_cfg_accumulated_cached_steps()
        return total

    def call(self, forward: Callable[[], Any]) -> tuple[Any, str]:
        before = self._cached_steps()
        output = forward()
        return output, "cached" if self._cached_steps() > before else "full"

    def detach(self) -> None:
        import cache_dit

        cache_dit.disable_cache(self.pipe)
        # cache-dit leaves its statistics and the original bound forward as instance attributes.
        _drop_new_attributes(self.denoiser, self._attributes)


class CacheDiT(Accelerator):
    """cache-dit's DBCache: the first ``Fn`` blocks always run; when their residual changed by less than
    ``threshold`` since the last full call, the remaining blocks' cached residual is reused (after
    ``warmup`` full steps)."""

    name = "cache-dit"
    package = "cache-dit"

    def __init__(self, threshold: float = 0.12, fn: int = 1, bn: int = 0, warmup: int = 4) -> None:
        self.config_kwargs = {
            "Fn_compute_blocks": fn,
            "Bn_compute_blocks": bn,
            "residual_diff_threshold": threshold,
            "max_warmup_steps": warmup,
        }
        self.setting = f"F{fn}B{bn}, threshold {threshold:g}"

    def unavailable_reason(self, pipe: Any) -> str | None:
        missing = _missing("cache_dit", "cache-dit")
        if missing:
            return missing
        reason = _transformer_reason(pipe)
        if reason:
            return reason
        from cache_dit import BlockAdapterRegister
        from diffusers import DiffusionPipeline

        # a pipeline, or the transformer alone (a bench); is_supported only matches class names, where
        # get_adapter would already patch the transformer
        target = pipe if isinstance(pipe, DiffusionPipeline) else denoiser_of(pipe)
        if not BlockAdapterRegister.is_supported(target):
            return f"cache-dit has no block adapter for {type(target).__name__}"
        return None

    def attach(self, pipe: Any) -> Attachment:
        return _CacheDiTAttachment(pipe, self.config_kwargs)

    def step_costs(self, bench: DenoiserBench) -> dict[str, float]:
        """cache-dit on the transformer alone (its transformer-only mode): a full call (threshold 0: never
        cache) and a cached one (threshold 1e9 after one warm-up call)."""
        import cache_dit
        from cache_dit import DBCacheConfig

        costs = {}
        for kind, overrides in (
            ("full", {"residual_diff_threshold": 0.0}),
            ("cached", {"residual_diff_threshold": 1e9, "max_warmup_steps": 1}),
        ):
            attributes = _instance_attributes(bench.denoiser)
            cache_dit.enable_cache(bench.denoiser, cache_config=DBCacheConfig(**{**self.config_kwargs, **overrides}))
            try:
                costs[kind] = bench.time(bench.call)
            finally:
                cache_dit.disable_cache(bench.denoiser)
                _drop_new_attributes(bench.denoiser, attributes)
        return costs


def peer_accelerators(pipe: Any = None) -> list[Accelerator]:
    """Every peer at the benchmark's settings, in report order; which of them can run on a pipeline is for
    :meth:`~.accelerators.Accelerator.unavailable_reason` to say (``pipe`` is accepted for symmetry)."""
    return [
        DeepCache(2),
        DeepCache(3),
        DeepCache(5),
        ToMe(0.5),
        ToMe(0.75),
        PyramidAttentionBroadcast(spatial=2, cross=4),
        FirstBlockCache(0.05),
        FirstBlockCache(0.1),
        TaylorSeer(interval=5, order=1),
        CacheDiT(),
        *adaptive_diffusion_accelerators(),
    ]
