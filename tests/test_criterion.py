"""The stability criteria: the published formula on hand-computed numbers, and each criterion's decisions."""

import pytest
import torch

from evaluation.policies import always_stable, forced_skips
from sada_audio import SADAConfig, SADAHandle
from sada_audio.analytic import (
    AnalyticDenoiser,
    GaussianMixtureData,
    latent_noise,
    relative_error,
    run_sampler,
    scheduler_zoo,
)
from sada_audio.method.criterion import published_gradient, published_stability, relative_change
from sada_audio.method.planner import schedule_letters

NOISE = latent_noise((2, 4, 24, 12))


def test_published_gradient_by_hand():
    # N beta / 2 = 50 * 0.01 / 2 = 0.25; alpha 0.6, sigma 0.8, scaled state z = 1, output 0.5
    output, z = torch.tensor([0.5]), torch.tensor([1.0])
    eps = published_gradient(output, z, "epsilon", beta=0.01, num_steps=50, alpha=0.6, sigma=0.8)
    v = published_gradient(output, z, "v_prediction", beta=0.01, num_steps=50, alpha=0.6, sigma=0.8)
    # eps: 0.25 / 0.8 * 0.5 - 0.25 * (0.6 * 1) = 0.15625 - 0.15; v: 0.25 * 0.6 / 0.8 * 0.5 (no state term)
    torch.testing.assert_close(eps, torch.tensor([0.00625]))
    torch.testing.assert_close(v, torch.tensor([0.09375]))


def test_published_stability_by_hand():
    """Predictor x_n - (1/N)(5/8 f_n + 3/4 f_{n-1} - 3/8 f_{n-2}) on the VP state, residual in the sampler's
    state, times the plain second difference of f."""
    fs = [torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0]), torch.tensor([4.0, -1.0])]
    z_now, z_next = torch.tensor([1.0, 2.0]), torch.tensor([0.9, 1.7])
    verdict = published_stability(z_next, z_now, fs, num_steps=10, alpha_now=0.8, alpha_next=0.9, scale_next=0.9)
    # weighted f: (0.625, 1.125) / 10; VP prediction (0.8, 1.6) - (0.0625, 0.1125) = (0.7375, 1.4875)
    torch.testing.assert_close(verdict.predicted_state, torch.tensor([0.7375, 1.4875]) / 0.9)
    # residual (0.81, 1.53) - (0.7375, 1.4875) = (0.0725, 0.0425); curvature (1, -3)
    torch.testing.assert_close(verdict.momentum, torch.tensor([0.0725, -0.1275]))
    assert verdict.stable  # mean -0.0275 <= 0
    flipped = published_stability(-z_next, z_now, fs, num_steps=10, alpha_now=0.8, alpha_next=0.9, scale_next=0.9)
    assert not flipped.stable


def test_relative_change():
    assert relative_change(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])) == pytest.approx(0.2)


# Decisions on the analytic model, DDIM, 50 steps, no Lagrange phase (pinned; see README "Where we depart").
DECISIONS = {
    # The published criterion alternates: the step after a skip reads the stale output and turns unstable.
    "published": list(range(10, 47, 2)),
    # The consistent predictor's residual is the solver's own tiny local error: it never says "stable".
    "consistent": [],
    # The data prediction changes by <= 5% per step only late in the run.
    "data_change": [26, 27, 28, 29, 32, 33, 34, 35, 38, 39, 40, 41, 44, 45, 46],
}


@pytest.mark.parametrize("criterion", sorted(DECISIONS))
def test_each_criterion_decides_on_the_analytic_model(criterion):
    scheduler = scheduler_zoo()["ddim"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    baseline, _ = run_sampler(denoiser, scheduler, NOISE, 50)
    config = SADAConfig(tokenwise=False, lagrange_step=None, criterion=criterion)
    with SADAHandle(denoiser, scheduler, config) as handle:
        accelerated, _ = run_sampler(denoiser, scheduler, NOISE, 50)
        stats = handle.stats
    assert stats.skipped_steps == DECISIONS[criterion]
    assert stats.model_calls == 50 - len(DECISIONS[criterion])
    assert relative_error(accelerated, baseline) < 0.02


def test_published_criterion_on_dpm_solver_makes_the_same_decisions_as_on_ddim():
    scheduler = scheduler_zoo()["dpm++"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    config = SADAConfig(tokenwise=False, lagrange_step=None, criterion="published")
    with SADAHandle(denoiser, scheduler, config) as handle:
        run_sampler(denoiser, scheduler, NOISE, 50)
        assert handle.stats.skipped_steps == DECISIONS["published"]


def test_published_criterion_falls_back_to_ours_without_training_betas(caplog: pytest.LogCaptureFixture):
    scheduler = scheduler_zoo()["flow"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    config = SADAConfig(tokenwise=False, lagrange_step=None, criterion="published")
    with caplog.at_level("WARNING", logger="sada_audio"), SADAHandle(denoiser, scheduler, config) as handle:
        published_run = run_sampler(denoiser, scheduler, NOISE, 50)
        assert handle.run.criterion == "consistent"
    assert "needs a scheduler with training betas" in caplog.text and "uses criterion 'consistent'" in caplog.text
    with SADAHandle(denoiser, scheduler, config.replace(criterion="consistent")):
        torch.testing.assert_close(run_sampler(denoiser, scheduler, NOISE, 50), published_run, rtol=0, atol=0)


def test_forced_skips_replace_the_criterion():
    scheduler = scheduler_zoo()["ddim"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    config = SADAConfig(tokenwise=False, lagrange_step=None)
    with SADAHandle(denoiser, scheduler, config, policy=forced_skips(frozenset({2, 12, 13, 30, 49}))) as handle:
        run_sampler(denoiser, scheduler, NOISE, 50)
        # step 2 has too little history, step 49 lies outside acc_range (10, 47)
        assert handle.stats.skipped_steps == [12, 13, 30]


def test_always_stable_skips_every_step_the_limits_allow_on_every_run():
    """The ablations' planning policy: the criterion skips nothing here, the policy every step that acc_range
    (10, 47) and max_interval allow, on every run."""
    scheduler = scheduler_zoo()["ddim"]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    for max_interval, skipped in ((1, list(range(10, 47, 2))), (2, [s for s in range(10, 47) if s % 3 != 0])):
        config = SADAConfig(tokenwise=False, lagrange_step=None, max_interval=max_interval)
        with SADAHandle(denoiser, scheduler, config) as handle:
            run_sampler(denoiser, scheduler, NOISE, 50)
            assert handle.stats.skipped_steps == []
        with SADAHandle(denoiser, scheduler, config, policy=always_stable) as handle:
            for _ in range(2):
                run_sampler(denoiser, scheduler, NOISE, 50)
                assert handle.stats.skipped_steps == skipped


# The adaptive Lagrange phase on the analytic model (pinned). Published criterion from step 6 (it skips
# steps 6 and 8), anchor probe from step 10, phase at step 30 at the latest, anchor intervals of 4 to 7 steps.
ADAPTIVE = SADAConfig(
    tokenwise=False,
    criterion="published",
    acc_range=(6, 47),
    lagrange_step=10,
    lagrange_latest=30,
    max_interval=6,
    max_lagrange_int=7,
    anchor_tolerance=0.04,
)
ADAPTIVE_SCHEDULES = {
    # The probe falls below 0.04 at step 21 (0.036; 0.043 at 19, it reads fewer anchors at the odd steps
    # after the skips of 6 and 8): the phase begins there with the calls at 9, 13 and 17 as anchors, so it
    # skips from step 22 on. Anchors 25 and 30 are within 0.04 (0.026, 0.032), so the intervals widen to 5
    # and 6; 36, 40 and 44 are not (0.055, 0.055, 0.076): back to 4.
    0.04: "ffffffsfsfffffffffffffsssfssssfsssssfsssfsssfssfff",
    # A probe that never passes: the phase begins at lagrange_latest and keeps the shortest interval.
    1e-9: "ffffffsfsffffffffffffffffffffffsssfsssfsssfsssffff",
}


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
@pytest.mark.parametrize("tolerance", sorted(ADAPTIVE_SCHEDULES))
def test_the_anchor_probe_decides_when_the_lagrange_phase_begins_and_how_far_apart_its_anchors_are(sampler, tolerance):
    scheduler = scheduler_zoo()[sampler]
    denoiser = AnalyticDenoiser(GaussianMixtureData(), scheduler)
    baseline, _ = run_sampler(denoiser, scheduler, NOISE, 50)
    with SADAHandle(denoiser, scheduler, ADAPTIVE.replace(anchor_tolerance=tolerance)) as handle:
        accelerated, _ = run_sampler(denoiser, scheduler, NOISE, 50)
        stats = handle.stats
    assert "".join(mode[0] for mode in stats.step_modes) == ADAPTIVE_SCHEDULES[tolerance]
    assert stats.model_calls == ADAPTIVE_SCHEDULES[tolerance].count("f")
    assert relative_error(accelerated, baseline) < 0.015


@pytest.mark.integration  # 50-step runs of the embedded model
def test_the_audio_preset_gives_two_prompts_different_schedules_on_the_embedded_model():
    """Stability guidance decides per clip: under the audio preset two prompts (same seed) get different
    step_modes on the trained model (the anchor probe widens the anchor intervals at different steps), where
    the same schedule with a fixed Lagrange phase gives both the same."""
    from sada_audio.generation import ClipRequest, SamplingSettings, generate_batch
    from sada_audio.pipelines import load_pipeline

    pipe = load_pipeline("tiny-musicldm")
    pipe.set_progress_bar_config(disable=True)
    sampling = SamplingSettings(steps=50, duration=2.56, guidance=2.0)
    adaptive = SADAConfig.preset("musicldm")
    fixed = SADAConfig.preset("musicldm", anchor_tolerance=None, max_lagrange_int=None)
    schedules = {}
    for config in (adaptive, fixed):
        schedules[config] = [
            schedule_letters(
                generate_batch(pipe, [ClipRequest(prompt, 0)], sampling, sada_config=config).sada_stats["step_modes"]
            )
            for prompt in ("a calm piano playing broken chords", "drums only: a busy breakbeat")
        ]
    piano, drums = schedules[adaptive]
    # Both: shallow steps where the criterion calls steps 3-11 stable, the phase from step 12 (anchors seeded by
    # the calls at 0, 4 and 8), intervals widened from 4 to 5 steps at different anchors.
    assert piano[:17] == drums[:17] == "fffhfhfhfhfhf" + "sssf" and piano != drums
    assert (len(piano) - piano.count("s"), len(drums) - drums.count("s")) == (22, 22)
    fixed_piano, fixed_drums = schedules[fixed]
    # The fixed phase has no seeded anchors: it calls steps 12-16 (shallow where it cannot skip yet) until its
    # second anchor, then an anchor every 4th step.
    assert fixed_piano == fixed_drums == "fffhfhfhfhfhf" + "hfhf" + "sssf" * 8 + "f"
