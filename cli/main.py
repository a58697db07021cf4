"""The ``sada-audio`` command line: click commands only, every piece of logic lives in the library.

Each command's module is imported when the command runs (they import torch and diffusers): ``--help``,
``--version`` and a mistyped command answer without them.
"""

from __future__ import annotations

import click

from .console import LazyGroup, configure_logging

# command -> (module, the one line the group's help shows)
COMMANDS = {
    "generate": ("sada_audio.cli.generate", "Generate audio for PROMPT and write it to OUT (-o), with a JSON sidecar."),
    "render": ("sada_audio.cli.render", "Render every row of MANIFEST (JSONL or CSV) into OUT_DIR, resumably."),
    "evaluate": (
        "sada_audio.cli.evaluate",
        "Compare TEST_DIR's clips with REF_DIR's (or generate both).",
    ),
    "benchmark": ("sada_audio.cli.benchmark", "Benchmark SADA against DeepCache, ToMe, PAB, AdaptiveDiffusion, ..."),
    "presets": ("sada_audio.cli.presets", "List the SADA levels (--sada-level) per family with their measured speed."),
}


@click.group(cls=LazyGroup, commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sada-audio")
@click.option("-v", "--verbose", count=True, help="Log more: -v for progress details, -vv for debugging.")
def main(verbose: int) -> None:
    """Training-free SADA acceleration of audio diffusion models (MusicLDM, AudioLDM, AudioLDM 2).

    Generate one clip, render a whole manifest, or evaluate accelerated against unaccelerated audio.
    Without --model the embedded tiny-musicldm runs, offline.
    """
    configure_logging(verbose)
