"""CPU time of a full call of the real-size UNet with SADA and of a pruned (token pruning on) and a shallow call
(shallow steps on): the lean version of the step-cost workload's prices, for sizes where every call takes tens
of seconds.

One handle, calls planned as new steps (each round a full call that refreshes the token caches and deep
features, then the cheaper kinds, as in ``SADA.step_costs``), timed by the process's CPU time (immune to
other jobs on a shared CPU; run with one thread)::

    OMP_NUM_THREADS=1 python -m tools.pruned_call_times --frames 1024 --batch 2 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sada_audio import SADAConfig, SADAHandle, StepMode
from sada_audio.evaluation.step_costs import real_size_unet, unet_bench
from sada_audio.models import unet_deep_blocks, unet_token_blocks
from sada_audio.solvers import solver_adapter_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (full, then each cheaper kind)")
    parser.add_argument("--sada", default="stepwise=false; tokenwise=true", help="overrides of the musicldm preset")
    args = parser.parse_args()

    unet = real_size_unet()
    bench = unet_bench(unet, args.frames, args.batch, 50, 1)
    config = SADAConfig.preset("musicldm").with_overrides(args.sada)
    momentum = torch.randn(*bench.sample.shape[-2:], generator=torch.Generator().manual_seed(0))
    handle = SADAHandle(
        unet, bench.scheduler, config, blocks=unet_token_blocks(unet), deep_blocks=unet_deep_blocks(unet)
    )
    handle.engine.start(solver_adapter_for(bench.scheduler))
    kinds = [StepMode.PRUNED] if config.tokenwise else []
    kinds += [StepMode.SHALLOW] if config.shallow != "off" else []
    times: dict[str, list[float]] = {mode.value: [] for mode in (StepMode.FULL, *kinds)}

    def call(mode: StepMode) -> tuple[float, int, int]:
        handle.engine.force_plan(mode, momentum)
        stats = handle.stats
        computed, total = stats.tokens_computed, stats.tokens_total
        start = time.process_time()
        bench.call()
        elapsed = time.process_time() - start
        stats = handle.stats
        return elapsed, stats.tokens_computed - computed, stats.tokens_total - total

    try:
        call(StepMode.FULL)  # warm-up; fills the token caches and deep features
        for _ in range(args.rounds):
            for mode in times:  # the full call of each round refreshes the caches its cheaper calls use
                elapsed, computed, total = call(StepMode(mode))
                times[mode].append(elapsed)
                print(f"{mode}: {elapsed:.2f} s CPU, {computed} of {total} block tokens", flush=True)
    finally:
        handle.remove()
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    shares = ", ".join(f"{mode} {seconds:.2f} s ({seconds / medians['full']:.3f})" for mode, seconds in medians.items())
    print(
        f"8x{args.frames}x16, batch {args.batch}, [{args.sada}]: {shares} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} thread(s))"
    )


if __name__ == "__main__":
    main()
