"""Does a stability criterion predict where skipping a model call is cheap? An oracle study.

For every step ``m`` of the accelerated range, the *cost* of rebuilding that one step's model output
(SADA's ``extrapolate`` reconstruction) instead of calling the model is set against each candidate
signal's *score* at the decision point just before ``m`` (computed on the unaccelerated trajectory,
low = "stable, skip"). Per clip and sampler it reports:

- ROC AUC of each score for "cheap to skip" (cost at or below the clip's median);
- the final-output error of the skip set each score picks, against the oracle's best skip set and an
  evenly spread fixed schedule, all at the same number of model calls (``--skips``), all with the
  same reconstruction; and the shipped preset (Lagrange phase) as a reference row at its own NFE.

Costs: on the analytic model (exact denoiser, latent L2) the *true* cost of every single skip is
computed by running the sampler to the end; on the embedded model a single-skip run per step is too
expensive for this machine, so the cost is the *local* one, the state error the rebuilt output injects
in that step, ``|t_{m+1} - t_m| * |yhat_m - y_m|``, and ``--true-oracle-clips`` checks on a few clips
(every ``--true-oracle-stride``-th step) how well it ranks like the true final log-mel error.
Equal-NFE runs are real runs of the pipeline with SADA's engine forced to skip the chosen steps;
errors are log-mel PSNR of the VAE-decoded spectrogram against the unaccelerated one (no vocoder).

Tuning and reporting prompts are separate, written for this study in other wording than the
training captions (``tools.tiny.music.caption``) and the benchmark prompts. Run::

    python -m sada_audio.evaluation.stability_oracle --model analytic
    python -m sada_audio.evaluation.stability_oracle --model embedded --prompt-set tune --scheduler ddim
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.policies import forced_skips
from sada_audio import SADAConfig, SADAHandle, apply_sada
from sada_audio.method.criterion import (
    extrapolate_gradient,
    published_gradient,
    published_stability,
    relative_change,
    stability,
)
from sada_audio.method.planner import plan_step, schedule_letters
from sada_audio.solvers import solver_adapter_for

logger = logging.getLogger(__name__)

#: Tuning prompts: plain-language descriptions, not the generator's "tempo loudness instrument pattern" order.
TUNING_PROMPTS: tuple[str, ...] = (
    "a calm piano playing broken chords, nothing else, key of D minor",
    "drums only: a busy breakbeat, quick and punchy",
    "retro video game tune, square wave melody over a steady kick, B major",
    "warm synth pads holding long chords, very quiet, around 65 beats per minute",
)

#: Reporting prompts: the numbers that decide are measured on these.
REPORT_PROMPTS: tuple[str, ...] = (
    "an acoustic guitar picks out a gentle melody while a bass hums underneath, C minor",
    "club music: pounding four on the floor kick, buzzing saw bass, 128 beats per minute",
    "piano and drums together, rock feel, energetic, F major",
    "a slow, dreamy pad with a sine bass far below it, E flat minor",
    "eight-bit arcade chords in A major with a square bass line",
    "a lead synth with a sawtooth tone plays a fast arpeggio, loud, G minor",
    "laid-back half-time groove with plucked guitar chords on top",
    "only percussion, slow and sparse, 72 beats per minute",
)

#: Candidate signals, each low = "stable: the next call may be skipped".
SCORES: tuple[str, ...] = (
    "published",
    "consistent",
    "data_change",
    "output_change",
    "published_frames",
    "late_first",
)

ACC_RANGE = (10, 48)
MAX_INTERVAL = 4
#: Longest run of consecutive skips a chosen skip set may have. Single-skip costs are not additive: four
#: extrapolations in a row compound (measured on the analytic model, DDIM, 23 calls: greedy sets with runs
#: of 4 reach relative L2 1.2 where an evenly spread schedule reaches 0.056), so every set is held to the
#: shortest runs that still fit 27 skips in 38 steps.
MAX_RUN = 3

#: The reference row: the fixed Lagrange schedule the audio presets shipped before issue 13 (23 calls).
FIXED_23 = SADAConfig.preset("musicldm").replace(
    acc_range=(10, 49), max_interval=4, lagrange_step=10, anchor_tolerance=None, max_lagrange_int=None
)


@dataclass
class Trajectory:
    """One unaccelerated run: per step the model output fed to the solver and the states around it."""

    outputs: list[torch.Tensor]
    states: list[torch.Tensor]
    """``num_steps + 1`` states, the last one the final latent."""


def record_steps(scheduler: Any, run: Callable[[], Any]) -> Trajectory:
    """Run ``run()`` while recording every ``scheduler.step`` (model output, state before and after)."""
    step = scheduler.step
    outputs: list[torch.Tensor] = []
    states: list[torch.Tensor] = []

    def recording_step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kw: Any) -> Any:
        result = step(model_output, timestep, sample, *args, **kw)
        nxt = result[0] if isinstance(result, tuple) else result.prev_sample
        if not states:
            states.append(sample.detach().float().clone())
        outputs.append(model_output.detach().float().clone())
        states.append(nxt.detach().float().clone())
        return result

    scheduler.step = recording_step
    try:
        run()
    finally:
        del scheduler.step
    return Trajectory(outputs, states)


def signal_scores(trajectory: Trajectory, scheduler: Any) -> dict[str, dict[int, float]]:
    """Every candidate's score for skipping step ``m`` (computed after step ``m - 1``), for m >= 3."""
    solver = solver_adapter_for(scheduler)
    n_steps = solver.num_steps
    prediction_type = scheduler.config.prediction_type
    z, t, y, x0, f = [], [], [], [], []
    for n in range(n_steps):
        a_n, t_n = solver.ode_time(n)
        state = trajectory.states[n]
        y_n = solver.to_gradient(trajectory.outputs[n], state, n)
        z.append(state / a_n)
        t.append(t_n)
        y.append(y_n)
        x0.append(z[-1] - t_n * y_n)
        alpha = 1.0 / math.sqrt(1.0 + t_n * t_n)
        beta = float(scheduler.betas[int(scheduler.timesteps[n])])
        f.append(published_gradient(trajectory.outputs[n], z[-1], prediction_type, beta, n_steps, alpha, t_n * alpha))
    scores: dict[str, dict[int, float]] = {name: {} for name in SCORES}
    for m in range(3, n_steps):
        n = m - 1
        a_m, t_m = solver.ode_time(m)
        z_next = trajectory.states[m] / a_m
        published = published_stability(
            z_next,
            z[n],
            [f[n], f[n - 1], f[n - 2]],
            n_steps,
            1.0 / math.sqrt(1.0 + t[n] ** 2),
            1.0 / math.sqrt(1.0 + t_m**2),
            a_m,
        )
        consistent = stability(z_next, z[n], [y[n], y[n - 1], y[n - 2]], [t[n], t[n - 1], t[n - 2]], t_m)
        scores["published"][m] = float(published.momentum.mean())
        scores["consistent"][m] = float(consistent.momentum.mean())
        scores["data_change"][m] = relative_change(x0[n], x0[n - 1])
        scores["output_change"][m] = relative_change(y[n], y[n - 1])
        # Published momentum per spectrogram time frame (axis 2 of B x C x T x F): the share of unstable frames.
        frames = published.momentum.mean(dim=(0, 1, 3))
        scores["published_frames"][m] = float((frames > 0).float().mean())
        scores["late_first"][m] = -float(m)
    return scores


def local_costs(trajectory: Trajectory, scheduler: Any) -> dict[int, float]:
    """State error injected by rebuilding step ``m``'s output by gradient extrapolation, per m >= 3."""
    solver = solver_adapter_for(scheduler)
    ys, ts = [], []
    for n in range(solver.num_steps):
        _, t_n = solver.ode_time(n)
        ys.append(solver.to_gradient(trajectory.outputs[n], trajectory.states[n], n))
        ts.append(t_n)
    scale = float((trajectory.states[-1] / solver.ode_time(solver.num_steps)[0]).norm())
    costs = {}
    for m in range(3, solver.num_steps):
        _, t_after = solver.ode_time(m + 1)
        estimate = extrapolate_gradient([ys[m - 1], ys[m - 2]], [ts[m - 1], ts[m - 2]], ts[m])
        costs[m] = abs(t_after - ts[m]) * float((estimate - ys[m]).norm()) / scale
    return costs


def roc_auc(scores: Sequence[float], cheap: Sequence[bool]) -> float:
    """P(score of a cheap step < score of an expensive one), ties counting half (Mann-Whitney)."""
    positives = [s for s, c in zip(scores, cheap, strict=True) if c]
    negatives = [s for s, c in zip(scores, cheap, strict=True) if not c]
    if not positives or not negatives:
        return float("nan")
    wins = sum((p < q) + 0.5 * (p == q) for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def cheap_labels(costs: dict[int, float], steps: Sequence[int]) -> list[bool]:
    median = statistics.median(costs[m] for m in steps)
    return [costs[m] <= median for m in steps]


def pick_skips(order: Sequence[int], count: int, max_interval: int = MAX_RUN) -> frozenset[int]:
    """The first ``count`` steps of ``order`` (most skippable first) that keep every run of consecutive
    skips at most ``max_interval`` long (the engine's rule)."""
    chosen: set[int] = set()
    for m in order:
        if len(chosen) == count:
            break
        left = right = 0
        while m - left - 1 in chosen:
            left += 1
        while m + right + 1 in chosen:
            right += 1
        if left + right + 1 <= max_interval:
            chosen.add(m)
    return frozenset(chosen)


def fixed_skips(steps: Sequence[int], count: int) -> frozenset[int]:
    """An evenly spread schedule: ``len(steps) - count`` calls spaced evenly, every other step skipped."""
    calls = len(steps) - count
    called = {steps[min(len(steps) - 1, int((i + 0.5) * len(steps) / calls))] for i in range(calls)} if calls else set()
    return frozenset(s for s in steps if s not in called)


def skip_sets(
    scores: dict[str, dict[int, float]],
    costs: dict[int, float],
    count: int,
    signals: Sequence[str],
    max_run: int = MAX_RUN,
) -> dict[str, frozenset[int]]:
    steps = list(range(*ACC_RANGE))
    sets = {name: pick_skips(sorted(steps, key=lambda m, s=scores[name]: s[m]), count, max_run) for name in signals}
    sets["oracle"] = pick_skips(sorted(steps, key=lambda m: costs[m]), count, max_run)
    sets["fixed"] = fixed_skips(steps, count)
    return sets


def forced_config() -> SADAConfig:
    return SADAConfig(acc_range=ACC_RANGE, lagrange_step=None, tokenwise=False, max_interval=MAX_INTERVAL)


# ----------------------------------------------------------------------------------------------- models


class AnalyticModel:
    """Clips are noise seeds on the analytic Gaussian-mixture model; error is relative latent L2."""

    name = "analytic"
    shape = (1, 8, 64, 16)

    def __init__(self, scheduler_name: str) -> None:
        from sada_audio.analytic import AnalyticDenoiser, GaussianMixtureData, scheduler_zoo

        self.scheduler = scheduler_zoo()[scheduler_name]
        self.denoiser = AnalyticDenoiser(GaussianMixtureData(), self.scheduler)

    def run(self, clip: int, forced: frozenset[int] | None = None, config: SADAConfig | None = None) -> torch.Tensor:
        from sada_audio.analytic import latent_noise, run_sampler

        noise = latent_noise(self.shape, seed=clip)
        if forced is None and config is None:
            return run_sampler(self.denoiser, self.scheduler, noise, 50)[0]
        policy = plan_step if forced is None else forced_skips(forced)
        with SADAHandle(self.denoiser, self.scheduler, config or forced_config(), policy=policy) as handle:
            out = run_sampler(self.denoiser, self.scheduler, noise, 50)[0]
            self.last_calls = handle.stats.model_calls
        return out

    def error(self, reference: torch.Tensor, test: torch.Tensor) -> float:
        return float((test - reference).norm() / reference.norm())


class EmbeddedModel:
    """Clips are prompts (seed 0) on the embedded tiny MusicLDM; error is log-mel PSNR (dB, VAE-decoded)."""

    name = "embedded"

    def __init__(self, scheduler_name: str) -> None:
        from sada_audio.pipelines import load_pipeline, set_scheduler

        self.pipe = load_pipeline("tiny-musicldm")
        self.pipe.set_progress_bar_config(disable=True)
        set_scheduler(self.pipe, scheduler_name)
        self.scheduler = self.pipe.scheduler

    def _call(self, prompt: str) -> torch.Tensor:
        return self.pipe(
            prompt,
            num_inference_steps=50,
            audio_length_in_s=5.12,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).audios

    def run(self, clip: str, forced: frozenset[int] | None = None, config: SADAConfig | None = None) -> torch.Tensor:
        if forced is None and config is None:
            return self._call(clip)
        handle = apply_sada(self.pipe, config or forced_config(), plan_step if forced is None else forced_skips(forced))
        try:
            out = self._call(clip)
            self.last_calls = handle.stats.model_calls
            self.last_modes = list(handle.stats.step_modes)
        finally:
            handle.remove()
        return out

    def mel(self, latents: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            mel = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor).sample
        return mel[0, 0].float().numpy()

    def error(self, reference: torch.Tensor, test: torch.Tensor) -> float:
        from .metrics import spectrogram_psnr

        return spectrogram_psnr(self.mel(reference), self.mel(test))


# ------------------------------------------------------------------------------------------------ study


def study_clip(
    model: Any,
    clip: Any,
    skips: int,
    true_stride: int | None,
    preset: SADAConfig | None,
    signals: Sequence[str] = SCORES,
    max_run: int = MAX_RUN,
) -> dict:
    """One clip: scores, costs and AUCs from its unaccelerated run; equal-NFE runs for ``signals`` (none: AUC only)."""
    started = time.perf_counter()
    trajectory = record_steps(model.scheduler, lambda: model.run(clip))
    reference = trajectory.states[-1]
    scores = signal_scores(trajectory, model.scheduler)
    costs = local_costs(trajectory, model.scheduler)
    steps = list(range(*ACC_RANGE))
    record: dict[str, Any] = {"clip": clip, "local_cost": costs, "scores": scores}
    true_costs: dict[int, float] = {}
    if true_stride:
        for m in steps[::true_stride]:
            out = model.run(clip, forced=frozenset({m}))
            true_costs[m] = model.error(reference, out)
        record["true_cost"] = true_costs
    oracle_cost = true_costs if (true_stride == 1) else costs
    labels = cheap_labels(oracle_cost, steps)
    record["auc"] = {name: roc_auc([scores[name][m] for m in steps], labels) for name in SCORES}
    if true_costs and true_stride != 1:
        sub = sorted(true_costs)
        # On the embedded model a higher PSNR is a cheaper skip: compare ranks with the negated PSNR.
        sign = -1.0 if isinstance(model, EmbeddedModel) else 1.0
        true_labels = cheap_labels({m: sign * v for m, v in true_costs.items()}, sub)
        record["local_vs_true_auc"] = roc_auc([costs[m] for m in sub], true_labels)
        record["auc_vs_true"] = {name: roc_auc([scores[name][m] for m in sub], true_labels) for name in SCORES}
    record["equal_nfe"] = {}
    if not signals:
        return record
    for name, chosen in skip_sets(scores, oracle_cost, skips, signals, max_run).items():
        out = model.run(clip, forced=chosen)
        record["equal_nfe"][name] = {"error": model.error(reference, out), "calls": model.last_calls}
    if preset is not None:
        out = model.run(clip, config=preset)
        record["preset"] = {"error": model.error(reference, out), "calls": model.last_calls}
    record["seconds"] = time.perf_counter() - started
    logger.info("clip %r done in %.0f s", clip, record["seconds"])
    return record


def summarise(records: list[dict], higher_is_better: bool) -> dict[str, Any]:
    names = list(records[0]["equal_nfe"])
    summary: dict[str, Any] = {"auc": {n: statistics.fmean(r["auc"][n] for r in records) for n in SCORES}}
    if not names:
        return summary
    summary |= {
        "equal_nfe_error": {n: statistics.fmean(r["equal_nfe"][n]["error"] for r in records) for n in names},
        "equal_nfe_worst": {
            n: (min if higher_is_better else max)(r["equal_nfe"][n]["error"] for r in records) for n in names
        },
        "calls": {n: statistics.fmean(r["equal_nfe"][n]["calls"] for r in records) for n in names},
    }
    if "preset" in records[0]:
        summary["preset_error"] = statistics.fmean(r["preset"]["error"] for r in records)
        summary["preset_calls"] = statistics.fmean(r["preset"]["calls"] for r in records)
    checked = [r for r in records if "auc_vs_true" in r]  # only the --true-oracle-clips clips have true costs
    if checked:
        summary["local_vs_true_auc"] = statistics.fmean(r["local_vs_true_auc"] for r in checked)
        summary["auc_vs_true"] = {n: statistics.fmean(r["auc_vs_true"][n] for r in checked) for n in SCORES}
    return summary


def compare_configs(
    prompts: Sequence[str], scheduler_name: str, variants: dict[str, SADAConfig], seeds: Sequence[int] = (0,)
) -> list[dict[str, Any]]:
    """Each SADA variant against the unaccelerated clip (every prompt with every seed) on the embedded model,
    with the benchmark's waveform metrics (``pair_metrics``), the calls made and the per-clip schedule
    (``step_modes``)."""
    from sada_audio.audio import pipeline_sample_rate
    from sada_audio.generation import ClipRequest, SamplingSettings, generate_batch
    from sada_audio.pipelines import load_pipeline, set_scheduler

    from .evaluate import pair_metrics

    pipe = load_pipeline("tiny-musicldm")
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, scheduler_name)
    sampling = SamplingSettings(steps=50, duration=5.12, guidance=2.0)
    rate = pipeline_sample_rate(pipe)
    rows = []
    for prompt, seed in itertools.product(prompts, seeds):
        clip = ClipRequest(prompt, seed)
        reference = generate_batch(pipe, [clip], sampling, accelerate=False).waveforms[0, 0]
        for label, config in variants.items():
            batch = generate_batch(pipe, [clip], sampling, sada_config=config)
            metrics = pair_metrics(reference, batch.waveforms[0, 0], rate, None)
            rows.append(
                {
                    "scheduler": scheduler_name,
                    "prompt": prompt,
                    "seed": seed,
                    "variant": label,
                    "calls": batch.sada_stats["model_calls"],
                    "step_modes": schedule_letters(batch.sada_stats["step_modes"]),
                    **{k: metrics[k] for k in ("mel_psnr", "mel_ssim", "mr_stft")},
                }
            )
            logger.info(
                "%s | %s | seed %d | %s: %s calls, %.1f dB",
                scheduler_name,
                prompt,
                seed,
                label,
                rows[-1]["calls"],
                rows[-1]["mel_psnr"],
            )
    return rows


def prompt_set(name: str) -> tuple[str, ...]:
    """The prompts of ``--prompt-set`` ``name``: "tune", "report", "all" (both) or "benchmark"."""
    from .benchmark import BENCHMARK_PROMPTS

    sets = {"tune": TUNING_PROMPTS, "report": REPORT_PROMPTS, "benchmark": BENCHMARK_PROMPTS}
    return sets.get(name, (*TUNING_PROMPTS, *REPORT_PROMPTS))


def _seed_list(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("analytic", "embedded"), default="analytic")
    parser.add_argument("--scheduler", choices=("ddim", "dpm++"), action="append")
    parser.add_argument(
        "--prompt-set",
        choices=("tune", "report", "all", "benchmark"),
        default="all",
        help="'benchmark': the 16 prompts of sada-audio benchmark (held out from every tuning)",
    )
    parser.add_argument(
        "--seeds", type=_seed_list, default=[0], help="comma-separated seeds of every prompt (--compare only)"
    )
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips of the set")
    parser.add_argument("--skips", type=int, default=27, help="skipped steps per clip at equal NFE (27 = 23 calls)")
    parser.add_argument("--max-run", type=int, default=MAX_RUN, help="longest run of skips in a chosen set")
    parser.add_argument("--true-oracle-clips", type=int, default=0, help="clips with single-skip runs (embedded)")
    parser.add_argument("--true-oracle-stride", type=int, default=3)
    parser.add_argument("--no-preset", action="store_true", help="skip the shipped preset's reference run")
    parser.add_argument(
        "--signals",
        default=",".join(SCORES),
        help="comma-separated signals to run at equal NFE (besides oracle and fixed); empty = AUC only",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compare",
        action="append",
        metavar="LABEL=OVERRIDES",
        help="instead of the study: compare presets on the embedded model, each the musicldm preset with "
        "overrides (e.g. 'adaptive=criterion=\"published\"; lagrange_step=24'; 'preset=' for the preset itself)",
    )
    args = parser.parse_args(argv)
    if args.seeds != [0] and not args.compare:
        parser.error("--seeds needs --compare (the study runs seed 0)")
    if args.prompt_set == "benchmark" and args.model == "analytic" and not args.compare:
        parser.error("--prompt-set benchmark names prompts: use it with --model embedded or --compare")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.compare:
        base = SADAConfig.preset("musicldm")
        variants = {label: base.with_overrides(text) for label, _, text in (v.partition("=") for v in args.compare)}
        prompts = prompt_set(args.prompt_set)
        prompts = prompts[: args.clips] if args.clips else prompts
        rows = [
            row
            for name in args.scheduler or ["ddim", "dpm++"]
            for row in compare_configs(prompts, name, variants, args.seeds)
        ]
        results["compare"] = rows
        for row in rows:
            print(json.dumps(row))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
        return
    for scheduler_name in args.scheduler or ["ddim", "dpm++"]:
        if args.model == "analytic":
            model: Any = AnalyticModel(scheduler_name)
            clips: list[Any] = list(range(100, 108) if args.prompt_set == "report" else range(8))
            true_clips, stride = len(clips), 1
        else:
            model = EmbeddedModel(scheduler_name)
            clips = list(prompt_set(args.prompt_set))
            true_clips, stride = args.true_oracle_clips, args.true_oracle_stride
        clips = clips[: args.clips] if args.clips else clips
        preset = None if args.no_preset else FIXED_23
        signals = [name for name in args.signals.split(",") if name]
        records = [
            study_clip(model, clip, args.skips, stride if i < true_clips else None, preset, signals, args.max_run)
            for i, clip in enumerate(clips)
        ]
        results[scheduler_name] = {"records": records}
        if args.out:  # the raw records first: they cost the compute, the summary is cheap to redo
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))
        results[scheduler_name]["summary"] = summarise(records, higher_is_better=args.model == "embedded")
        print(scheduler_name, json.dumps(results[scheduler_name]["summary"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
