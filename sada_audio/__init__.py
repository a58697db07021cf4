"""sada-audio: training-free SADA acceleration for audio diffusion pipelines.

>>> from sada_audio import SADAConfig, apply_sada
>>> handle = apply_sada(pipe)                      # the preset of the pipeline's family
>>> audio = pipe("slow piano arpeggio in A minor").audios
>>> handle.stats.model_calls, handle.stats.skipped_steps
>>> handle.remove()                                # the pipeline is exactly as before
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import PRESETS, SADAConfig
from .errors import (
    ConfigError,
    ModelNotFoundError,
    SADAError,
    UnsupportedModelError,
    UnsupportedSchedulerError,
)

if TYPE_CHECKING:
    from .apply import SADAHandle, apply_sada, handle_of
    from .method.engine import SADAStats
    from .method.planner import Plan, PlanInputs, Reason, StepMode, plan_step
    from .models import supported_pipelines
    from .solvers import supported_schedulers

# Names that need torch and diffusers are imported on first use, so that ``import sada_audio`` (and the
# command line's --help, --version and argument errors) stays fast.
_LAZY = {
    "SADAHandle": ".apply",
    "apply_sada": ".apply",
    "handle_of": ".apply",
    "SADAStats": ".method.engine",
    "StepMode": ".method.planner",
    "Plan": ".method.planner",
    "PlanInputs": ".method.planner",
    "Reason": ".method.planner",
    "plan_step": ".method.planner",
    "supported_pipelines": ".models",
    "supported_schedulers": ".solvers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelNotFoundError",
    "Plan",
    "PlanInputs",
    "Reason",
    "SADAConfig",
    "SADAError",
    "SADAHandle",
    "SADAStats",
    "StepMode",
    "UnsupportedModelError",
    "UnsupportedSchedulerError",
    "__version__",
    "apply_sada",
    "handle_of",
    "plan_step",
    "supported_pipelines",
    "supported_schedulers",
]
