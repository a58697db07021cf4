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
        help="SADA's speed / fidelity level, fastest first: each is a point measured in BENCHMARKS.md "
        "('sada-audio presets' lists them per family with their calls, speedup and fidelity); needs --accelerate "
        f"sada.  [default: {DEFAULT_LEVEL}, the family's preset]",
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


def config_before_loading(choice: SADAChoice | None, model: str) -> SADAConfig | None:
    """The config ``choice`` resolves to for ``model``, where its family is known without loading it (a short
    name, a local folder, a model in the local Hub cache); None without SADA or when the family is not known
    yet (then :func:`config_after_loading` resolves it)."""
    from sada_audio.levels import family_of_model

    if choice is None:
        return None
    family = family_of_model(model)
    return None if family is None else choice.config_for(family)


def config_after_loading(choice: SADAChoice | None, config: SADAConfig | None, pipe: Any) -> SADAConfig | None:
    """``config`` if it was resolved before loading, else ``choice`` resolved for the loaded ``pipe``'s family."""
    from sada_audio.models import model_adapter_for

    if choice is None or config is not None:
        return config
    return choice.config_for(model_adapter_for(pipe).family)
