"""``sada-audio presets``: the SADA levels of every model family with what BENCHMARKS.md measured for them."""

from __future__ import annotations

import click


@click.command()
def presets() -> None:
    """List the SADA speed / fidelity levels (--sada-level) of every model family: each level's sampler, steps and
    overrides of the family's preset, and its measured denoiser calls, speedup and log-mel PSNR, with their source.

    \b
    Levels are fastest first, then 'published' (the published preset on 50 steps of the model's own
    sampler). Pass one to generate, render or evaluate --generate with --sada-level, and change single
    settings on top with --sada 'key=value; ...'.
    """
    from sada_audio.levels import LEVELS

    groups: dict[int, list[str]] = {}
    for family, levels in LEVELS.items():
        groups.setdefault(id(levels), []).append(family)
    for families in groups.values():
        click.echo(f"{', '.join(families)}:")
        for level in LEVELS[families[0]]:
            sampler = "the model's own sampler" if level.scheduler is None else level.scheduler
            click.echo(f"  {level.name:<9} {sampler}, {level.steps} steps, {level.overrides or '(the preset)'}")
            click.echo(f"  {'':<9} {level.summary}")
            for point in level.measured:
                converged = (
                    ""
                    if point.mel_psnr_converged_db is None
                    else f", {point.mel_psnr_converged_db:.1f} dB to a converged run"
                )
                calls = f"{point.full_calls:.1f} full + {point.shallow_calls:.1f} shallow calls"
                click.echo(
                    f"  {'':<9} {point.sampler}: {calls}, "
                    f"{point.speedup_text()} faster than {point.reference_steps} steps, log-mel PSNR "
                    f"{point.mel_psnr_db:.1f} dB to their clip{converged}"
                )
            click.echo(f"  {'':<9} source: {level.source}")
        click.echo("")
    click.echo("Measured on the embedded tiny-musicldm (5.12 s clips, guidance 2); speedups are of the whole pipeline")
    click.echo(
        "against the unaccelerated one of the same sampler on the same machine (est.: estimated from the calls)."
    )
    click.echo("--scheduler and --steps replace a level's sampler and steps. No SADA setting measured beats plain")
    click.echo("UniPC with fewer steps at equal cost (e.g. --scheduler unipc --steps 20 --accelerate none, about as")
    click.echo("fast as the default level and as faithful or more): README, 'SADA or fewer steps?'.")
