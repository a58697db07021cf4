"""Attaching diffusers ``ModelHook``s to modules and taking them off again without a trace.

diffusers' ``HookRegistry`` stays on a module after its last hook is removed and leaves the module's own
bound ``forward`` behind as an instance attribute; :func:`remove_hook` deletes both when the registry was
created for the hook, so the module is exactly as it was.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from sada_audio._compat import delete_hook_registry, hook_registry

__all__ = ["drop_empty_registry", "pop_bound_forward", "register_hook", "remove_hook"]


def register_hook(module: nn.Module, hook: ModelHook, name: str) -> bool:
    """Register ``hook`` as ``name`` in ``module``'s hook registry (created if missing); return whether the
    registry was created here (pass it to :func:`remove_hook`)."""
    created = hook_registry(module) is None
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    return created


def remove_hook(module: nn.Module, name: str, created_registry: bool) -> None:
    """Remove hook ``name`` from ``module``; a registry created for it (``created_registry``) goes too once
    empty, and so does the bound ``forward`` it leaves."""
    registry = hook_registry(module)
    if registry is None:
        raise ValueError(f"{type(module).__name__} has no hook registry, so no hook {name!r} to remove")
    registry.remove_hook(name, recurse=False)
    if created_registry:
        drop_empty_registry(module)
    else:
        pop_bound_forward(module)


def drop_empty_registry(module: nn.Module) -> None:
    """Delete ``module``'s hook registry if it holds no hook, and the bound ``forward`` left behind."""
    registry = hook_registry(module)
    if registry is not None and not registry.hooks:
        delete_hook_registry(module)
    pop_bound_forward(module)


def pop_bound_forward(module: nn.Module) -> None:
    """Drop a ``forward`` instance attribute that is just the module's own bound ``forward`` (what
    HookRegistry and DeepCache leave behind when they unwrap), restoring plain class lookup."""
    forward = vars(module).get("forward")
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
        del module.__dict__["forward"]
