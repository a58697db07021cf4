"""Every private part of diffusers, transformers and tomesd that sada_audio relies on, in one place.

Each entry says what it reaches into, why there is no public way, and the versions it was checked on.
``pyproject.toml`` admits only the versions checked here (diffusers >= 0.42.1, transformers >= 5.24), and CI
tests those: a release that renames one of these names fails here, with an ``AttributeError`` or
``ImportError`` that names it, instead of silently taking another branch.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

__all__ = [
    "HOOK_REGISTRY_ATTRIBUTE",
    "attention_classes",
    "clap_embedding",
    "current_cache_context",
    "delete_hook_registry",
    "encode_prompt_alone",
    "execution_device",
    "has_block_metadata",
    "hook_registry",
    "is_stateful",
    "new_cache_context",
    "registered_hook",
    "repair_clap",
    "repair_language_model",
    "tome_arguments",
    "transformer_block_lists",
]

# -- diffusers hooks (checked on diffusers 0.42.1) -------------------------------------------------------------

# HookRegistry.check_if_exists_or_initialize keeps the registry on the module under this name; diffusers offers
# no accessor that does not create one.
HOOK_REGISTRY_ATTRIBUTE = "_diffusers_hook"


def hook_registry(module: nn.Module) -> HookRegistry | None:
    """The module's diffusers hook registry, None when it has none (never creates one)."""
    return getattr(module, HOOK_REGISTRY_ATTRIBUTE, None)


def registered_hook(module: nn.Module, name: str) -> ModelHook | None:
    """The hook registered on ``module`` as ``name``, None when there is none (or no registry)."""
    registry = hook_registry(module)
    return None if registry is None else registry.get_hook(name)


def delete_hook_registry(module: nn.Module) -> None:
    """Take the (empty) registry off the module: diffusers leaves it there after its last hook is removed."""
    delattr(module, HOOK_REGISTRY_ATTRIBUTE)


def is_stateful(hook: ModelHook) -> bool:
    """Whether ``reset_state`` means anything for ``hook`` (the class flag ``ModelHook._is_stateful``, which
    ``HookRegistry.reset_stateful_hooks`` reads; there is no public one)."""
    return hook._is_stateful


def current_cache_context(manager: Any) -> Any:
    """The cache context a hook's ``StateManager`` is in, None outside one.

    ``StateManager`` exposes the context only through a property that raises outside one; the attribute is
    ``_context`` in diffusers 0.42.1 (it was ``_current_context`` in 0.35 - 0.37, below our lower bound).
    """
    return manager._context


def new_cache_context(name: str) -> Any:
    """A cache context named ``name``, as a pipeline's ``denoiser.cache_context(name)`` would set (for
    denoisers without that method, such as Stable Audio's DiT)."""
    from diffusers.hooks.hooks import CacheContext

    return CacheContext(name)


def attention_classes() -> tuple[type, ...]:
    """The module classes diffusers' Pyramid Attention Broadcast hooks (``hooks._common._ATTENTION_CLASSES``)."""
    from diffusers.hooks._common import _ATTENTION_CLASSES

    return _ATTENTION_CLASSES


def transformer_block_lists() -> tuple[str, ...]:
    """The child names under which First Block Cache looks for a denoiser's transformer blocks
    (``hooks._common._ALL_TRANSFORMER_BLOCK_IDENTIFIERS``)."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return _ALL_TRANSFORMER_BLOCK_IDENTIFIERS


def has_block_metadata(block_class: type) -> bool:
    """Whether First Block Cache knows where ``block_class`` takes and returns its hidden states
    (``hooks._helpers.TransformerBlockRegistry``, which raises ValueError for an unknown class)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        TransformerBlockRegistry.get(block_class)
    except ValueError:
        return False
    return True


# -- diffusers pipelines (checked on diffusers 0.42.1) ---------------------------------------------------------


def execution_device(pipe: Any) -> torch.device:
    """Where the pipeline runs its models: ``DiffusionPipeline._execution_device`` (with CPU offloading that is
    not ``pipe.device``; diffusers has no public name for it), else ``pipe.device``."""
    return getattr(pipe, "_execution_device", None) or pipe.device


def encode_prompt_alone(pipe: Any, text: str, device: torch.device) -> torch.Tensor:
    """The embedding MusicLDM / AudioLDM compute for ``text`` alone, shape ``(1, dim)``: their
    ``_encode_prompt(prompt, device, num_waveforms_per_prompt, do_classifier_free_guidance)``, the step of
    ``__call__`` that has no public entry point."""
    return pipe._encode_prompt(text, device, 1, False)


# -- transformers 5 repairs of diffusers' audio pipelines (checked on transformers 5.24.0, diffusers 0.42.1) --

# Marks methods installed here, so that a repair is idempotent.
_REPAIRED = "__sada_repaired__"
# Number of GPT-2 states AudioLDM 2 generates (the released checkpoints' ``max_new_tokens``).
_AUDIOLDM2_MAX_NEW_TOKENS = 8


def clap_embedding(result: Any) -> Any:
    """The projected, normalised embedding tensor of a CLAP ``get_text_features`` / ``get_audio_features`` result:
    transformers 5 returns an output object holding it in ``pooler_output``; a tensor is returned as it is (a
    repaired model, or transformers 4). Anything else is returned unchanged."""
    if isinstance(result, torch.Tensor):
        return result
    pooled = getattr(result, "pooler_output", None)
    return pooled if isinstance(pooled, torch.Tensor) else result


def _tensor_returning(method_name: str) -> Any:
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # call the class's method, so that a deep copy of the module calls itself, not the original
        return clap_embedding(getattr(type(self), method_name)(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = method_name
    method.__doc__ = f"``{method_name}`` returning the embedding tensor (repaired by sada_audio)."
    setattr(method, _REPAIRED, True)
    return method


def repair_clap(module: nn.Module) -> bool:
    """Make ``module.get_text_features`` / ``get_audio_features`` return the embedding tensor again (MusicLDM
    calls ``.to()`` on it); on the instance only. Returns whether anything changed."""
    changed = False
    for method_name in ("get_text_features", "get_audio_features"):
        current = getattr(module, method_name, None)
        if current is None or getattr(current, _REPAIRED, False):
            continue
        if not callable(getattr(type(module), method_name, None)):
            continue  # an instance-only attribute we do not understand: leave it alone
        setattr(module, method_name, types.MethodType(_tensor_returning(method_name), module))
        changed = True
    return changed


def _update_kwargs_for_next_state(
    self: nn.Module, outputs: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """Bookkeeping after one GPT-2 step in ``generate_language_model``: keep the cache, grow the mask."""
    cache = getattr(outputs, "cache", None)
    if cache is None:
        cache = getattr(outputs, "past_key_values", None)
    # The pipeline's own input preparation reads the cache under the old name ``past_key_values``;
    # transformers 5.24 maps that keyword onto ``cache`` (deprecated until 5.40).
    model_kwargs["past_key_values"] = cache
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return model_kwargs


setattr(_update_kwargs_for_next_state, _REPAIRED, True)


def repair_language_model(module: nn.Module) -> bool:
    """Give AudioLDM 2's ``GPT2Model`` the ``_update_model_kwargs_for_generation`` that its
    ``generate_language_model`` calls (a ``GenerationMixin`` method GPT2Model lost in transformers 5), and the
    ``max_new_tokens`` it reads from the config; on the instance only. Returns whether anything changed."""
    changed = False
    if not hasattr(module, "_update_model_kwargs_for_generation"):
        module._update_model_kwargs_for_generation = types.MethodType(_update_kwargs_for_next_state, module)
        changed = True
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "max_new_tokens", None) is None:
        # the pipeline reads its default number of generated states from the model config
        config.max_new_tokens = _AUDIOLDM2_MAX_NEW_TOKENS
        changed = True
    return changed


# -- tomesd (checked on tomesd 0.1.3) --------------------------------------------------------------------------


def tome_arguments(denoiser: nn.Module) -> dict[str, Any]:
    """The settings ``tomesd.apply_patch`` stores on the patched model (``_tome_info["args"]``), where its random
    generator lives; tomesd has no setter for it."""
    return denoiser._tome_info["args"]
