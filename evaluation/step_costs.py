"""The step-cost workloads of ``sada-audio benchmark``: every method's kinds of step, priced on the released
MusicLDM / AudioLDM UNet architecture at real size (random weights: cost only, never fidelity), and the
end-to-end speedup each method's decision schedule implies there.

Kept apart from the quality workload so that it runs where only torch and diffusers are installed (a GPU
machine): ``python -m sada_audio.evaluation.step_costs --schedules results.json --device cuda --dtype float16``
prices the schedules of an earlier benchmark's ``results.json`` on the GPU and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sada_audio import SADAConfig, StepMode
from sada_audio.audio_ldm_parts import ddim_scheduler, real_size_audioldm_unet_config

from .accelerators import (
    SADA,
    Accelerator,
    Baseline,
    DenoiserBench,
    after_full_call,
    forced_plan_handle,
    sada_accelerators,
)
from .peers import peer_accelerators
from .tables import markdown_table

__all__ = ["call_flops", "implied_speedup", "real_size_unet", "run_step_costs", "unet_bench"]

#: Untimed denoiser calls before the first measurement on a GPU.
GPU_WARM_UP_CALLS = 20
#: Frequency rows of a MusicLDM / AudioLDM latent (64 mel bins over the VAE's 4x downsampling).
LATENT_ROWS = 16


def real_size_unet() -> UNet2DConditionModel:
    """The released MusicLDM / AudioLDM UNet architecture (185 M parameters) with random weights."""
    torch.manual_seed(0)
    return UNet2DConditionModel(**real_size_audioldm_unet_config()).eval()


def unet_bench(
    unet: UNet2DConditionModel, frames: int, batch: int, steps: int, repeats: int, clock: str = "wall"
) -> DenoiserBench:
    """``unet`` (MusicLDM / AudioLDM style: the CLAP vector as class labels) called on a random latent
    ``batch x 8 x frames x 16`` on its own device and in its precision, with the released checkpoints' DDIM
    scheduler set to ``steps`` steps (SADA's bookkeeping and DeepCache's step counter read it)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, unet.config.in_channels, frames, LATENT_ROWS, generator=generator)
    labels = torch.randn(batch, unet.config.projection_class_embeddings_input_dim, generator=generator)
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(steps)
    weight = next(unet.parameters())
    kwargs = {"encoder_hidden_states": None, "class_labels": labels.to(weight)}
    # the priced step lies inside the run also for short runs (``benchmark --steps 8``)
    step = min(DenoiserBench.step, steps // 2)
    return DenoiserBench(unet, scheduler, sample.to(weight), kwargs, repeats=repeats, step=step, clock=clock)


def implied_speedup(
    kind_counts: dict[str, float], costs: dict[str, float], baseline_full: float, baseline_steps: float | None = None
) -> float:
    """End-to-end speedup of a schedule with these mean counts of each step kind, priced with ``costs``, over
    ``baseline_steps`` full steps of ``baseline_full`` (by default as many steps as the schedule has: a method
    that runs fewer steps, such as the fewer-steps peer, must give the baseline's count)."""
    steps = sum(kind_counts.values()) if baseline_steps is None else baseline_steps
    return steps * baseline_full / sum(count * costs[kind] for kind, count in kind_counts.items())


def run_step_costs(
    benches: dict[str, Callable[[], DenoiserBench]],
    methods: Sequence[Accelerator],
    quality_summary: list[dict[str, Any]],
    progress: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Per bench (name -> builder): every method's step costs, and the speedup each of its schedules on the
    quality workload (``quality_summary``: mean ``step_kinds`` per scheduler and method label) implies there.
    The baseline (first method) gives the reference full step."""
    results: dict[str, Any] = {}
    for name, build in benches.items():
        bench = build()
        # A GPU needs many calls to reach its steady clocks and pick its kernels; one call suffices on a CPU.
        for _ in range(GPU_WARM_UP_CALLS if bench.sample.is_cuda else 1):
            bench.call()
        entries, skipped = [], {}
        items = list(methods)
        with progress(items, f"step costs, {name}") if progress else contextlib.nullcontext(items) as iterator:
            for method in iterator:
                reason = method.unavailable_reason(bench.pipe)
                if reason is not None:
                    skipped[method.label] = reason
                    continue
                entry = {
                    "label": method.label,
                    "method": method.name,
                    "setting": method.setting,
                    "costs": method.step_costs(bench),
                }
                tokens = getattr(method, "pruned_call_tokens", None)
                if tokens is not None:
                    # grid tokens the pruned call's transformer blocks computed, of all they had
                    entry["pruned_call_tokens"] = list(tokens)
                deep_runs = getattr(method, "shallow_call_deep_runs", None)
                if deep_runs is not None:
                    # modules inside the deep blocks that ran in a shallow call, and in a full one
                    entry["shallow_call_deep_runs"] = list(deep_runs)
                entries.append(entry)
        baseline_full = entries[0]["costs"]["full"]
        # per scheduler, the baseline's step count: every schedule is priced against the same full run
        baseline_steps = {
            summary["scheduler"]: sum(summary["step_kinds"].values())
            for summary in quality_summary
            if summary["label"] == entries[0]["label"]
        }
        for entry in entries:
            entry["implied_speedup"] = {
                summary["scheduler"]: implied_speedup(
                    summary["step_kinds"], entry["costs"], baseline_full, baseline_steps.get(summary["scheduler"])
                )
                for summary in quality_summary
                if summary["label"] == entry["label"]
            }
        results[name] = {
            "latent": list(bench.sample.shape[1:]),
            "batch": bench.sample.shape[0],
            "dtype": str(bench.sample.dtype).removeprefix("torch."),
            "device": str(bench.sample.device),
            "entries": entries,
            "skipped": skipped,
        }
        del bench
    return results


def real_size_benches(
    latent_frames: Sequence[int],
    batch: int,
    steps: int,
    repeats: int,
    device: str | torch.device,
    dtype: torch.dtype,
    clock: str = "wall",
) -> dict[str, Callable[[], DenoiserBench]]:
    """One bench builder per latent length, each on a fresh real-size UNet on ``device`` in ``dtype``."""

    def build(frames: int) -> DenoiserBench:
        unet = real_size_unet().to(device=device, dtype=dtype)
        return unet_bench(unet, frames, batch, steps, repeats, clock)

    return {f"real-size UNet, latent 8x{frames}x16": functools.partial(build, frames) for frames in latent_frames}


def call_flops(bench: DenoiserBench, config: SADAConfig) -> dict[str, int]:
    """FLOPs (``torch.utils.flop_counter``) of a full call of ``bench``'s UNet with SADA at ``config``, and of a
    pruned call (token pruning on) and a shallow call (shallow steps on), each after a full one
    (:func:`after_full_call`) as in :meth:`SADA.step_costs`; and the block tokens of each: what the calls' times
    should follow, counted rather than timed."""
    from torch.utils.flop_counter import FlopCounterMode

    token_momentum = torch.randn(*bench.sample.shape[-2:], generator=torch.Generator().manual_seed(0))
    handle, policy = forced_plan_handle(bench, config)
    modes = [StepMode.FULL]
    modes += [StepMode.PRUNED] if config.tokenwise else []
    modes += [StepMode.SHALLOW] if config.shallow != "off" else []
    counts: dict[str, int] = {}
    try:
        for mode in modes:
            after_full_call(handle, policy, bench, mode, token_momentum)
            stats = handle.stats
            computed, total = stats.tokens_computed, stats.tokens_total
            with FlopCounterMode(display=False) as counter:
                bench.call()
            counts[f"{mode.value}_flops"] = counter.get_total_flops()
            stats = handle.stats
            counts[f"{mode.value}_tokens"] = stats.tokens_computed - computed
            if mode is StepMode.FULL:
                counts["tokens_total"] = stats.tokens_total - total
    finally:
        handle.remove()
    return counts


def methods_for_costs(preset: str, families: Sequence[str]) -> list[Accelerator]:
    """Baseline, SADA (``preset`` and ablations) and the UNet peers, restricted to ``families`` if given."""
    methods = [Baseline(), *sada_accelerators(SADAConfig.preset(preset), preset), *peer_accelerators()]
    wanted = {family.lower() for family in families}
    return [m for m in methods if not wanted or m.name.lower() in wanted or isinstance(m, Baseline)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--schedules", help="results.json of a benchmark run: price its schedules (default: step costs only)"
    )
    parser.add_argument("--preset", default="musicldm", help="SADA preset when no --schedules are given")
    parser.add_argument("--steps", type=int, default=50, help="steps when no --schedules are given")
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--methods", default="", help="comma-separated method families (default: all)")
    parser.add_argument(
        "--sada",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="price only the baseline and SADA at the preset with these overrides (repeatable), e.g. "
        "'stepwise=false; tokenwise=true; kept_tokens=0.4'",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="CPU only: 'process' times by this process's CPU time, robust to other processes on the machine",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="also count the FLOPs of a full, a pruned (token-wise SADA) and a shallow call (shallow steps on); "
        "on the meta device, instantly",
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    summary, preset, steps = [], args.preset, args.steps
    if args.schedules:
        with open(args.schedules, encoding="utf-8") as handle:
            earlier = json.load(handle)
        summary, preset, steps = earlier["quality"]["summary"], earlier["sada_preset"], earlier["settings"]["steps"]
    methods = methods_for_costs(preset, [name for name in args.methods.split(",") if name])
    if args.sada:
        config = SADAConfig.preset(preset)
        methods = [Baseline(), *(SADA(config.with_overrides(text), text) for text in args.sada)]
    dtype = getattr(torch, args.dtype)
    benches = real_size_benches(args.frames, args.batch, steps, args.repeats, args.device, dtype, args.clock)
    results = run_step_costs(benches, methods, summary)
    if args.flops:
        by_label = {method.label: method for method in methods}
        # FLOPs depend on shapes only: counted on the meta device, without computing anything
        unet = real_size_unet().to("meta")
        for frames, bench_result in zip(args.frames, results.values(), strict=True):
            bench = unet_bench(unet, frames, args.batch, steps, repeats=1)
            for entry in bench_result["entries"]:
                method = by_label[entry["label"]]
                if isinstance(method, SADA) and (method.config.tokenwise or method.config.shallow != "off"):
                    entry["flops"] = call_flops(bench, method.config)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    schedulers = list(dict.fromkeys(s["scheduler"] for s in summary))
    for name, bench in results.items():
        print(f"\n{name}, batch {bench['batch']}, {bench['dtype']} on {device}, torch {torch.__version__}")
        base = bench["entries"][0]["costs"]["full"]
        rows = [
            [
                e["label"],
                *(f"{kind} {seconds * 1e3:.2f} ms ({seconds / base:.1%})" for kind, seconds in e["costs"].items()),
                *(f"{s} {e['implied_speedup'][s]:.2f}x" for s in schedulers if s in e["implied_speedup"]),
            ]
            for e in bench["entries"]
        ]
        print(
            "\n".join(
                markdown_table(["method", "step costs and implied speedups"], [[r[0], "; ".join(r[1:])] for r in rows])
            )
        )
        for entry in bench["entries"]:
            if "pruned_call_tokens" in entry:
                computed, total = entry["pruned_call_tokens"]
                print(f"{entry['label']}: pruned call computed {computed} of {total} block tokens")
            if entry.get("shallow_call_deep_runs"):
                shallow, full = entry["shallow_call_deep_runs"]
                print(f"{entry['label']}: shallow call ran {shallow} of a full call's {full} deep-block modules")
            for kind in ("pruned", "shallow"):
                flops = entry.get("flops", {})
                if f"{kind}_flops" in flops:
                    share = flops[f"{kind}_flops"] / flops["full_flops"]
                    gflops = flops[f"{kind}_flops"] / 1e9
                    print(f"{entry['label']}: {kind} call {gflops:.1f} GFLOP, {share:.1%} of a full call")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": device, "torch": torch.__version__, "step_costs": results}, handle, indent=2)


if __name__ == "__main__":
    main()
