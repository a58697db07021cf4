"""Every model family through SADA: NFE of a 50-step tiny run with the family preset, per scheduler.

Run:  python -m tools.family_nfe [--steps 50] [--analytic] [--controlnet-repeats 5]
      [--json out.json]

For every supported pipeline family (tiny random pipelines from ``tests.support.tiny_pipelines``) and each
scheduler it can run with, one baseline call and one call with ``apply_sada(pipe)`` (the family's
preset), same seed: NFE, skipped and pruned steps, the pruned token share, the relative deviation of
the output from the baseline (random weights: this says nothing about fidelity, only that the run
is sane) and which test file covers the pair.

``--controlnet-repeats N`` times the ControlNet pipelines three ways (baseline, SADA, SADA with the
ControlNet run on every step as if only the UNet were hooked).

``--analytic`` adds the accuracy table on the analytic Gaussian-mixture model (exact denoiser,
``sada_audio.analytic``) for every solver family: SADA's deviation from the unaccelerated run, and
both runs' distance to a 400-step reference next to that of a plain run with SADA's NFE; plus the
two readings of flow matching (Euler in ``sigma`` vs the variance-preserving reading the adapter uses)
and Stable Audio Open's SDE sampler.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from sada_audio import SADAConfig, SADAHandle, apply_sada
from sada_audio.analytic import (
    AnalyticDenoiser,
    GaussianMixtureData,
    latent_noise,
    relative_error,
    run_sampler,
    scheduler_zoo,
)
from sada_audio.evaluation.tables import markdown_table
from sada_audio.models import model_adapter_for
from sada_audio.pipelines import set_scheduler
from sada_audio.solvers import FlowMatchEulerAdapter
from tests.support.tiny_pipelines import (
    image_call_kwargs,
    stable_audio_open_scheduler,
    tiny_audioldm2_pipeline,
    tiny_audioldm_pipeline,
    tiny_controlnet_pipeline,
    tiny_flux_pipeline,
    tiny_musicldm_pipeline,
    tiny_sd2_pipeline,
    tiny_sdxl_pipeline,
    tiny_stable_audio_pipeline,
)

VP_SCHEDULERS = ("ddim", "euler", "euler-karras", "dpm++")
# family -> (builder, scheduler choices: names for set_scheduler, or None for the pipeline's own)
FAMILIES: dict[str, tuple[Callable[[], Any], tuple[str | None, ...]]] = {
    "musicldm": (tiny_musicldm_pipeline, VP_SCHEDULERS),
    "audioldm": (tiny_audioldm_pipeline, VP_SCHEDULERS),
    "audioldm2": (tiny_audioldm2_pipeline, VP_SCHEDULERS),
    "sd2": (tiny_sd2_pipeline, VP_SCHEDULERS),
    "sdxl": (tiny_sdxl_pipeline, VP_SCHEDULERS),
    "controlnet": (tiny_controlnet_pipeline, VP_SCHEDULERS),
    "controlnet-xl": (lambda: tiny_controlnet_pipeline(xl=True), VP_SCHEDULERS),
    "flux": (tiny_flux_pipeline, (None,)),
    "stable-audio": (tiny_stable_audio_pipeline, (None, "cosine-sde")),
}
# (family, scheduler choice or the pipeline's own scheduler class) -> the tests that run the pair
# through SADA on a tiny pipeline
TESTED = {
    **{(f, s): "test_sada_pipelines" for f in ("musicldm", "audioldm", "audioldm2") for s in VP_SCHEDULERS},
    ("sd2", "ddim"): "test_families",
    ("sdxl", "euler"): "test_families",
    ("sdxl", "dpm++"): "test_families (sample)",
    ("controlnet", "ddim"): "test_families",
    ("controlnet-xl", "euler"): "test_families",
    ("flux", "FlowMatchEulerDiscreteScheduler"): "test_families, test_analytic",
    ("stable-audio", "EDMDPMSolverMultistepScheduler"): "test_families, test_analytic",
    ("stable-audio", "cosine-sde"): "test_families, test_analytic",
}


def _generate(pipe: Any, steps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    name = type(pipe).__name__
    if name in ("MusicLDMPipeline", "AudioLDMPipeline", "AudioLDM2Pipeline"):
        audio = pipe("a slow piano melody", num_inference_steps=steps, generator=generator, output_type="np").audios
        return torch.from_numpy(audio)
    if name == "StableAudioPipeline":
        return pipe("rain", num_inference_steps=steps, generator=generator, output_type="latent").audios
    return pipe(
        "a red cube", num_inference_steps=steps, generator=generator, output_type="latent", **image_call_kwargs(pipe)
    ).images


def _scheduler_label(pipe: Any, choice: str | None) -> str:
    name = type(pipe.scheduler).__name__
    if choice == "euler-karras":
        return f"{name} (Karras sigmas)"
    prediction = getattr(pipe.scheduler.config, "prediction_type", None)
    return f"{name} ({prediction})" if prediction == "v_prediction" else name


def pipeline_rows(steps: int) -> list[dict[str, Any]]:
    rows = []
    for family, (build, choices) in FAMILIES.items():
        pipe = build()
        own = pipe.scheduler
        for choice in choices:
            if choice == "cosine-sde":
                pipe.scheduler = stable_audio_open_scheduler()
            elif choice is not None:
                set_scheduler(pipe, choice)
            started = time.perf_counter()
            baseline = _generate(pipe, steps)
            baseline_time = time.perf_counter() - started
            with apply_sada(pipe) as handle:
                started = time.perf_counter()
                accelerated = _generate(pipe, steps)
                sada_time = time.perf_counter() - started
                stats = handle.stats
            rows.append(
                {
                    "family": family,
                    "pipeline": type(pipe).__name__,
                    "scheduler": _scheduler_label(pipe, choice),
                    "tested": TESTED.get((family, choice or type(pipe.scheduler).__name__), "no"),
                    "nfe": stats.model_calls,
                    "steps": stats.num_steps,
                    "skipped": len(stats.skipped_steps),
                    "pruned_steps": len(stats.pruned_steps),
                    "pruned_fraction": round(stats.pruned_fraction, 4),
                    "fallbacks": stats.fallbacks,
                    "deviation": round(relative_error(accelerated, baseline), 5),
                    "baseline_s": round(baseline_time, 3),
                    "sada_s": round(sada_time, 3),
                }
            )
            pipe.scheduler = own
    return rows


def _controlnet_times(pipe: Any, steps: int, repeats: int) -> dict[str, float]:
    adapter = model_adapter_for(pipe)
    config = SADAConfig.preset(adapter.family)

    def unet_only() -> SADAHandle:
        return SADAHandle(pipe.unet, pipe.scheduler, config, layout=adapter.layout, scheduler_owner=pipe)

    variants = {
        "baseline": nullcontext,
        "sada": lambda: apply_sada(pipe, config),
        "sada, controlnet every step": unet_only,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, attach in variants.items():
            with attach():
                started = time.perf_counter()
                _generate(pipe, steps)
                times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def controlnet_rows(steps: int, repeats: int) -> list[dict[str, Any]]:
    """Wall time of the tiny ControlNet pipelines: baseline, SADA with the ControlNet skipped with the
    UNet (the adapter's default), and SADA with the ControlNet run every step (hooks on the UNet only).
    Median of ``repeats`` interleaved runs."""
    rows = []
    for family in ("controlnet", "controlnet-xl"):
        pipe = FAMILIES[family][0]()
        rows.append({"pipeline": type(pipe).__name__, **_controlnet_times(pipe, steps, repeats)})
    return rows


class _FlowMatchInSigma(FlowMatchEulerAdapter):
    """The other reading of flow matching: Euler in ``t = sigma`` with ``a = 1`` (gradient = velocity)."""

    def ode_time(self, n: int) -> tuple[float, float]:
        return 1.0, float(self.scheduler.sigmas[n])


def analytic_rows(steps: int) -> list[dict[str, Any]]:
    data, noise = GaussianMixtureData(), latent_noise((2, 4, 24, 12))
    cases: list[tuple[str, Any, str, Any]] = [
        (name, scheduler, "stable-audio" if name == "edm-dpm++" else "flux" if name == "flow" else "sd2", None)
        for name, scheduler in scheduler_zoo().items()
    ]
    cases.append(("flow, Euler in sigma (a=1, t=sigma)", scheduler_zoo()["flow"], "flux", _FlowMatchInSigma))
    cases.append(("cosine DPM-Solver SDE (Stable Audio Open)", stable_audio_open_scheduler(), "stable-audio", None))
    rows = []
    for name, scheduler, preset, reading in cases:
        denoiser = AnalyticDenoiser(data, scheduler)

        def run(n: int, scheduler: Any = scheduler, denoiser: Any = denoiser) -> torch.Tensor:
            return run_sampler(denoiser, scheduler, noise, n, seed=0)[0]

        baseline, reference = run(steps), run(8 * steps)
        adapter = {} if reading is None else {"solver_adapter": reading}
        with SADAHandle(denoiser, scheduler, SADAConfig.preset(preset), **adapter) as handle:
            accelerated = run(steps)
            nfe = handle.stats.model_calls
        rows.append(
            {
                "solver": name,
                "preset": preset,
                "nfe": nfe,
                "deviation": round(relative_error(accelerated, baseline), 4),
                "sada_vs_reference": round(relative_error(accelerated, reference), 4),
                "plain_same_nfe_vs_reference": round(relative_error(run(nfe), reference), 4),
                "plain_vs_reference": round(relative_error(baseline, reference), 4),
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print("\n".join(markdown_table(columns, [[row[c] for c in columns] for row in rows])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--analytic", action="store_true", help="also the accuracy table on the analytic model")
    parser.add_argument(
        "--controlnet-repeats", type=int, default=0, help="also time the ControlNet pipelines (median of N)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write all rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # deprecated-pipeline and torchsde boundary warnings

    results = {"pipelines": pipeline_rows(args.steps)}
    _print_table(
        results["pipelines"],
        [
            "pipeline",
            "scheduler",
            "tested",
            "nfe",
            "skipped",
            "pruned_steps",
            "pruned_fraction",
            "deviation",
            "baseline_s",
            "sada_s",
        ],
    )
    if args.controlnet_repeats:
        results["controlnet"] = controlnet_rows(args.steps, args.controlnet_repeats)
        print()
        _print_table(results["controlnet"], list(results["controlnet"][0]))
    if args.analytic:
        results["analytic"] = analytic_rows(args.steps)
        print()
        _print_table(results["analytic"], list(results["analytic"][0]))
    if args.json:
        from sada_audio.audio import write_json

        write_json(args.json, results)


if __name__ == "__main__":
    main()
