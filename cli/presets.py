"""``sada-audio presets``: the SADA levels of every model family with what BENCHMARKS.md measured for them."""

from __future__ import annotations

import click


@click.command()
def presets() -> None:
    """List the SADA speed / fidelity levels (--sada-level) of every model family: each level's overrides of the
    family's preset and its measured denoiser calls, speedup and log-mel PSNR, with their source.

    \b
    Levels are fastest first; 'default' is the family's preset. Pass one to generate, render or
    evaluate --generate with --sada-level, and change single settings on top with --sada 'key=value; ...'.
    """
    from sada_audio.levels import LEVELS

    groups: dict[int, list[str]] = {}
    for family, levels in LEVELS.items():
        groups.setdefault(id(levels), []).append(family)
    for families in groups.values():
        click.echo(f"{', '.join(families)}:")
        for level in LEVELS[families[0]]:
            click.echo(f"  {level.name:<9} {level.overrides or '(the preset)'}: {level.summary}")
            for point in level.measured:
                click.echo(
                    f"  {'':<9} {point.sampler}: {point.full_calls:.1f} full + {point.shallow_calls:.1f} shallow calls "
                    f"of 50 steps, {point.speedup_text()} faster, log-mel PSNR {point.mel_psnr_db:.1f} dB"
                )
            click.echo(f"  {'':<9} source: {level.source}")
        click.echo("")
    click.echo("Measured on the embedded tiny-musicldm (5.12 s clips, guidance 2), 50 steps; speedups are of the whole")
    click.echo("pipeline against the unaccelerated one on the same machine (est.: estimated from the calls).")
    click.echo("They compare SADA with the same sampler at 50 steps (DDIM and DPM++ on the leading spacing of that")
    click.echo("time). With DPM++ or UniPC, plain fewer steps at equal cost are as faithful or more (e.g. --scheduler")
    click.echo("unipc --steps 18 --accelerate none): README, 'SADA or fewer steps?'.")
