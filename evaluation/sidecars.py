"""What the clips' JSON sidecars say beyond the audio: prompts and seeds, cost (wall time, NFE), SADA's steps.

Sidecars are written by ``sada-audio generate``, ``render`` and ``evaluate --generate``; any of their fields
may be missing in files from elsewhere, so every reader here returns None rather than failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Sidecar", "prompt", "mismatch_notes", "clip_cost", "speed", "step_modes"]

Sidecar = dict[str, Any] | None
# Settings that must agree for a test clip to be a fair copy of its reference.
_MUST_MATCH = ("prompt", "negative_prompt", "seed", "guidance_scale", "duration_s")


def prompt(reference: Sidecar, test: Sidecar) -> str | None:
    """The pair's prompt (the test clip's, else the reference's), None if neither sidecar has one."""
    for sidecar in (test, reference):
        text = (sidecar or {}).get("prompt")
        if isinstance(text, str) and text.strip():
            return text
    return None


def mismatch_notes(reference: Sidecar, test: Sidecar) -> list[str]:
    """One note per setting that both sidecars record with different values (the pair is then no fair copy)."""
    if not reference or not test:
        return []
    return [
        f"{key} differs: reference {reference[key]!r}, test {test[key]!r}"
        for key in _MUST_MATCH
        if key in reference and key in test and reference[key] != test[key]
    ]


def _sada_stats(sidecar: Sidecar) -> dict[str, Any]:
    """The sidecar's ``sada_stats`` if it is a JSON object; else (no SADA, or a file from elsewhere) empty."""
    stats = (sidecar or {}).get("sada_stats")
    return stats if isinstance(stats, dict) else {}


def clip_cost(sidecar: Sidecar) -> tuple[float, int] | None:
    """(wall time in seconds, NFE) of one clip: a batched call's time is shared by its clips; the NFE is SADA's
    model calls, or the step count without SADA."""
    wall_time = sidecar.get("wall_time_s") if sidecar else None
    if not sidecar or not isinstance(wall_time, int | float) or not math.isfinite(wall_time) or wall_time < 0:
        return None
    nfe = _sada_stats(sidecar).get("model_calls", sidecar.get("steps"))
    if not isinstance(nfe, int):
        return None
    batch = sidecar.get("batch_size")
    return sidecar["wall_time_s"] / (batch if isinstance(batch, int) and batch > 0 else 1), nfe


def speed(pairs: Sequence[tuple[Sidecar, Sidecar]]) -> dict[str, Any] | None:
    """Total wall time and NFE of the reference and the test clips over the pairs whose sidecars record both."""
    costs = [(clip_cost(ref), clip_cost(test)) for ref, test in pairs]
    known = [(ref, test) for ref, test in costs if ref is not None and test is not None]
    if not known:
        return None
    ref_time, test_time = sum(ref[0] for ref, _ in known), sum(test[0] for _, test in known)
    ref_nfe, test_nfe = sum(ref[1] for ref, _ in known), sum(test[1] for _, test in known)
    return {
        "clips": len(known),
        "reference_wall_time_s": ref_time,
        "test_wall_time_s": test_time,
        "speedup": ref_time / test_time if test_time > 0 else None,
        "reference_nfe": ref_nfe,
        "test_nfe": test_nfe,
        "nfe_ratio": test_nfe / ref_nfe if ref_nfe else None,
    }


def step_modes(sidecar: Sidecar) -> list[str] | None:
    """SADA's mode of every step (``full`` / ``pruned`` / ``skipped``), None for a run without SADA."""
    modes = _sada_stats(sidecar).get("step_modes")
    if isinstance(modes, list) and modes and all(isinstance(mode, str) for mode in modes):
        return modes
    return None
