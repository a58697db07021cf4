"""Named speed / fidelity levels of SADA per model family, each a point measured in BENCHMARKS.md.

The one table of levels is :data:`LEVELS`: per preset name, the levels as overrides of the family's preset (in
the ``key=value; ...`` syntax of :meth:`SADAConfig.with_overrides`, the syntax of ``--sada`` and of the
benchmark's ``--sada-variant``), the sampler and step count each runs on unless the command line names others,
and what BENCHMARKS.md measured for them, and where. Retuning a level after
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
    "DEFAULT_STEPS",
    "LEVELS",
    "LEVEL_NAMES",
    "Measured",
    "SADALevel",
    "family_of_model",
    "level_of",
    "levels_for",
    "resolve_sada_config",
    "run_sampling",
]

#: Steps of a run that names no step count and no level with its own (the published presets were tuned for 50).
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class Measured:
    """One sampler's measurement of a level on the embedded tiny-musicldm (5.12 s clips, guidance 2): denoiser
    calls per clip as full + shallow, the speedup over the unaccelerated ``reference_steps``-step run of the same
    sampler and the mean log-mel PSNR against that run's clip (and against a converged 200-step DPM++ run, where
    measured)."""

    sampler: str
    full_calls: float
    shallow_calls: float
    speedup: float
    speedup_timed: bool
    """True: the median of timed per-clip ratios; False: estimated from the calls (``source`` says how)."""
    mel_psnr_db: float
    mel_psnr_converged_db: float | None = None
    reference_steps: int = 50

    def speedup_text(self) -> str:
        return f"{self.speedup:.2f}x" + ("" if self.speedup_timed else " (est.)")


@dataclass(frozen=True)
class SADALevel:
    """A named point on a family's speed / fidelity curve: a SADA config and the sampler and step count it runs on
    unless the command line names others."""

    name: str
    overrides: str
    """Changes to the family's preset, ``key=value; ...`` (empty: the preset itself)."""
    summary: str
    measured: tuple[Measured, ...] = ()
    source: str = "not measured in BENCHMARKS.md"
    scheduler: str | None = None
    """The ``--scheduler`` choice it runs on when none is given; None: the model's own sampler."""
    steps: int = DEFAULT_STEPS
    """The steps it runs when ``--steps`` is not given."""


#: Level names: the speed levels fastest first, then ``published`` (the published method's preset on the model's
#: own sampler, where a family offers it). ``DEFAULT_LEVEL`` is what ``--accelerate sada`` runs.
LEVEL_NAMES: tuple[str, ...] = ("fast", "default", "faithful", "published")
DEFAULT_LEVEL = "default"

_SECOND_RUN = (
    "BENCHMARKS.md, '2026-11-30 (second run)': 16 prompts x 2 seeds, timed; raw in benchmarks/2026-11-30-shallow/"
)
_LATE_SHALLOW_RUN = (
    "BENCHMARKS.md, '2026-12-08: the default follows the measurement': 6 benchmark prompts, seed 0, timed, against "
    "UniPC 50 steps and a converged 200-step DPM++ run; raw in benchmarks/2026-12-08-defaults/"
)
# Shallow steps (the UNet's outer level on fresh input, deep features of the step before) on every other step of
# the second half, and no skipped step: of the settings measured, the one nearest the curve of plain UniPC at
# fewer steps (BENCHMARKS.md). acc_range is in steps of 50, so it scales with the run's steps.
_LATE_SHALLOW = 'stepwise=false; lagrange_step=null; shallow="accelerated"; shallow_max_age=1; acc_range=[25, 49]'


def _late_shallow(name: str, steps: int, versus_plain: str, measured: Measured) -> SADALevel:
    """A level of late shallow steps on ``steps`` UniPC steps; ``versus_plain``: how it compares with plain UniPC
    at the same cost."""
    summary = f"shallow steps on every other step of the second half: {versus_plain}"
    return SADALevel(name, _LATE_SHALLOW, summary, (measured,), _LATE_SHALLOW_RUN, scheduler="unipc", steps=steps)


# The audio UNet presets (MusicLDM, AudioLDM, AudioLDM 2 share one): measured on the embedded tiny-musicldm.
_AUDIO_UNET_LEVELS = (
    _late_shallow(
        "fast",
        20,
        "1.2-1.6 dB below plain UniPC at 15-16 steps, the same cost",
        Measured("unipc", 15.0, 5.0, 2.69, True, 37.15, 36.43),
    ),
    _late_shallow(
        DEFAULT_LEVEL,
        25,
        "the SADA setting nearest plain UniPC at equal cost (0.4 dB below 20 plain steps on the benchmark prompts, "
        "1.4 dB above on held-out ones)",
        Measured("unipc", 19.0, 6.0, 2.07, True, 39.74, 37.88),
    ),
    _late_shallow(
        "faithful",
        30,
        "below plain UniPC at 25 steps against the 50-step clip (1.9 dB), level against a converged run",
        Measured("unipc", 23.0, 7.0, 1.75, True, 39.74, 38.69),
    ),
    SADALevel(
        "published",
        "",
        "the published method's preset on 50 steps of the model's own sampler (the default until 2026-12-08)",
        (
            Measured("ddim", 17.0, 4.7, 2.30, True, 38.3),
            Measured("dpm++", 17.8, 3.9, 2.23, True, 37.2),
        ),
        _SECOND_RUN + " ('SADA preset'; DDIM and DPM++ on the leading spacing of that time)",
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


def level_of(family: str, level: str) -> SADALevel:
    """``family``'s level named ``level``.

    Raises:
        ConfigError: an unknown family, or a level the family does not offer.
    """
    levels = levels_for(family)
    if level not in levels:
        raise ConfigError(
            f"the {family} preset has no SADA level {level!r}; its levels: {', '.join(levels)} "
            "(BENCHMARKS.md measured no other point for it)"
        )
    return levels[level]


def resolve_sada_config(family: str, level: str = DEFAULT_LEVEL, overrides: str = "") -> SADAConfig:
    """The SADA config that ``family``'s ``level`` stands for, with ``overrides`` (``key=value; ...``) on top.

    Raises:
        ConfigError: an unknown family, a level the family does not offer, or overrides that
            :meth:`SADAConfig.with_overrides` refuses.
    """
    chosen = level_of(family, level)
    config = SADAConfig.preset(family)
    if chosen.overrides:
        config = config.with_overrides(chosen.overrides)
    return config.with_overrides(overrides) if overrides.strip() else config


def run_sampling(
    family: str | None, level: str | None, steps: int | None, scheduler: str | None
) -> tuple[int, str | None]:
    """The steps and the ``--scheduler`` choice (None: the model's own) of a run: those given; for the rest, with
    SADA at ``level`` (None: without SADA) on a model of ``family`` (None: not known yet), the level's; otherwise
    :data:`DEFAULT_STEPS` and the model's own sampler.

    Raises:
        ConfigError: an unknown family, or a level the family does not offer.
    """
    if level is None or family is None:
        return (DEFAULT_STEPS if steps is None else steps), scheduler
    base = level_of(family, level)
    return (base.steps if steps is None else steps), (base.scheduler if scheduler is None else scheduler)


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
