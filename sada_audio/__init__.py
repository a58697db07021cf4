"""sada-audio: training-free SADA acceleration for audio diffusion pipelines.

>>> from sada_audio import SADAConfig, apply_sada
>>> handle = apply_sada(pipe)                      # the preset of the pipeline's family
>>> audio = pipe("slow piano arpeggio in A minor").audios
>>> handle.stats.model_calls, handle.stats.skipped_steps
>>> handle.remove()                                # the pipeline is exactly as before
"""

from .apply import SADAHandle, apply_sada
from .config import PRESETS, SADAConfig
from .errors import (
    ConfigError,
    ModelNotFoundError,
    SADAError,
    UnsupportedModelError,
    UnsupportedSchedulerError,
)
from .method.engine import SADAStats, StepMode
from .models import supported_pipelines
from .solvers import supported_schedulers

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelNotFoundError",
    "SADAConfig",
    "SADAError",
    "SADAHandle",
    "SADAStats",
    "StepMode",
    "UnsupportedModelError",
    "UnsupportedSchedulerError",
    "__version__",
    "apply_sada",
    "supported_pipelines",
    "supported_schedulers",
]
