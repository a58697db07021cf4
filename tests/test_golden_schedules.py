"""Golden schedules: every SADA preset and level x every sampler it supports, on the tiny pipelines, must give
exactly the recorded step modes, call counts and final latents (bit for bit).

The record (``tests/data/golden_schedules.json``) pins what the engine does, so that a refactoring of the
step decision shows any change of behaviour. Rewrite it only for a change that is meant (a fixed bug), and
say which cases changed and why in the commit: ``python -m tests.test_golden_schedules`` writes it anew.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sada_audio import SADAConfig, apply_sada
from sada_audio.choices import SCHEDULER_CHOICES
from sada_audio.levels import DEFAULT_LEVEL, levels_for, resolve_sada_config
from sada_audio.method.planner import schedule_letters
from sada_audio.pipelines import set_scheduler
from tests.support.tiny_pipelines import TINY_PIPELINES, image_call_kwargs, stable_audio_open_scheduler

GOLDEN = Path(__file__).parent / "data" / "golden_schedules.json"
STEPS = 50  # the step count the presets and levels are tuned for
# The samplers of each family: the UNet families take every --scheduler choice; Flux has only flow matching and
# Stable Audio its own EDM DPM-Solver++ (ODE) and the released cosine SDE scheduler.
_NATIVE = "native"
_COSINE = "cosine-sde"
SAMPLERS: dict[str, tuple[str, ...]] = {
    **{family: SCHEDULER_CHOICES for family in ("musicldm", "audioldm", "audioldm2", "sd2", "sdxl", "controlnet")},
    "flux": (_NATIVE,),
    "stable-audio": (_NATIVE, _COSINE),
}
# Settings beyond the presets' levels that reach other branches of the step decision (token pruning, the other
# shallow rules, the fixed phase, the other criteria and reconstructions, an adaptive phase that may begin late),
# on one audio family and two samplers.
VARIANTS: dict[str, str] = {
    "tokens": "tokenwise=true; max_fix=64",
    "tokens-fixed-share": 'tokenwise=true; kept_tokens=0.5; shallow="off"',
    "shallow-stable": 'shallow="stable"; shallow_max_age=2',
    "shallow-accelerated": 'shallow="accelerated"; shallow_max_age=3; tokenwise=true; max_fix=64',
    "fixed-phase": "anchor_tolerance=null; lagrange_latest=null; max_lagrange_int=null",
    "no-phase": "lagrange_step=null; anchor_tolerance=null; lagrange_latest=null; max_lagrange_int=null",
    "late-phase": "lagrange_latest=24",
    "consistent": 'criterion="consistent"; shallow="stable"',
    "data-change": 'criterion="data_change"; shallow="off"',
    "reuse": 'criterion="consistent"; shallow="off"; reconstruction="reuse"',
    "predicted-state": 'shallow="off"; reconstruction="predicted_state"',
}
VARIANT_SAMPLERS = ("ddim", "dpm++")


def _distinct_levels(family: str) -> list[str]:
    """The family's levels with a config of their own, the default first: levels that differ only in the sampler
    and steps they run on are one golden case (the cases run every sampler at 50 steps)."""
    names = sorted(levels_for(family), key=lambda name: name != DEFAULT_LEVEL)
    configs = [resolve_sada_config(family, name) for name in names]
    return [name for index, name in enumerate(names) if configs[index] not in configs[:index]]


def _cases() -> Iterator[tuple[str, str, str, str]]:
    """(family, preset level or variant, overrides, sampler) of every golden run."""
    for family, samplers in SAMPLERS.items():
        for level in _distinct_levels(family):
            for sampler in samplers:
                yield family, level, "", sampler
    for variant, overrides in VARIANTS.items():
        for sampler in VARIANT_SAMPLERS:
            yield "musicldm", variant, overrides, sampler


CASES = list(_cases())
# A few cases run in the unit tier too (about 5 s): the audio preset, token pruning, SD 2 on a sampler where
# pruned and skipped steps alternate, and the two transformer families.
UNIT_CASES = (
    "musicldm/default/ddim",
    "musicldm/tokens/dpm++",
    "sd2/default/dpm++3m",
    "flux/default/native",
    "stable-audio/default/native",
)


def case_id(family: str, level: str, sampler: str) -> str:
    return f"{family}/{level}/{sampler}"


class _Pipelines:
    """One tiny pipeline per family, built on first use (this module's own: it swaps their schedulers)."""

    def __init__(self) -> None:
        self._pipes: dict[str, Any] = {}
        self._native: dict[str, Any] = {}

    def with_sampler(self, family: str, sampler: str) -> Any:
        """The family's pipeline with the scheduler of ``sampler``, built from the family's own."""
        if family not in self._pipes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._pipes[family] = TINY_PIPELINES[family]()
            self._native[family] = self._pipes[family].scheduler
        pipe = self._pipes[family]
        pipe.scheduler = self._native[family]
        if sampler == _COSINE:
            pipe.scheduler = stable_audio_open_scheduler()
        elif sampler != _NATIVE:
            set_scheduler(pipe, sampler)
        return pipe


def _final_latent(pipe: Any, family: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if family in ("musicldm", "audioldm", "audioldm2"):
        kwargs: dict[str, Any] = {"audio_length_in_s": 2.56, "guidance_scale": 2.5}
    elif family == "stable-audio":
        kwargs = {}
    else:
        kwargs = image_call_kwargs(pipe)
    output = pipe("a slow piano melody", num_inference_steps=STEPS, generator=generator, output_type="latent", **kwargs)
    return output.audios if hasattr(output, "audios") else output.images


def run_case(pipes: _Pipelines, family: str, level: str, overrides: str, sampler: str) -> dict[str, Any]:
    """What SADA did in one golden run: the schedule, the calls and tokens counted, and the final latent."""
    pipe = pipes.with_sampler(family, sampler)
    # a variant changes the family's preset (the published values), whatever the default level is
    config = SADAConfig.preset(family).with_overrides(overrides) if overrides else resolve_sada_config(family, level)
    with apply_sada(pipe, config) as handle:
        latent = _final_latent(pipe, family)
        stats = handle.stats
    values = latent.detach().float().contiguous()
    return {
        "schedule": schedule_letters(stats.step_modes),
        "model_calls": stats.model_calls,
        "fallbacks": stats.fallbacks,
        "tokens_computed": stats.tokens_computed,
        "tokens_total": stats.tokens_total,
        "latent_sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest(),
        "latent_sum": float(values.double().sum()),
    }


@pytest.fixture(scope="module")
def pipes() -> _Pipelines:
    return _Pipelines()


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


def test_the_record_covers_every_case(golden):
    assert sorted(golden) == sorted(case_id(family, level, sampler) for family, level, _, sampler in CASES)


@pytest.mark.parametrize(
    ("family", "level", "overrides", "sampler"),
    [
        pytest.param(
            *case,
            id=case_id(*case[:2], case[3]),
            marks=() if case_id(*case[:2], case[3]) in UNIT_CASES else pytest.mark.integration,
        )
        for case in CASES
    ],
)
def test_golden_schedule(pipes, golden, family, level, overrides, sampler):
    with torch.random.fork_rng(devices=[]):
        assert run_case(pipes, family, level, overrides, sampler) == golden[case_id(family, level, sampler)]


def main() -> None:
    """Write the record anew from the current code (one thread, as the tests run)."""
    torch.set_num_threads(1)
    pipes = _Pipelines()
    record = {}
    for family, level, overrides, sampler in CASES:
        with torch.random.fork_rng(devices=[]):
            record[case_id(family, level, sampler)] = run_case(pipes, family, level, overrides, sampler)
        print(case_id(family, level, sampler), record[case_id(family, level, sampler)]["schedule"], flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
