"""CPU time of a full and of a pruned call of the real-size UNet with SADA's token pruning: the lean version of
the step-cost workload's pruned-call price, for sizes where every call takes tens of seconds.

One handle, calls planned as new steps (a pruned call after a full one that refreshes the caches, as in
``SADA.step_costs``), timed by the process's CPU time (immune to other jobs on a shared CPU; run with one
thread)::

    OMP_NUM_THREADS=1 python -m tools.pruned_call_times --frames 1024 --batch 2 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sada_audio import SADAConfig, SADAHandle, StepMode
from sada_audio.evaluation.step_costs import real_size_unet, unet_bench
from sada_audio.models import unet_token_blocks
from sada_audio.solvers import solver_adapter_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="timed (full, pruned) pairs after a warm-up call")
    parser.add_argument("--sada", default="stepwise=false; tokenwise=true", help="overrides of the musicldm preset")
    args = parser.parse_args()

    unet = real_size_unet()
    bench = unet_bench(unet, args.frames, args.batch, 50, 1)
    config = SADAConfig.preset("musicldm").with_overrides(args.sada)
    momentum = torch.randn(*bench.sample.shape[-2:], generator=torch.Generator().manual_seed(0))
    handle = SADAHandle(unet, bench.scheduler, config, blocks=unet_token_blocks(unet))
    handle.engine.start(solver_adapter_for(bench.scheduler))
    times: dict[str, list[float]] = {"full": [], "pruned": []}

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
        call(StepMode.FULL)  # warm-up; fills the token caches
        for _ in range(args.rounds):
            for mode in (StepMode.FULL, StepMode.PRUNED):
                elapsed, computed, total = call(mode)
                times[mode.value].append(elapsed)
                print(f"{mode.value}: {elapsed:.2f} s CPU, {computed} of {total} block tokens", flush=True)
    finally:
        handle.remove()
    full, pruned = statistics.median(times["full"]), statistics.median(times["pruned"])
    print(
        f"8x{args.frames}x16, batch {args.batch}, [{args.sada}]: full {full:.2f} s, pruned {pruned:.2f} s, "
        f"pruned / full {pruned / full:.3f} (torch {torch.__version__}, {torch.get_num_threads()} thread(s))"
    )


if __name__ == "__main__":
    main()
