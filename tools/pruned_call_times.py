"""CPU time of a full call of the real-size UNet with SADA and of a pruned (token pruning on) and a shallow call
(shallow steps on): the lean version of the step-cost workload's prices, for sizes where every call takes tens
of seconds.

One handle; each round a fresh run of an untimed full call, then a timed call of every kind, each planned as a
new step (a ``ForcedPlan``, as in ``SADA.step_costs``): the round's full call fills the token caches and deep
features its cheaper calls use. Timed by the process's CPU time (immune to other jobs on a shared CPU; run
with one thread)::

    OMP_NUM_THREADS=1 python -m tools.pruned_call_times --frames 1024 --batch 2 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sada_audio import SADAConfig, StepMode
from sada_audio.evaluation.accelerators import after_full_call, forced_plan_handle
from sada_audio.evaluation.step_costs import real_size_unet, unet_bench


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
    handle, policy = forced_plan_handle(bench, config)
    kinds = [StepMode.PRUNED] if config.tokenwise else []
    kinds += [StepMode.SHALLOW] if config.shallow != "off" else []
    times: dict[str, list[float]] = {mode.value: [] for mode in (StepMode.FULL, *kinds)}

    def timed_call() -> tuple[float, int, int]:
        stats = handle.stats
        computed, total = stats.tokens_computed, stats.tokens_total
        start = time.process_time()
        bench.call()
        elapsed = time.process_time() - start
        stats = handle.stats
        return elapsed, stats.tokens_computed - computed, stats.tokens_total - total

    try:
        for _ in range(args.rounds):
            for mode in times:
                if mode == StepMode.FULL:  # a fresh run: an untimed full call (a warm-up), then the timed one
                    after_full_call(handle, policy, bench, StepMode.FULL)
                else:  # a new step of the run: the round's timed full call left the caches and deep features
                    policy.next_step(handle, bench.scheduler, StepMode(mode), bench.sample, momentum)
                elapsed, computed, total = timed_call()
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
