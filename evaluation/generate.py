"""``evaluate --generate``: run the baseline and the accelerated pipeline on the same prompts and seeds.

Each prompt's reference (no SADA) and test clip (SADA) are generated back to back, so that slow drifts of a
shared machine hit both alike, after one untimed warm-up call that absorbs one-time costs. Clips and JSON
sidecars are written as ``sada-audio generate`` writes them; the sidecars' wall times and model calls give
the speedup.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from sada_audio.audio import write_clip
from sada_audio.config import SADAConfig
from sada_audio.generation import ClipRequest, SamplingSettings, clip_metadata, generate_batch

from .evaluate import Progress, no_progress
from .prompts import read_prompts

__all__ = ["read_prompts", "clip_names", "generate_pair_folders"]

_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_NAME_LENGTH = 40


def clip_names(prompts: list[str]) -> list[str]:
    """``000_slow-piano-arpeggio``: the line number keeps names unique, the slug is only for people and never
    contains a path separator or a dot."""
    return [
        f"{index:03d}_{_NAME_CHARS.sub('-', prompt.lower()).strip('-')[:_NAME_LENGTH].strip('-') or 'clip'}"
        for index, prompt in enumerate(prompts)
    ]


def generate_pair_folders(
    pipe: Any,
    prompts: list[str],
    settings: SamplingSettings,
    *,
    seed: int,
    reference_dir: Path,
    test_dir: Path,
    accelerate: bool = True,
    sada_config: SADAConfig | None = None,
    test_steps: int | None = None,
    run_info: dict[str, Any] | None = None,
    progress: Progress = no_progress,
) -> list[str]:
    """Generate clip ``i`` with seed ``seed + i``, without SADA into ``reference_dir`` and with it (if
    ``accelerate``) into ``test_dir``, as ``NAME.wav`` plus ``NAME.json``; return the names.

    Args:
        sada_config: SADA's configuration on the test side; None: the preset of the pipeline's family.
        test_steps: the test side's steps (a SADA level's own, fewer than the reference's); None: ``settings``'.
        run_info: added to every sidecar (e.g. :func:`~sada_audio.generation.run_metadata`).
    """
    names = clip_names(prompts)
    # untimed, short, without SADA: the first call of a process pays for lazy initialisation
    warm_up = dataclasses.replace(settings, steps=min(2, settings.steps))
    generate_batch(pipe, [ClipRequest(prompts[0], seed)], warm_up, accelerate=False)
    test_settings = settings if test_steps is None else dataclasses.replace(settings, steps=test_steps)
    runs = ((reference_dir, False, settings), (test_dir, accelerate, test_settings))
    with progress(list(enumerate(zip(names, prompts, strict=True))), "Generating") as items:
        for index, (name, prompt) in items:
            clip = ClipRequest(prompt=prompt, seed=seed + index)
            for directory, with_sada, run_settings in runs:
                batch = generate_batch(pipe, [clip], run_settings, accelerate=with_sada, sada_config=sada_config)
                path = directory / f"{name}.wav"
                meta = {**clip_metadata(clip, run_settings, batch, [path.name]), **(run_info or {})}
                write_clip([(path, batch.waveforms[0, 0])], batch.sample_rate, path.with_suffix(".json"), meta)
    return names
