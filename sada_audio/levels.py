"""Named speed / fidelity levels of SADA per model family, each a point measured in BENCHMARKS.md.

The one table of levels is :data:`LEVELS`: per preset name, the levels as overrides of the family's preset (in
the ``key=value; ...`` syntax of :meth:`SADAConfig.with_overrides`, the syntax of ``--sada`` and of the
benchmark's ``--sada-variant``) with what BENCHMARKS.md measured for them, and where. Retuning a level after
new measurements means editing its entry here, nothing else: the command line's ``--sada-level`` choices and
``sada-audio presets`` read this table.

Plain data and :class:`SADAConfig`: importable without torch (the command line lists the levels and checks
its options before loading anything).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PRESETS, SADAConfig
from .errors import ConfigError

__all__ = [
    "DEFAULT_LEVEL",
    "LEVELS",
    "LEVEL_NAMES",
    "Measured",
    "SADALevel",
    "family_of_model",
    "levels_for",
    "resolve_sada_config",
]


@dataclass(frozen=True)
class Measured:
    """One sampler's measurement of a level (50 steps, the embedded tiny-musicldm unless ``source`` says
    otherwise): denoiser calls per clip as full + shallow, the speedup over the unaccelerated pipeline and the
    mean log-mel PSNR against it."""

    sampler: str
    full_calls: float
    shallow_calls: float
    speedup: float
    speedup_timed: bool
    """True: the median of timed per-clip ratios; False: estimated from the calls (``source`` says how)."""
    mel_psnr_db: float

    def speedup_text(self) -> str:
        return f"{self.speedup:.2f}x" + ("" if self.speedup_timed else " (est.)")


@dataclass(frozen=True)
class SADALevel:
    """A named point on a family's speed / fidelity curve."""

    name: str
    overrides: str
    """Changes to the family's preset, ``key=value; ...`` (empty: the preset itself)."""
    summary: str
    measured: tuple[Measured, ...] = ()
    source: str = "not measured in BENCHMARKS.md"


#: Level names, fastest first; ``DEFAULT_LEVEL`` is the family's preset.
LEVEL_NAMES: tuple[str, ...] = ("fast", "default", "faithful")
DEFAULT_LEVEL = "default"

_SECOND_RUN = (
    "BENCHMARKS.md, '2026-11-30 (second run)': 16 prompts x 2 seeds, timed; raw in benchmarks/2026-11-30-shallow/"
)

# The audio UNet presets (MusicLDM, AudioLDM, AudioLDM 2 share one): measured on the embedded tiny-musicldm.
_AUDIO_UNET_LEVELS = (
    SADALevel(
        "fast",
        "max_interval=6; max_lagrange_int=6",
        "anchor intervals widen to 6 steps: fewer calls, about 0.5 dB below the preset",
        (
            Measured("ddim", 16.3, 4.7, 2.37, True, 37.7),
            Measured("dpm++", 17.0, 3.9, 2.29, True, 36.9),
        ),
        _SECOND_RUN + " ('SADA, widening to 6')",
    ),
    SADALevel(
        DEFAULT_LEVEL,
        "",
        "the family's preset",
        (
            Measured("ddim", 17.0, 4.7, 2.30, True, 38.3),
            Measured("dpm++", 17.8, 3.9, 2.23, True, 37.2),
        ),
        _SECOND_RUN + " ('SADA preset')",
    ),
    SADALevel(
        "faithful",
        "lagrange_int=3; max_lagrange_int=5",
        "anchors every 3rd step until the probe widens them (I3): for quality-critical rendering",
        (
            Measured("ddim", 20.5, 2.4, 2.05, False, 40.4),
            Measured("dpm++", 20.4, 2.3, 2.06, False, 39.9),
        ),
        "BENCHMARKS.md, '2026-11-30 (third run)', 'Anchors every 3rd step' (I3): 16 prompts x 2 seeds, speedup "
        "estimated from the calls (timed on DDIM, 4 prompts: 2.08x against the preset's 2.29x); raw in "
        "benchmarks/2026-11-30-third/",
    ),
)

_PRESET_ONLY = (SADALevel(DEFAULT_LEVEL, "", "the family's preset (published values)"),)

#: Per preset name (``SADAConfig.preset``), the levels it offers, fastest first.
LEVELS: dict[str, tuple[SADALevel, ...]] = {
    "musicldm": _AUDIO_UNET_LEVELS,
    "audioldm": _AUDIO_UNET_LEVELS,
    "audioldm2": _AUDIO_UNET_LEVELS,
    "sd2": _PRESET_ONLY,
    "sdxl": _PRESET_ONLY,
    "controlnet": _PRESET_ONLY,
    "flux": _PRESET_ONLY,
    "stable-audio": _PRESET_ONLY,
}


def levels_for(family: str) -> dict[str, SADALevel]:
    """The levels of ``family``'s preset by name, fastest first.

    Raises:
        ConfigError: ``family`` names no preset.
    """
    key = family.lower().replace("_", "-")
    if key not in PRESETS:
        raise ConfigError(f"unknown SADA preset {family!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return {level.name: level for level in LEVELS.get(key, _PRESET_ONLY)}


def resolve_sada_config(family: str, level: str = DEFAULT_LEVEL, overrides: str = "") -> SADAConfig:
    """The SADA config that ``family``'s ``level`` stands for, with ``overrides`` (``key=value; ...``) on top.

    Raises:
        ConfigError: an unknown family, a level the family does not offer, or overrides that
            :meth:`SADAConfig.with_overrides` refuses.
    """
    levels = levels_for(family)
    if level not in levels:
        raise ConfigError(
            f"the {family} preset has no SADA level {level!r}; its levels: {', '.join(levels)} "
            "(BENCHMARKS.md measured no other point for it)"
        )
    config = SADAConfig.preset(family)
    if levels[level].overrides:
        config = config.with_overrides(levels[level].overrides)
    return config.with_overrides(overrides) if overrides.strip() else config


def family_of_model(model: str) -> str | None:
    """The preset family of ``model`` (a short name, Hub id or local pipeline folder) where it is known without
    loading it: from the short name, the folder's ``model_index.json``, or the one in the local Hub cache;
    None otherwise."""
    # imported here: they need torch and diffusers, and listing the levels must not
    from .models import MODEL_ADAPTERS
    from .pipelines import pipeline_class_name

    class_name = pipeline_class_name(model)
    if not isinstance(class_name, str):  # unknown, or a model_index.json edited by hand
        return None
    return next(
        (adapter.pipeline_classes[class_name] for adapter in MODEL_ADAPTERS if class_name in adapter.pipeline_classes),
        None,
    )
