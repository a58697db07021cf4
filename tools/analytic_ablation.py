"""Ablation of SADA's step-wise parts on the analytic Gaussian-mixture model (exact denoiser).

Run:  python -m tools.analytic_ablation [--steps 50]

Data: 4 x 32 x 16 latents whose coordinates are +-1 with std 0.3 (SADA.md, section 6); the exact
noise predictor is known, so every difference below is due to the sampler, never to a network.
Error = relative L2 distance of the final sample to the unaccelerated run of the same seed.

Table 1 runs SADA as shipped (the stability criterion decides). Table 2 forces every step the
limits allow (acc_range, max_interval) to be skipped (the ``always_stable`` planning policy of ``evaluation.policies``),
so that the reconstructions of a skipped step are compared on identical skipped steps.
"""

from __future__ import annotations

import argparse

from evaluation.policies import always_stable
from sada_audio import SADAConfig, SADAHandle, plan_step
from sada_audio.analytic import (
    AnalyticDenoiser,
    GaussianMixtureData,
    latent_noise,
    relative_error,
    run_sampler,
    scheduler_zoo,
)
from sada_audio.config import RECONSTRUCTIONS

VARIANTS = [(reconstruction, lagrange) for reconstruction in RECONSTRUCTIONS for lagrange in (24, None)]


def run_table(steps: int, force_skips: bool, max_interval: int) -> list[str]:
    data, noise = GaussianMixtureData(), latent_noise((1, 4, 32, 16))
    header = " | ".join(f"{rec}{' + Lagrange' if lag else ''}" for rec, lag in VARIANTS)
    rows = [f"| solver | {header} |", "|---" * (len(VARIANTS) + 1) + "|"]
    for name, scheduler in scheduler_zoo().items():
        denoiser = AnalyticDenoiser(data, scheduler)
        baseline, _ = run_sampler(denoiser, scheduler, noise, steps)
        cells = []
        for reconstruction, lagrange in VARIANTS:
            config = SADAConfig(
                tokenwise=False, reconstruction=reconstruction, lagrange_step=lagrange, max_interval=max_interval
            )
            with SADAHandle(denoiser, scheduler, config, policy=always_stable if force_skips else plan_step) as handle:
                out, _ = run_sampler(denoiser, scheduler, noise, steps)
                cells.append(f"{handle.stats.model_calls} / {relative_error(out, baseline):.4f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    print(f"Cells: NFE / relative error vs. the unaccelerated {args.steps}-step run (epsilon prediction)\n")
    print("Table 1: the stability criterion decides (max_interval 4)")
    print("\n".join(run_table(args.steps, force_skips=False, max_interval=4)))
    for max_interval in (1, 2):
        print(f"\nTable 2: every allowed step skipped, max_interval {max_interval}")
        print("\n".join(run_table(args.steps, force_skips=True, max_interval=max_interval)))


if __name__ == "__main__":
    main()
