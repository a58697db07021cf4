"""Cost of one SADA step on audio UNets: full call, pruned call, and SADA's own bookkeeping.

Run:  python -m sada_audio.evaluation.engine_overhead [--repeats 7] [--no-real-size] [--json out.json]

Two UNets with random weights (fidelity is not measured here, only cost):
- ``tiny``: the UNet of the tiny MusicLDM test pipeline, latent 8 x 64 x 16;
- ``real-size``: the released AudioLDM / MusicLDM UNet architecture (185 M parameters), latent
  8 x 256 x 16 (10.24 s of audio), batch 2 as with classifier-free guidance.

For each: the median time of a plain model call, of a call with SADA attached in full mode (hooks
and cache writes), of a pruned call at the preset (token selection included), measured in
interleaved order after a warm-up; and the bookkeeping of one solver step (criterion, gradients,
planning), which with the hooks' own cost must stay under 2% of a model call.

Then whole tiny-pipeline calls of every family, baseline and SADA interleaved, and the end-to-end
speedup the tiny run's decision schedule implies at real size (its full / pruned / skipped steps
priced with the real-size costs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from sada_audio import SADAConfig, SADAHandle, StepMode, apply_sada
from sada_audio.method.engine import SADAEngine
from sada_audio.models import unet_token_blocks
from sada_audio.solvers import solver_adapter_for
from sada_audio.testing import (
    real_size_audioldm_unet_config,
    tiny_audioldm2_pipeline,
    tiny_audioldm_pipeline,
    tiny_musicldm_pipeline,
)

TINY_BUILDERS = {
    "musicldm": tiny_musicldm_pipeline,
    "audioldm": tiny_audioldm_pipeline,
    "audioldm2": tiny_audioldm2_pipeline,
}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(unet: UNet2DConditionModel, latent_hw: tuple[int, int], config: SADAConfig, repeats: int) -> dict:
    channels = unet.config.in_channels
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, channels, *latent_hw, generator=generator)
    labels = torch.randn(2, unet.config.projection_class_embeddings_input_dim, generator=generator)
    timestep = torch.tensor(500)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)
    scheduler.set_timesteps(50)
    token_momentum = torch.randn(*latent_hw, generator=generator)

    def call() -> torch.Tensor:
        return unet(sample, timestep, encoder_hidden_states=None, class_labels=labels, return_dict=False)[0]

    pruned_shares: list[float] = []

    def with_sada(mode: StepMode) -> float:
        handle = SADAHandle(unet, scheduler, config, blocks=unet_token_blocks(unet))
        try:
            handle.engine.start(solver_adapter_for(scheduler))
            handle.engine.force_plan(StepMode.FULL)
            call()  # fills the token caches
            handle.engine.force_plan(mode, token_momentum)
            stats = handle.stats
            computed, total = stats.tokens_computed, stats.tokens_total
            elapsed = _timed(call)
            pruned_shares.append((stats.tokens_computed - computed) / (stats.tokens_total - total))
            return elapsed
        finally:
            handle.remove()

    timings: dict[str, list[float]] = {"plain": [], "full": [], "pruned": []}
    with torch.no_grad():
        call()
        with_sada(StepMode.PRUNED)
        for _ in range(repeats):
            timings["plain"].append(_timed(call))
            timings["full"].append(with_sada(StepMode.FULL))
            timings["pruned"].append(with_sada(StepMode.PRUNED))
        bookkeeping = _bookkeeping_per_step(scheduler, config, (1, channels, *latent_hw), repeats)
    plain, full, pruned = (statistics.median(timings[k]) for k in ("plain", "full", "pruned"))
    return {
        "latent": [channels, *latent_hw],
        "batch": 2,
        "plain_call_s": plain,
        "sada_full_call_s": full,
        "pruned_call_s": pruned,
        "pruned_speedup": plain / pruned,
        "tokens_computed_in_pruned_call": pruned_shares[-1],
        "hook_overhead_s": full - plain,
        "step_bookkeeping_s": bookkeeping,
        "bookkeeping_share": (bookkeeping + max(full - plain, 0.0)) / plain,
    }


def _bookkeeping_per_step(scheduler, config: SADAConfig, shape: tuple[int, ...], repeats: int) -> float:
    """Median time SADA spends in one solver step outside the model: gradients, criterion, plan."""
    generator = torch.Generator().manual_seed(1)
    samples = [torch.randn(shape, generator=generator) for _ in range(4)]
    engine = SADAEngine(config)
    per_step = []
    for _ in range(repeats):
        engine.start(solver_adapter_for(scheduler))
        for step in range(config.bounds(50).acc_end - 1):
            output, sample, next_sample = samples[step % 4], samples[(step + 1) % 4], samples[(step + 2) % 4]
            start = time.perf_counter()
            engine.after_step(output, sample, next_sample)
            if step >= 3:
                per_step.append(time.perf_counter() - start)
    return statistics.median(per_step)


def end_to_end(repeats: int, steps: int = 50) -> dict[str, dict]:
    """Whole tiny-pipeline calls, baseline and SADA (family preset) interleaved, same prompt and seed."""
    results = {}
    for family, builder in TINY_BUILDERS.items():
        pipe = builder()
        pipe.set_progress_bar_config(disable=True)

        def run(pipe=pipe) -> object:
            return pipe(
                "a slow piano melody",
                num_inference_steps=steps,
                audio_length_in_s=2.56,
                guidance_scale=2.5,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            ).audios

        run()
        baseline, accelerated = [], []
        for _ in range(repeats):
            baseline.append(_timed(run))
            with apply_sada(pipe) as handle:
                accelerated.append(_timed(run))
                stats = handle.stats
        results[family] = {
            "baseline_s": statistics.median(baseline),
            "sada_s": statistics.median(accelerated),
            "speedup": statistics.median(b / a for b, a in zip(baseline, accelerated, strict=True)),
            "model_calls": stats.model_calls,
            "num_steps": stats.num_steps,
            "pruned_fraction": stats.pruned_fraction,
            "step_modes": stats.step_modes,
        }
    return results


def implied_speedup(step_modes: list[str], costs: dict) -> float:
    """End-to-end speedup a decision schedule implies for a UNet with the measured per-mode costs."""
    per_mode = {
        "full": costs["sada_full_call_s"] + costs["step_bookkeeping_s"],
        "pruned": costs["pruned_call_s"] + costs["step_bookkeeping_s"],
        "skipped": costs["step_bookkeeping_s"],
    }
    return len(step_modes) * costs["plain_call_s"] / sum(per_mode[mode] for mode in step_modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-real-size", action="store_true", help="only the tiny UNet (seconds, not minutes)")
    parser.add_argument("--preset", default="musicldm")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    config = SADAConfig.preset(args.preset)
    unets = {"tiny": (TINY_BUILDERS[args.preset]().unet, (64, 16))}
    if not args.no_real_size:
        torch.manual_seed(0)
        unets["real-size"] = (UNet2DConditionModel(**real_size_audioldm_unet_config()).eval(), (256, 16))
    results = {name: measure(unet, hw, config, args.repeats) for name, (unet, hw) in unets.items()}

    print(
        f"SADA step costs, preset {args.preset!r}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved repeats"
    )
    print(
        "| UNet | latent | plain call | SADA full call | pruned call | pruned speedup | tokens computed "
        "| step bookkeeping | bookkeeping + hooks / call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {'x'.join(map(str, r['latent']))} | {r['plain_call_s'] * 1e3:.1f} ms "
            f"| {r['sada_full_call_s'] * 1e3:.1f} ms | {r['pruned_call_s'] * 1e3:.1f} ms "
            f"| {r['pruned_speedup']:.2f}x | {r['tokens_computed_in_pruned_call']:.0%} "
            f"| {r['step_bookkeeping_s'] * 1e3:.2f} ms | {r['bookkeeping_share']:.2%} |"
        )

    pipelines = end_to_end(args.repeats)
    print(
        f"\nTiny pipelines, 50 DDIM steps, guidance 2.5, 2.56 s, family preset, median of {args.repeats} "
        "interleaved runs (random weights: speed only)"
    )
    print("| pipeline | baseline | SADA | speedup | NFE | pruned token share |")
    print("|---|---|---|---|---|---|")
    for family, r in pipelines.items():
        print(
            f"| {family} | {r['baseline_s']:.3f} s | {r['sada_s']:.3f} s | {r['speedup']:.2f}x "
            f"| {r['model_calls']}/{r['num_steps']} | {r['pruned_fraction']:.1%} |"
        )
    if "real-size" in results:
        implied = implied_speedup(pipelines[args.preset]["step_modes"], results["real-size"])
        print(
            f"\nThe {args.preset} schedule above, priced with the real-size per-step costs: {implied:.2f}x end to end"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"preset": config.to_dict(), "unets": results, "pipelines": pipelines}, handle, indent=2)


if __name__ == "__main__":
    main()
