"""Writing an evaluation: a JSON report, a Markdown report and PNG figures, every file atomically.

Figures: the reference spectrogram, the test spectrogram and their difference for the worst and the median
pair, and a per-step chart of the steps SADA ran in full, pruned or skipped for each test clip.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# The object-oriented API without pyplot: no GUI backend, no global figure registry to clean up.
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sada_audio.audio import write_atomically, write_json, write_text

from .evaluate import Evaluation
from .html_report import HTML_NAME, write_evaluation_html
from .metrics import METRICS
from .sparsity_figure import MODE_COLOURS
from .tables import format_number, markdown_table

__all__ = ["REPORT_NAME", "HTML_NAME", "FIGURE_NAMES", "json_ready", "markdown", "write_outputs"]

REPORT_NAME = "report.md"
FIGURES_DIR = "figures"
#: Every figure a run may write; a run that writes fewer removes the others' stale copies.
FIGURE_NAMES = {"worst": "worst_pair.png", "median": "median_pair.png", "steps": "step_modes.png"}
_STEP_MODES = tuple(MODE_COLOURS)
_STEP_COLOURS = ListedColormap([MODE_COLOURS[mode] for mode in _STEP_MODES])
_MAX_STEP_ROWS = 40


def json_ready(value: Any) -> Any:
    """``value`` with infinite and NaN floats as the strings "inf", "-inf" and "nan" (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [*markdown_table(header, rows, cell=format_number), ""]


def _summary_lines(report: dict[str, Any]) -> list[str]:
    summary = report["summary"]
    if not summary:
        return ["No pair could be evaluated.", ""]
    rows = []
    for metric, stats in summary.items():
        info = METRICS[metric]
        better = "higher" if info.higher_is_better else "lower"
        rows.append([metric, info.unit, better, stats["mean"], stats["median"], stats["worst"], stats["worst_clip"]])
    return _table(["metric", "unit", "better", "mean", "median", "worst", "worst clip"], rows)


def _set_metric_lines(set_metrics: dict[str, Any]) -> list[str]:
    lines = [f"- embedding: {set_metrics.get('embedding') or 'none'}"]
    if "fad" in set_metrics:
        lines.append(f"- Frechet Audio Distance (reference set vs test set): {format_number(set_metrics['fad'])}")
    clap = set_metrics.get("clap_score")
    if isinstance(clap, dict):
        lines.append(
            f"- CLAP score (cosine, text vs audio, {clap['clips']} clips): "
            f"reference {format_number(clap['reference'])}, test {format_number(clap['test'])}"
        )
    elif clap is not None:
        lines.append(f"- CLAP score: {clap}")
    return lines + [""]


def _speed_lines(speed: dict[str, Any] | None) -> list[str]:
    if speed is None:
        return ["No sidecars with wall times: speed not reported.", ""]
    rows = [
        [
            "wall time (s)",
            speed["reference_wall_time_s"],
            speed["test_wall_time_s"],
            f"speedup {format_number(speed['speedup'])}x",
        ],
        [
            "model calls (NFE)",
            speed["reference_nfe"],
            speed["test_nfe"],
            f"test / reference {format_number(speed['nfe_ratio'])}",
        ],
    ]
    return [f"From the sidecars of {speed['clips']} pairs:", ""] + _table(["", "reference", "test", "ratio"], rows)


def markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
    """The Markdown report; ``figures`` maps figure keys to paths relative to the report."""
    lines = [
        "# sada-audio evaluation",
        "",
        f"Reference clips: `{report['reference_dir']}`; test clips: `{report['test_dir']}`; "
        f"{report['pairs_evaluated']} pairs evaluated, {len(report['problems'])} problems.",
        "",
        f"To listen: [{HTML_NAME}]({HTML_NAME}) (players, spectrograms and sparsity maps of every pair).",
        "",
        f"LPIPS: {report['lpips']['status']}. Scaling convention: {report['conventions']['lpips_scaling']}.",
        "",
        f"Spectrograms: {report['conventions']['spectrogram']}. Alignment: {report['conventions']['alignment']}.",
        "",
        "## Fidelity (test against reference, per pair)",
        "",
        *_summary_lines(report),
        "## Set metrics",
        "",
        *_set_metric_lines(report["set_metrics"]),
        "## Speed",
        "",
        *_speed_lines(report["speed"]),
    ]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{key}]({path})" for key, path in figures.items()] + [""]
    if report["problems"]:
        lines += ["## Problems", ""]
        lines += _table(["file", "reason"], [[p["file"], p["reason"]] for p in report["problems"]])
    notes = [(pair["name"], note) for pair in report["pairs"] for note in pair["notes"]]
    if notes:
        lines += ["## Notes (resampling, lengths, channels)", ""]
        lines += _table(["pair", "note"], [list(item) for item in notes])
    if report["pairs"]:
        metrics = list(report["summary"])
        lines += ["## Pairs", ""]
        lines += _table(
            ["pair", *metrics], [[p["name"], *(p["metrics"].get(m) for m in metrics)] for p in report["pairs"]]
        )
    return "\n".join(lines)


def _save(figure: Figure, path: Path) -> None:
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))


def spectrogram_figure(path: Path, name: str, label: str, reference: np.ndarray, test: np.ndarray) -> Path:
    """Reference, test and difference (test - reference) log-mel spectrograms side by side, as a PNG."""
    figure = Figure(figsize=(15, 3.6), layout="constrained")
    axes = figure.subplots(1, 3)
    low, high = float(reference.min()), float(reference.max())
    difference = test - reference
    limit = float(np.abs(difference).max()) or 1.0
    panels = (
        ("reference", reference, "magma", low, high),
        ("test", test, "magma", low, high),
        ("test - reference", difference, "coolwarm", -limit, limit),
    )
    for axis, (title, image, colours, vmin, vmax) in zip(axes, panels, strict=True):
        shown = axis.imshow(image, origin="lower", aspect="auto", cmap=colours, vmin=vmin, vmax=vmax)
        axis.set(title=title, xlabel="frame (10 ms)", ylabel="mel bin")
        figure.colorbar(shown, ax=axis)
    figure.suptitle(f"{label} pair: {name}")
    _save(figure, path)
    return path


def step_modes_figure(path: Path, step_modes: dict[str, list[str]]) -> Path:
    """One row per test clip (at most 40), one column per step: full, pruned, shallow or skipped."""
    names = list(step_modes)[:_MAX_STEP_ROWS]
    width = max(len(step_modes[name]) for name in names)
    grid = np.full((len(names), width), np.nan)
    for row, name in enumerate(names):
        for column, mode in enumerate(step_modes[name]):
            grid[row, column] = _STEP_MODES.index(mode) if mode in _STEP_MODES else np.nan
    figure = Figure(figsize=(max(6.0, width * 0.16), 1.2 + 0.3 * len(names)), layout="constrained")
    axis = figure.subplots()
    top = len(_STEP_MODES) - 0.5
    axis.imshow(grid, aspect="auto", cmap=_STEP_COLOURS, vmin=-0.5, vmax=top, interpolation="nearest")
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("denoising step")
    handles = [Rectangle((0, 0), 1, 1, color=_STEP_COLOURS(i)) for i in range(len(_STEP_MODES))]
    axis.legend(handles, _STEP_MODES, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axis.set_title("SADA per step (test clips)")
    _save(figure, path)
    return path


def write_outputs(evaluation: Evaluation, output_dir: Path, json_path: Path | None = None) -> Path:
    """Write the figures, ``output_dir/report.md``, ``output_dir/report.html`` (the listening report) and (if
    given) the JSON report; return the Markdown path.

    The caller checks beforehand that nothing is overwritten unintentionally.
    """
    figures_dir = output_dir / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    report = evaluation.report
    written: dict[str, str] = {}
    for key, (name, reference, test) in evaluation.figure_pairs.items():
        spectrogram_figure(figures_dir / FIGURE_NAMES[key], name, key, reference, test)
        written[key] = f"{FIGURES_DIR}/{FIGURE_NAMES[key]}"
    if report["step_modes"]:
        step_modes_figure(figures_dir / FIGURE_NAMES["steps"], report["step_modes"])
        written["steps"] = f"{FIGURES_DIR}/{FIGURE_NAMES['steps']}"
    for key, file_name in FIGURE_NAMES.items():
        if key not in written:
            (figures_dir / file_name).unlink(missing_ok=True)
    report_path = output_dir / REPORT_NAME
    text = markdown(report, written) + "\n"
    write_text(report_path, text)
    write_evaluation_html(evaluation, output_dir)
    if json_path is not None:
        write_json(json_path, json_ready({**report, "figures": written}))
    return report_path
