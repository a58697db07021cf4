"""SADA hyperparameters: one validated dataclass plus named presets per model family."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

Reconstruction = Literal["extrapolate", "reuse", "predicted_state"]
RECONSTRUCTIONS: tuple[str, ...] = ("extrapolate", "reuse", "predicted_state")
Criterion = Literal["consistent", "published", "data_change"]
CRITERIA: tuple[str, ...] = ("consistent", "published", "data_change")
Shallow = Literal["off", "stable", "replace_skips", "accelerated"]
SHALLOW_RULES: tuple[str, ...] = ("off", "stable", "replace_skips", "accelerated")
MAX_SEED = 2**63 - 1
"""Largest seed accepted anywhere (``torch.Generator.manual_seed`` takes 64-bit values; beyond this, seeds wrap)."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _type_problem(name: str, annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the field's type annotation, or None. Strict: a bool is no int, an int no bool,
    a float no int, and a tuple field takes exactly its number of items."""
    if get_origin(annotation) is Union or get_origin(annotation) is UnionType:
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        (annotation,) = [option for option in options if option is not type(None)]
    if get_origin(annotation) is Literal:
        return None if isinstance(value, str) else f"{name} must be text, got {_type_name(value)} {value!r}"
    if get_origin(annotation) is tuple:
        items = get_args(annotation)
        if not isinstance(value, tuple) or len(value) != len(items):
            return f"{name} must be {len(items)} whole numbers (start, end), got {value!r}"
        problems = [_type_problem(f"{name} item", item, element) for item, element in zip(items, value, strict=True)]
        return next((problem for problem in problems if problem), None)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        return f"{name} must be a number, got {_type_name(value)} {value!r}"
    if annotation is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {_type_name(value)} {value!r}"
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        return f"{name} must be a whole number, got {_type_name(value)} {value!r}"
    return None


def parse_overrides(text: str) -> dict[str, Any]:
    """The fields ``text`` (``"key=value; key=value"``, each value in JSON) changes, by name: the parser of
    :meth:`SADAConfig.with_overrides`, which also checks the values against a config.

    Raises:
        ConfigError: a part is not ``key=value``, a value is not JSON or a key names no field of :class:`SADAConfig`.
    """
    changes: dict[str, Any] = {}
    for part in filter(None, (item.strip() for item in text.split(";"))):
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not key:
            raise ConfigError(f"SADA override {part!r} is not key=value (e.g. 'lagrange_step=6; max_interval=3')")
        if key in changes:
            raise ConfigError(f"SADA overrides {text!r}: {key} is given twice; give each key once")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            message = f"SADA override {part!r}: {value!r} is not a JSON value (e.g. 6, [6, 48], null)"
            raise ConfigError(message) from None
    unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(SADAConfig)})
    if unknown:
        raise ConfigError(f"SADA overrides {text!r}: unknown SADA config keys: {', '.join(unknown)}")
    return changes


def level_grid(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """Token grid at a resolution level: each stride-2 downsampler maps a size ``s`` to ``ceil(s / 2)``."""
    height, width = latent_hw
    for _ in range(level):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return height, width


@dataclass(frozen=True)
class StepBounds:
    """The step indices of one sampling run, after scaling the config to its number of steps."""

    num_steps: int
    acc_start: int
    acc_end: int
    lagrange_step: int | None
    lagrange_latest: int | None = None
    """Latest step at which an adaptive Lagrange phase begins; None for a fixed phase."""

    def accelerated(self, step: int) -> bool:
        return self.acc_start <= step < self.acc_end


@dataclass(frozen=True)
class SADAConfig:
    """Every hyperparameter of SADA (see the README's method section).

    Step indices (``acc_range``, ``lagrange_step``) are given for ``reference_steps`` inference
    steps and scaled proportionally to the actual number of steps of a call, so one preset serves
    25 or 100 steps alike; set ``reference_steps=None`` to use them as absolute indices.
    """

    acc_range: tuple[int, int] = (10, 47)
    """Steps [start, end) in which model calls may be skipped or pruned; start >= 3."""
    max_interval: int = 4
    """At most this many skipped steps in a row, and at most this many pruned steps between two
    full refreshes of the token caches."""
    lagrange_step: int | None = 24
    """First step of the late phase that skips on a fixed rhythm and rebuilds the data prediction
    by Lagrange extrapolation through anchor steps; ``None`` disables the phase."""
    lagrange_int: int = 4
    """In the late phase every ``lagrange_int``-th step is a real call (an anchor)."""
    lagrange_term: int = 4
    """Number of most recent anchors the Lagrange polynomial passes through."""
    anchor_tolerance: float | None = None
    """Adaptive Lagrange phase (README, "Where we depart"); ``None``: the fixed phase above (without a phase,
    ``lagrange_step=None``, the adaptive fields are unused). At every real
    call from ``lagrange_step`` on, the *anchor probe* extrapolates the Lagrange polynomial through the
    anchors (before the phase: the last ``lagrange_term`` real calls ``lagrange_int`` steps apart) to the
    call's data prediction, and compares its relative error with this tolerance. The phase begins at
    the first call whose probe is within it (at the latest at ``lagrange_latest``), with those calls as
    its first anchors; in the phase, an anchor whose probe is within it widens the next anchor interval by
    one step (up to ``max_lagrange_int``), any other resets it to ``lagrange_int``."""
    lagrange_latest: int | None = None
    """Adaptive phase only: the phase begins at this step whatever the probe says; ``None`` = ``lagrange_step``."""
    max_lagrange_int: int | None = None
    """Adaptive phase only: widest anchor interval; ``None`` = ``lagrange_int`` (no widening)."""
    sx: int = 3
    """Token window size along the first latent axis (time, for spectrogram latents)."""
    sy: int = 3
    """Token window size along the second latent axis (frequency, for spectrogram latents)."""
    max_downsample: int = 1
    """Token pruning applies to transformer blocks downsampled by at most this factor, as published:
    a block with ``N`` tokens on a latent of ``N0`` is pruned when ``ceil(sqrt(N0 // N)) <= max_downsample``
    (1 = the latent grid only, 2 = also the 2x-downsampled level, 4 = also 4x); see :meth:`prunes_level`."""
    max_fix: int = 5120
    """At most this many unstable tokens (counted on the latent grid) are forced to be recomputed."""
    stepwise: bool = True
    """Skip whole model calls when the trajectory is stable."""
    tokenwise: bool = True
    """Recompute only unstable and window-sampled tokens in transformer blocks."""
    reconstruction: Reconstruction = "extrapolate"
    """How a skipped step's model output is rebuilt before the late (Lagrange) phase:
    ``extrapolate`` (ODE gradient extrapolated linearly in the solver's time), ``reuse`` (last
    gradient), ``predicted_state`` (last output at the criterion's predicted state: the published
    reconstruction with ``criterion="published"``, a corrected one with ``"consistent"``, whose
    predictor is consistent)."""
    criterion: Criterion = "consistent"
    """The step-wise stability criterion (README, "Where we depart"): ``consistent`` (residual of a
    consistent Adams-Bashforth predictor in the solver's time times the gradient's curvature, stable when
    its mean is <= 0), ``published`` (the authors' formula: predictor with weights (5/8, 3/4, -3/8) and
    step 1/N on the training-beta gradient, same sign rule), ``data_change`` (relative change of the data
    prediction between the last two steps, stable when <= ``change_threshold``)."""
    change_threshold: float = 0.05
    """Threshold of the ``data_change`` criterion."""
    reference_steps: int | None = 50
    """Number of steps the indices above are given for; ``None`` = absolute indices."""
    seed: int = 0
    """Seed of the per-window token sampling (runs are reproducible)."""
    kept_tokens: float | None = None
    """Fixed share of every pruned level's tokens that a pruned block computes (window representatives
    first, then unstable tokens, then the largest momenta), so a pruned call always has the same shapes:
    what ``torch.compile`` and CUDA graphs need to build its graph once. ``None``: the representatives
    plus the unstable tokens, a number that changes from step to step."""
    shallow: Shallow = "off"
    """Shallow steps (UNets only): a real call that runs only the UNet's outermost level on fresh input and
    reuses the deeper blocks' outputs of the last full call. ``stable``: on accelerated steps that the
    criterion (or the late phase's rhythm) would skip but a limit forbids (``max_interval``, too few Lagrange
    anchors); ``replace_skips``: as ``stable``, and the steps before the Lagrange phase that the criterion
    calls stable run shallow *instead of* being skipped (no step is skipped before the phase: early skips
    are the costly ones); ``accelerated``: on every accelerated step that would otherwise be a full or
    pruned call. Lagrange anchors, and the calls that seed an adaptive phase's first anchors, are always full."""
    shallow_max_age: int = 3
    """A shallow step reuses deep features computed at most this many steps earlier (skipped steps count);
    the first step past that age is a full call that refreshes them."""

    def __post_init__(self) -> None:
        if isinstance(self.acc_range, list):  # JSON and Python callers write pairs as lists
            object.__setattr__(self, "acc_range", tuple(self.acc_range))
        hints = get_type_hints(SADAConfig)
        for field in dataclasses.fields(self):
            problem = _type_problem(field.name, hints[field.name], getattr(self, field.name))
            if problem:
                raise ConfigError(problem)
        start, end = self.acc_range
        checks = [
            (start >= 3, f"acc_range start must be >= 3 (the criterion needs three gradients), got {start}"),
            (end > start, f"acc_range must be (start, end) with end > start, got {self.acc_range}"),
            (self.max_interval >= 1, f"max_interval must be >= 1, got {self.max_interval}"),
            (self.lagrange_int >= 2, f"lagrange_int must be >= 2, got {self.lagrange_int}"),
            (self.lagrange_term >= 2, f"lagrange_term must be >= 2, got {self.lagrange_term}"),
            (self.sx >= 1 and self.sy >= 1, f"sx and sy must be >= 1, got {self.sx}, {self.sy}"),
            (self.max_downsample >= 0, f"max_downsample must be >= 0, got {self.max_downsample}"),
            (self.max_fix >= 0, f"max_fix must be >= 0, got {self.max_fix}"),
            (
                self.kept_tokens is None or 0.0 < self.kept_tokens <= 1.0,
                f"kept_tokens must be None or a share in (0, 1], got {self.kept_tokens}",
            ),
            (
                self.reconstruction in RECONSTRUCTIONS,
                f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {self.reconstruction!r}",
            ),
            (
                self.criterion in CRITERIA,
                f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}",
            ),
            (
                self.shallow in SHALLOW_RULES,
                f"shallow must be one of {', '.join(SHALLOW_RULES)}, got {self.shallow!r}",
            ),
            (self.shallow_max_age >= 1, f"shallow_max_age must be >= 1, got {self.shallow_max_age}"),
            (self.change_threshold > 0, f"change_threshold must be > 0, got {self.change_threshold}"),
            (
                self.anchor_tolerance is None or self.anchor_tolerance > 0,
                f"anchor_tolerance must be None or > 0, got {self.anchor_tolerance}",
            ),
            (
                self.reference_steps is None or self.reference_steps >= 4,
                f"reference_steps must be None or >= 4, got {self.reference_steps}",
            ),
            (0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}, got {self.seed}"),
        ]
        if self.lagrange_step is not None:
            checks.append(
                (
                    self.lagrange_step >= start,
                    f"lagrange_step must be >= acc_range start ({start}), got {self.lagrange_step}",
                )
            )
        adaptive = (self.lagrange_latest, self.max_lagrange_int)
        if self.anchor_tolerance is None:
            checks.append(
                (
                    adaptive == (None, None),
                    "lagrange_latest and max_lagrange_int need an adaptive Lagrange phase (anchor_tolerance)",
                )
            )
        if self.lagrange_latest is not None and self.lagrange_step is not None:
            checks.append(
                (
                    self.lagrange_latest >= self.lagrange_step,
                    f"lagrange_latest must be >= lagrange_step ({self.lagrange_step}), got {self.lagrange_latest}",
                )
            )
        if self.max_lagrange_int is not None:
            checks += [
                (
                    self.max_lagrange_int >= self.lagrange_int,
                    f"max_lagrange_int must be >= lagrange_int ({self.lagrange_int}), got {self.max_lagrange_int}",
                ),
                (
                    # a longer interval would hit the cap on skips in a row and force calls between anchors
                    self.max_lagrange_int <= self.max_interval + 1,
                    f"max_lagrange_int must be <= max_interval + 1 = {self.max_interval + 1}, "
                    f"got {self.max_lagrange_int}",
                ),
            ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SADAConfig:
        """The preset of a model family, optionally with some fields overridden."""
        if not isinstance(name, str):
            raise ConfigError(f"a SADA preset is named by text, got {_type_name(name)} {name!r}")
        key = name.lower().replace("_", "-")
        if key not in PRESETS:
            raise ConfigError(f"unknown SADA preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
        return PRESETS[key].replace(**overrides)

    def with_overrides(self, text: str) -> SADAConfig:
        """This config with the fields of ``text`` changed: ``"key=value; key=value"``, each value in JSON
        (``acc_range=[6, 48]; lagrange_step=null; tokenwise=false``), as command lines pass them.

        Raises:
            ConfigError: a part is not ``key=value``, a value is not JSON, a key is unknown or a value invalid.
        """
        changes = parse_overrides(text)
        try:
            return SADAConfig.from_dict({**self.to_dict(), **changes})
        except ConfigError as error:
            raise ConfigError(f"SADA overrides {text!r}: {error}") from None

    def replace(self, **changes: Any) -> SADAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["acc_range"] = list(self.acc_range)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SADAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown SADA config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def prunes_level(self, level: int, latent_hw: tuple[int, int] | None = None) -> bool:
        """Whether token pruning applies to a transformer block at resolution ``level`` (0 = latent grid).

        The published rule reads ``max_downsample`` as a downsampling factor: with ``N0`` latent tokens and
        ``N`` tokens at the block, the block is pruned when ``ceil(sqrt(N0 // N)) <= max_downsample``.
        ``latent_hw`` gives the exact token counts (stride-2 levels round odd sizes up); without it the
        level is taken as an exact halving (factor ``2 ** level``).
        """
        if latent_hw is None:
            factor = 2**level
        else:
            height, width = latent_hw
            level_h, level_w = level_grid(latent_hw, level)
            factor = math.ceil(math.sqrt((height * width) // (level_h * level_w)))
        return factor <= self.max_downsample

    def bounds(self, num_steps: int) -> StepBounds:
        """Scale the step indices to a run of ``num_steps`` steps."""
        scale = 1.0 if self.reference_steps is None else num_steps / self.reference_steps
        start = max(3, round(self.acc_range[0] * scale))
        end = min(num_steps, round(self.acc_range[1] * scale))
        lagrange = None if self.lagrange_step is None else max(start, round(self.lagrange_step * scale))
        latest = None  # only an adaptive phase has a latest start
        if self.anchor_tolerance is not None and lagrange is not None:
            latest = lagrange if self.lagrange_latest is None else max(lagrange, round(self.lagrange_latest * scale))
        return StepBounds(
            num_steps=num_steps, acc_start=start, acc_end=end, lagrange_step=lagrange, lagrange_latest=latest
        )


# Tuned on the embedded trained MusicLDM (BENCHMARKS.md, "Shallow steps instead of early skips" and the
# sections it cites). Steps 0-2 are called; on steps 3-11 the published criterion chooses between a full
# call and a shallow step (UNet outer level only, deep features of the previous step): a step it calls
# stable runs shallow instead of skipped, since skips this early cost the most; the calls 4 steps apart
# before step 12 are full (they seed the phase's first anchors). From step 12 the adaptive Lagrange phase:
# an anchor every 4th step until the anchor probe says the data prediction is predictable within 10%,
# then intervals of 5 steps, up to step 48 (where that happens per clip: BENCHMARKS.md).
# Token pruning is off: it did not pay on this model (BENCHMARKS.md, "Tuning the audio preset"). When switched
# on (tokenwise=True): windows narrow along frequency, since the latent has only 16 frequency rows and
# the first attention level 8; attention starts at level 1 of these UNets.
_AUDIO_UNET = SADAConfig(
    acc_range=(3, 49),
    max_interval=4,
    criterion="published",
    lagrange_step=12,
    lagrange_int=4,
    lagrange_term=4,
    anchor_tolerance=0.1,
    max_lagrange_int=5,
    shallow="replace_skips",
    shallow_max_age=1,
    sx=3,
    sy=2,
    max_downsample=4,  # a factor: the latent grid and the 2x and 4x levels (attention starts at 2x)
    max_fix=1024,
    tokenwise=False,
)

# The published image presets (50 steps). SADAConfig's defaults are SD-2's values. max_downsample is
# the published downsampling factor: SD-2's 1 prunes the full-resolution level only, SDXL's 2 the
# full-resolution and 2x levels, of which only the 2x level has attention in SDXL.
_SD2 = SADAConfig()
_SDXL = _SD2.replace(max_downsample=2, max_fix=10240)
# Flux was published without token pruning (max_downsample 0, max_fix 0) and with a later Lagrange
# phase through fewer anchors. Ours keeps pruning off by tokenwise=False instead, with max_downsample 1
# so that tokenwise=True prunes the packed-token grid (SD-2's windows) rather than nothing.
_FLUX = _SD2.replace(lagrange_step=20, lagrange_term=3, max_downsample=1, max_fix=0, tokenwise=False)
# Stable Audio Open has no published values: the step schedule of the other presets, and no token
# pruning by default, as for Flux (the other rotary-position transformer). Its token grid is
# (time, 1): windows of 4 latent frames when pruning is switched on, at most a quarter of the
# 1024 frames of a full-length clip forced.
_STABLE_AUDIO = _SD2.replace(sx=4, sy=1, max_downsample=1, max_fix=256, tokenwise=False)

PRESETS: dict[str, SADAConfig] = {
    "musicldm": _AUDIO_UNET,
    "audioldm": _AUDIO_UNET,
    "audioldm2": _AUDIO_UNET,
    "sd2": _SD2,
    "sdxl": _SDXL,
    # the paper's ControlNet runs use the Stable Diffusion settings unchanged
    "controlnet": _SD2,
    "flux": _FLUX,
    "stable-audio": _STABLE_AUDIO,
}
