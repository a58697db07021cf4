"""``--sada-level`` and ``--sada``: which SADA configuration ``generate``, ``render`` and ``evaluate --generate``
run, resolved (where the model's family is known without loading it) before the model loads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from sada_audio.config import SADAConfig, parse_overrides
from sada_audio.levels import DEFAULT_LEVEL, LEVEL_NAMES, resolve_sada_config

_Command = TypeVar("_Command", bound=Callable[..., Any])

#: The parameter names of the two options, for commands that check which options were given.
SADA_OPTION_NAMES: tuple[str, ...] = ("sada_level", "sada_overrides")


def sada_options(command: _Command) -> _Command:
    """``--sada-level LEVEL`` and ``--sada 'KEY=VALUE; ...'``."""
    command = click.option(
        "--sada",
        "sada_overrides",
        metavar="'KEY=VALUE; ...'",
        help="Change SADA settings on top of the level, each value in JSON, e.g. 'lagrange_int=3; max_lagrange_int=5' "
        "(checked as benchmark's --sada-variant is); needs --accelerate sada.",
    )(command)
    return click.option(
        "--sada-level",
        type=click.Choice(LEVEL_NAMES),
        help="SADA's speed / fidelity level, fastest first, then the published preset: each is a SADA setting with "
        "the sampler and steps it runs on unless --scheduler / --steps say otherwise, a point measured in "
        "BENCHMARKS.md ('sada-audio presets' lists them per family with their calls, speedup and fidelity); needs "
        f"--accelerate sada.  [default: {DEFAULT_LEVEL}]",
    )(command)


@dataclass(frozen=True)
class SADAChoice:
    """What the command line asked SADA to run: a level and overrides on top of it, per model family."""

    level: str = DEFAULT_LEVEL
    overrides: str = ""

    def config_for(self, family: str) -> SADAConfig:
        """The resolved config for a model of ``family`` (raises ``ConfigError`` for a bad combination)."""
        return resolve_sada_config(family, self.level, self.overrides)

    def to_dict(self) -> dict[str, str]:
        """What the sidecars record beside the resolved ``sada_config``."""
        return {"sada_level": self.level, "sada_overrides": self.overrides}


def sada_choice(accelerate: str, level: str | None, overrides: str | None) -> SADAChoice | None:
    """The options' choice (None with ``--accelerate none``), the overrides' syntax and keys checked.

    Raises:
        click.UsageError: ``--sada-level`` or ``--sada`` without SADA.
        ConfigError: overrides that are not ``key=value`` with JSON values and known keys.
    """
    if accelerate != "sada":
        given = [flag for flag, value in (("--sada-level", level), ("--sada", overrides)) if value is not None]
        if given:
            raise click.UsageError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --accelerate sada")
        return None
    overrides = (overrides or "").strip()
    parse_overrides(overrides)
    return SADAChoice(level or DEFAULT_LEVEL, overrides)


@dataclass(frozen=True)
class RunChoice:
    """What a generating command runs: the SADA config (None: without SADA, or not resolved yet), the steps and
    the ``--scheduler`` choice (None: the model's own), and the model's family where known."""

    family: str | None
    sada_config: SADAConfig | None
    steps: int
    scheduler: str | None


def resolve_before_loading(
    choice: SADAChoice | None, model: str, steps: int | None, scheduler: str | None
) -> RunChoice:
    """The config ``choice`` resolves to for ``model``, and the steps and sampler of the run: ``steps`` and
    ``scheduler`` as given (None: not given), else the SADA level's, else 50 steps of the model's own sampler
    (:func:`~sada_audio.levels.run_sampling`). Where the family is not known without loading the model (a Hub id
    not in the local cache), the config is None and the level's sampling waits for :func:`resolve_after_loading`.
    """
    from sada_audio.levels import family_of_model, run_sampling

    family = None if choice is None else family_of_model(model)
    config = None if family is None or choice is None else choice.config_for(family)
    level = None if choice is None else choice.level
    return RunChoice(family, config, *run_sampling(family, level, steps, scheduler))


def resolve_after_loading(
    choice: SADAChoice | None, run: RunChoice, pipe: Any, steps: int | None, scheduler: str | None
) -> RunChoice:
    """``run`` if it was resolved before loading; else resolved for the loaded ``pipe``'s family, whose sampler
    is replaced by the level's when ``scheduler`` was not given (``steps`` and ``scheduler``: as given)."""
    from sada_audio.levels import run_sampling
    from sada_audio.models import model_adapter_for
    from sada_audio.pipelines import set_scheduler

    if choice is None or run.family is not None:
        return run
    family = model_adapter_for(pipe).family
    run_steps, run_scheduler = run_sampling(family, choice.level, steps, scheduler)
    if run_scheduler != run.scheduler:
        set_scheduler(pipe, run_scheduler)
    return RunChoice(family, choice.config_for(family), run_steps, run_scheduler)
