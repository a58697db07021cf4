"""The step decision (``sada_audio.method.planner``): the planner as a table of inputs and plans, the Lagrange
phase and the limits by themselves, and the reasons a run's stats record."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sada_audio import SADAConfig, SADAHandle
from sada_audio.analytic import AnalyticDenoiser, GaussianMixtureData, latent_noise, run_sampler, scheduler_zoo
from sada_audio.method.planner import LagrangePhase, Limits, PlanInputs, Reason, StepMode, plan_step

SD2 = SADAConfig.preset("sd2")  # acc_range (10, 47), fixed phase from 24, token pruning
SD2_STEPWISE = SD2.replace(tokenwise=False)
AUDIO = SADAConfig.preset("musicldm")  # acc_range (3, 49), adaptive phase from 12, shallow instead of early skips
AUDIO_LATE = AUDIO.replace(lagrange_latest=24)  # the adaptive phase may begin as late as step 24
SHALLOW_ALWAYS = AUDIO.replace(shallow="accelerated")


@dataclass
class State:
    """The phase and limit state a planning case starts from."""

    phase_start: int | None = None
    next_anchor: int | None = None
    anchors: int = 0
    executed: tuple[str, ...] = ()
    """Modes executed up to the step before (newest last): the limits advance from them."""
    deep_step: int | None = None


def _inputs(config: SADAConfig, step: int, stable: bool, state: State, known: int = 3) -> PlanInputs:
    bounds = config.bounds(50)
    phase = LagrangePhase(config, bounds)
    if state.phase_start is not None:
        phase.start, phase.next_anchor = state.phase_start, state.next_anchor
    for _ in range(state.anchors):
        phase.times.append(0.0)
        phase.anchors.append(torch.zeros(1))
    limits = Limits()
    for offset, mode in enumerate(state.executed):
        limits.record(step - len(state.executed) + offset, StepMode(mode))
    if state.deep_step is not None:
        limits.deep_step = state.deep_step

    def verdict() -> bool:
        return stable

    return PlanInputs(step, bounds, config, phase, limits, known, verdict)


F, P, H, S = "full", "pruned", "shallow", "skipped"
# (name, config, step, criterion says stable, state, known gradients) -> (mode, anchor, reason)
CASES = [
    ("too little history", SD2, 12, True, State(), 2, (F, False, Reason.WARM_UP)),
    ("before acc_range", SD2, 9, True, State(), 3, (F, False, Reason.WARM_UP)),
    ("after acc_range", SD2, 47, True, State(), 3, (F, False, Reason.WARM_UP)),
    ("stable: skipped", SD2, 12, True, State(), 3, (S, False, Reason.STABLE)),
    ("unstable: pruned", SD2, 12, False, State(), 3, (P, False, Reason.TOKENS)),
    ("unstable, no tokens: full", SD2_STEPWISE, 12, False, State(), 3, (F, False, Reason.UNSTABLE)),
    ("skip limit, pruned", SD2, 15, True, State(executed=(S,) * 4), 3, (P, False, Reason.TOKENS)),
    ("skip limit, no tokens", SD2_STEPWISE, 15, True, State(executed=(S,) * 4), 3, (F, False, Reason.LIMIT)),
    ("token limit: refresh", SD2, 15, False, State(executed=(P,) * 4), 3, (F, False, Reason.LIMIT)),
    # counter drift: a planned pruned step that ran in full (a fall-back) refreshed the token caches
    (
        "drift: a full fall-back refreshes",
        SD2,
        16,
        False,
        State(executed=(P, P, P, P, F)),
        3,
        (P, False, Reason.TOKENS),
    ),
    ("shallow leaves caches stale", SD2, 16, False, State(executed=(P, P, P, P, S)), 3, (F, False, Reason.LIMIT)),
    ("fixed phase: anchor", SD2, 24, True, State(24, 24, 1), 3, (F, True, Reason.ANCHOR)),
    ("fixed phase: between anchors", SD2, 25, False, State(24, 28, 2), 3, (S, False, Reason.LAGRANGE)),
    ("fixed phase: one anchor only", SD2, 25, True, State(24, 28, 1), 3, (P, False, Reason.TOKENS)),
    ("fixed phase, one anchor, no tokens", SD2_STEPWISE, 25, True, State(24, 28, 1), 3, (F, False, "too few anchors")),
    ("phase skip limit", SD2_STEPWISE, 29, True, State(24, 32, 2, (S,) * 4), 3, (F, False, Reason.LIMIT)),
    ("audio: stable runs shallow", AUDIO, 5, True, State(deep_step=4), 3, (H, False, Reason.SHALLOW)),
    ("audio: deep features too old", AUDIO, 5, True, State(deep_step=3), 3, (F, False, Reason.LIMIT)),
    ("audio: unstable", AUDIO, 5, False, State(deep_step=4), 3, (F, False, Reason.UNSTABLE)),
    ("audio: seeds the first probe", AUDIO, 8, True, State(deep_step=7), 3, (F, False, Reason.SEEDS_ANCHOR)),
    ("audio: probe step", AUDIO, 12, True, State(deep_step=11), 3, (F, False, Reason.PROBE)),
    ("audio: adaptive anchor", AUDIO, 16, True, State(12, 16, 2, deep_step=15), 3, (F, True, Reason.ANCHOR)),
    ("audio: adaptive phase skips", AUDIO, 14, False, State(12, 16, 2, deep_step=12), 3, (S, False, Reason.LAGRANGE)),
    # a probe at 13 reads step 9: with the phase beginning as late as 24, 9 is protected from shallow too
    ("late probe node", AUDIO_LATE, 9, True, State(deep_step=8), 3, (F, False, Reason.SEEDS_ANCHOR)),
    ("not a probe node", AUDIO, 9, True, State(deep_step=8), 3, (H, False, Reason.SHALLOW)),
    ("shallow everywhere", SHALLOW_ALWAYS, 5, False, State(deep_step=4), 3, (H, False, Reason.SHALLOW)),
]


@pytest.mark.parametrize(("config", "step", "stable", "state", "known", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_plan(config, step, stable, state, known, expected):
    plan = plan_step(_inputs(config, step, stable, state, known))
    assert (plan.mode.value, plan.is_anchor, plan.reason) == expected


def test_the_verdict_is_read_only_where_the_plan_needs_it():
    reads = []

    def counted() -> bool:
        reads.append(1)
        return True

    inputs = _inputs(SD2, 25, True, State(24, 28, 2))
    plan_step(PlanInputs(**{**inputs.__dict__, "stable": counted}))
    assert not reads, "the fixed phase skips on its rhythm without the criterion"
    inputs = _inputs(AUDIO, 5, True, State(deep_step=4))
    plan_step(PlanInputs(**{**inputs.__dict__, "stable": counted}))
    assert len(reads) == 1


def test_limits_advance_from_what_was_executed():
    limits = Limits()
    for step, mode in enumerate((StepMode.PRUNED, StepMode.PRUNED, StepMode.SKIPPED, StepMode.SHALLOW)):
        limits.record(step, mode)
    assert (limits.skip_streak, limits.pruned_since_refresh, limits.deep_step) == (0, 2, 1)
    limits.record(4, StepMode.FULL)
    assert (limits.pruned_since_refresh, limits.deep_step) == (0, 4)


def _linear_x0(t: float) -> torch.Tensor:
    """A data prediction the Lagrange polynomial extrapolates exactly (the probe's error is zero)."""
    return torch.full((2, 2), 1.0 + t)


def test_an_adaptive_phase_begins_where_the_probe_first_reads_its_nodes():
    bounds = AUDIO_LATE.bounds(50)
    phase = LagrangePhase(AUDIO_LATE, bounds)
    assert [step for step in range(12) if phase.seeds_anchor(step)] == list(range(12))
    # the calls before step 12 that a probe reads; the probe at 12 finds no node 8, the one at 13 finds 9
    for step in (1, 5, 9):
        assert phase.record(step, StepMode.FULL, float(50 - step), _linear_x0(50 - step)) == []
    assert phase.record(12, StepMode.FULL, 38.0, _linear_x0(38.0)) == []
    assert phase.start is None
    assert phase.record(13, StepMode.FULL, 37.0, _linear_x0(37.0)) == [1, 5, 9, 13]
    assert phase.start == 13 and phase.in_phase(14) and phase.ready and phase.next_anchor == 17


def test_a_shallow_call_neither_seeds_nor_probes():
    phase = LagrangePhase(AUDIO, AUDIO.bounds(50))
    phase.record(8, StepMode.SHALLOW, 42.0, _linear_x0(42.0))
    assert phase.called == {}
    # no node 8 to read: the probe cannot begin the phase at 12 (it begins at lagrange_latest = 12 regardless)
    assert phase.record(12, StepMode.FULL, 38.0, _linear_x0(38.0)) == [12]
    assert list(phase.times) == [38.0]


def test_anchor_intervals_widen_while_the_probe_is_within_tolerance():
    config = AUDIO  # lagrange_int 4, widest 5
    phase = LagrangePhase(config, config.bounds(50))
    for step in (0, 4, 8):
        phase.record(step, StepMode.FULL, float(50 - step), _linear_x0(50 - step))
    assert phase.record(12, StepMode.FULL, 38.0, _linear_x0(38.0)) == [0, 4, 8, 12]
    assert phase.next_anchor == 16
    phase.record(16, StepMode.FULL, 34.0, _linear_x0(34.0))
    assert phase.next_anchor == 21  # widened to 5
    phase.record(21, StepMode.FULL, 29.0, torch.full((2, 2), 100.0))
    assert phase.next_anchor == 25  # off the polynomial: back to 4


def test_stats_record_the_executed_mode_the_reason_and_the_anchors_of_every_step():
    scheduler = scheduler_zoo()["ddim"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    config = SADAConfig(tokenwise=False)
    with SADAHandle(denoiser, scheduler, config) as handle:
        run_sampler(denoiser, scheduler, latent_noise((1, 4, 16, 8)), 50)
        stats = handle.stats
    assert len(stats.step_reasons) == len(stats.step_modes) == 50
    for step, (mode, reason) in enumerate(zip(stats.step_modes, stats.step_reasons, strict=True)):
        if mode == "skipped":
            assert reason in ("criterion stable", "lagrange"), step
        if reason == "anchor":
            assert mode == "full" and step in stats.anchor_steps
    assert stats.anchor_steps[:2] == [24, 28] and set(stats.step_reasons[:10]) == {"warm-up"}
    record = stats.to_dict()
    assert record["step_reasons"] == stats.step_reasons and record["anchor_steps"] == stats.anchor_steps


def test_a_planned_pruned_step_without_pruned_blocks_is_recorded_as_the_full_call_it_was():
    """The counter drift, end to end: a denoiser without token blocks runs every planned pruned step in full, so
    the steps are recorded full ("fall-back") and refresh the caches (the token limit never forces a refresh)."""
    scheduler = scheduler_zoo()["ddim"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    with SADAHandle(denoiser, scheduler, SADAConfig(lagrange_step=None, stepwise=False)) as handle:
        run_sampler(denoiser, scheduler, latent_noise((1, 4, 16, 8)), 50)
        stats = handle.stats
    assert stats.pruned_steps == [] and stats.fallbacks == 0
    assert stats.step_reasons[10:47] == ["fall-back"] * 37 and set(stats.step_modes) == {"full"}
