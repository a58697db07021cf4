"""Drawing a clip's sparsity map: where SADA ran the model in full, pruned tokens, or skipped the step, and why.

Reads the SADA statistics of a sidecar (``SADAStats.to_dict``): ``step_modes``, ``step_reasons`` and
``anchor_steps`` (sidecars written before them lack the last two) and, when steps pruned tokens,
``sparsity_map`` (see :mod:`sada_audio.method.sparsity_map`). Two panels: step x latent time (how much of each
time frame every step recomputed: full 100 %, skipped 0 %, pruned the measured share) with a strip beside it of
the step modes (Lagrange anchors marked) and of the reason of every step, and latent time x frequency (how often
each token was recomputed over the pruned steps).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sada_audio.audio import write_atomically
from sada_audio.errors import SADAError
from sada_audio.method.planner import STEP_MODES, Reason

__all__ = ["MODE_COLOURS", "REASON_COLOURS", "step_time_grid", "sparsity_figure", "sparsity_png", "write_sparsity_png"]

#: Colour of each step mode in the strip; a mode not listed here (a future one) is drawn in black.
MODE_COLOURS = dict(zip(STEP_MODES, ("#4c72b0", "#dd8452", "#55a868", "#e8e8e8"), strict=True))
#: Colour of each step reason in the strip (matplotlib's tab20, one per reason, in the planner's order).
REASON_COLOURS = dict(zip((reason.value for reason in Reason), colormaps["tab20"].colors, strict=False))
_OTHER_COLOUR = "#000000"
_DEFAULT_ROWS = 64


def step_time_grid(step_modes: list[str], sparsity: dict[str, Any] | None) -> np.ndarray:
    """Share of every time row each step recomputed: full 1, skipped 0, pruned the profile, others NaN."""
    profiles = (sparsity or {}).get("step_profiles", {})
    width = len(next(iter(profiles.values()))) if profiles else _DEFAULT_ROWS
    grid = np.full((len(step_modes), width), np.nan)
    for step, mode in enumerate(step_modes):
        if mode == "full":
            grid[step] = 1.0
        elif mode == "skipped":
            grid[step] = 0.0
        elif str(step) in profiles:
            grid[step] = np.asarray(profiles[str(step)], dtype=float) / 100
    return grid


def sparsity_figure(stats: dict[str, Any], title: str | None = None, *, scale: float = 1.0) -> Figure:
    """The sparsity map of one sampling call from its SADA statistics (``step_modes``, ``sparsity_map``).

    Raises:
        SADAError: the statistics have no step modes (a run without SADA).
    """
    step_modes = stats.get("step_modes")
    if not isinstance(step_modes, list) or not step_modes:
        raise SADAError("no SADA step modes to draw: the clip was generated without SADA")
    sparsity = stats.get("sparsity_map")
    reasons = stats.get("step_reasons")
    reasons = reasons if isinstance(reasons, list) and len(reasons) == len(step_modes) else None
    figure = Figure(figsize=(9 * scale, (3.2 if reasons else 2.8) * scale), layout="constrained")
    strip_axis, steps_axis, tokens_axis = figure.subplots(1, 3, width_ratios=(1.0 if reasons else 0.5, 10, 7))
    columns = [(step_modes, MODE_COLOURS)] + ([(reasons, REASON_COLOURS)] if reasons else [])
    # one categorical strip per column: the modes, then (where recorded) the reasons
    names = list(dict.fromkeys(name for values, _ in columns for name in values))
    colours = ListedColormap([next((c[n] for _, c in columns if n in c), _OTHER_COLOUR) for n in names])
    strip = np.array([[names.index(values[step]) for values, _ in columns] for step in range(len(step_modes))])
    strip_axis.imshow(strip, aspect="auto", cmap=colours, vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    anchors = [step for step in stats.get("anchor_steps") or [] if isinstance(step, int) and step < len(step_modes)]
    if anchors:
        strip_axis.scatter([0] * len(anchors), anchors, marker="D", s=6 * scale, color="white", edgecolors="black")
    strip_axis.set(xticks=[], ylabel="denoising step" + ("\n(mode | reason; \u25c6 anchor)" if reasons else ""))
    figure.legend(
        [Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(names))],
        names,
        loc="outside lower left",
        fontsize=7,
        ncols=min(len(names), 6),
        frameon=False,
    )
    steps_axis.imshow(
        step_time_grid(step_modes, sparsity), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    steps_axis.set(yticks=[], xlabel="latent time frame", title="share of each frame recomputed per step")
    if not sparsity:
        steps_axis.set(xticks=[], xlabel="clip time")
    if sparsity:
        counts = np.asarray(sparsity["recomputed"], dtype=float) / max(sparsity["pruned_steps"], 1)
        shown = tokens_axis.imshow(
            counts.T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
        tokens_axis.set(
            xlabel="latent time frame",
            ylabel="frequency band",
            title=f"recomputed share over {sparsity['pruned_steps']} pruned steps",
        )
        figure.colorbar(shown, ax=tokens_axis, fraction=0.05)
    else:
        tokens_axis.set_axis_off()
        tokens_axis.text(0.5, 0.5, "no token pruning in this run", ha="center", va="center", fontsize=9)
    for axis in (steps_axis, tokens_axis):
        axis.title.set_fontsize(8)
    if title:
        figure.suptitle(title, fontsize=9, parse_math=False)
    return figure


def sparsity_png(stats: dict[str, Any], *, scale: float = 1.0, dpi: int = 100) -> bytes:
    """The sparsity map as PNG bytes (the HTML reports embed it)."""
    buffer = io.BytesIO()
    sparsity_figure(stats, scale=scale).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_sparsity_png(path: str | os.PathLike[str], stats: dict[str, Any], title: str | None = None) -> Path:
    """Write the sparsity map of ``stats`` to ``path`` as a PNG, atomically; return the path."""
    figure = sparsity_figure(stats, title)
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=110))
    return Path(path)
