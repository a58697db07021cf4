"""The benchmark's ``report.html``: the speed-fidelity plot with the Pareto front (an inline SVG whose points
link to their methods), the methods' table, and per method one representative clip against the baseline (the
clip of median log-mel PSNR) with the list of all its clips."""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

from .html_report import (
    Column,
    Listing,
    audio_thumbnail,
    escape,
    listing_section,
    page,
    read_json_object,
    relative_url,
)
from .metrics import METRICS
from .tables import format_number

__all__ = ["method_anchor", "representative_run", "speed_fidelity_svg", "benchmark_page"]

logger = logging.getLogger(__name__)

_WIDTH, _HEIGHT, _MARGIN = 560, 340, 48
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
_FIDELITY = ("mel_psnr", "mel_ssim", "log_mel_l1", "mr_stft", "si_sdr")


def method_anchor(scheduler: str, label: str) -> str:
    """The element id of a method's section (any text becomes a valid, unique-enough id)."""
    return "m-" + "".join(ch if ch.isalnum() else "-" for ch in f"{scheduler}-{label}")


def representative_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run of median log-mel PSNR among ``runs`` (the lower middle for an even count), None without
    metrics."""
    scored = sorted((run for run in runs if "metrics" in run), key=lambda run: run["metrics"]["mel_psnr"])
    return scored[(len(scored) - 1) // 2] if scored else None


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def speed_fidelity_svg(entries: list[dict[str, Any]], title: str) -> str:
    """One sampler's methods as an SVG scatter plot, speedup against log-mel PSNR, each point a link to its
    method's section, the Pareto front a dashed line. Points with a non-finite value are left out (listed)."""
    points = [
        e
        for e in entries
        if "fidelity" in e and math.isfinite(e["speedup"]) and math.isfinite(e["fidelity"]["mel_psnr"])
    ]
    left_out = [e["label"] for e in entries if "fidelity" in e and e not in points]
    if not points:
        return "<p>No method with fidelity to plot.</p>"
    xs, ys = [e["speedup"] for e in points], [e["fidelity"]["mel_psnr"] for e in points]
    x_low, x_high = min(xs + [1.0]) * 0.95, max(xs) * 1.05
    y_pad = (max(ys) - min(ys)) * 0.1 or 1.0
    y_low, y_high = min(ys) - y_pad, max(ys) + y_pad

    def x(value: float) -> float:
        return _MARGIN + (value - x_low) / (x_high - x_low) * (_WIDTH - 2 * _MARGIN)

    def y(value: float) -> float:
        return _HEIGHT - _MARGIN - (value - y_low) / (y_high - y_low) * (_HEIGHT - 2 * _MARGIN)

    families = list(dict.fromkeys(e["method"] for e in points))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="{_WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{_MARGIN}" y1="{_HEIGHT - _MARGIN}" x2="{_WIDTH - _MARGIN}" y2="{_HEIGHT - _MARGIN}" '
        'stroke="#000"/>',
        f'<line x1="{_MARGIN}" y1="{_MARGIN}" x2="{_MARGIN}" y2="{_HEIGHT - _MARGIN}" stroke="#000"/>',
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 12}" text-anchor="middle">speedup (median over clips)</text>',
        f'<text transform="translate(14 {_HEIGHT / 2}) rotate(-90)" text-anchor="middle">log-mel PSNR vs baseline '
        "(dB)</text>",
    ]
    for tick in _ticks(x_low, x_high):
        parts.append(f'<text x="{x(tick):.1f}" y="{_HEIGHT - _MARGIN + 14}" text-anchor="middle">{tick:.2f}</text>')
    for tick in _ticks(y_low, y_high):
        parts.append(f'<text x="{_MARGIN - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.1f}</text>')
    front = sorted((e for e in points if e.get("on_pareto_front")), key=lambda e: e["speedup"])
    if front:
        line = " ".join(f"{x(e['speedup']):.1f},{y(e['fidelity']['mel_psnr']):.1f}" for e in front)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#000" stroke-dasharray="5 4"/>')
    for e in points:
        colour = _COLOURS[families.index(e["method"]) % len(_COLOURS)]
        px, py = x(e["speedup"]), y(e["fidelity"]["mel_psnr"])
        label = e["setting"] or e["method"]
        parts.append(
            f'<a href="#{escape(method_anchor(e["scheduler"], e["label"]))}"><title>{escape(e["label"])}: '
            f"{e['speedup']:.2f}x, {e['fidelity']['mel_psnr']:.2f} dB</title>"
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{colour}"/>'
            f'<text x="{px + 6:.1f}" y="{py - 4:.1f}">{escape(label)}</text></a>'
        )
    for index, family in enumerate(families):
        colour = _COLOURS[index % len(_COLOURS)]
        parts.append(
            f'<circle cx="{_WIDTH - 150}" cy="{_MARGIN + 14 * index}" r="4" fill="{colour}"/>'
            f'<text x="{_WIDTH - 142}" y="{_MARGIN + 14 * index + 4}">{escape(family)}</text>'
        )
    parts.append(
        f'<line x1="{_WIDTH - 154}" y1="{_MARGIN + 14 * len(families)}" x2="{_WIDTH - 146}" '
        f'y2="{_MARGIN + 14 * len(families)}" stroke="#000" stroke-dasharray="3 2"/>'
        f'<text x="{_WIDTH - 142}" y="{_MARGIN + 14 * len(families) + 4}">Pareto front</text></svg>'
    )
    if left_out:
        parts.append(f'<p class="caption">Not plotted (infinite value): {escape(", ".join(left_out))}</p>')
    return "".join(parts)


def _sada_stats(run: dict[str, Any]) -> dict[str, Any] | None:
    """A SADA clip's statistics from its sidecar (with the sparsity map), else its step modes alone."""
    if run["method"] != "SADA":
        return None
    if "audio" in run:
        stats = read_json_object(Path(run["audio"]).with_suffix(".json")).get("sada_stats")
        if isinstance(stats, dict):
            return stats
    return {"step_modes": run["step_kinds"]}


def _representative_listing(run: dict[str, Any], reference: dict[str, Any] | None, anchor: str) -> Listing:
    test_audio = Path(run["audio"]) if "audio" in run else None
    reference_audio = Path(reference["audio"]) if reference is not None and "audio" in reference else None
    spectrograms = None
    if test_audio is not None and reference_audio is not None:
        test_mel, reference_mel = audio_thumbnail(test_audio), audio_thumbnail(reference_audio)
        if test_mel is not None and reference_mel is not None:
            frames = min(test_mel.shape[1], reference_mel.shape[1])
            spectrograms = (reference_mel[:, :frames], test_mel[:, :frames])
    facts = [f"seed {run['seed']}; wall time {run['wall_s']:.3g} s, speedup {run['speedup']:.2f}x"]
    if "nfe" in run:
        facts[0] += f", NFE {run['nfe']}"
    return Listing(
        anchor=anchor,
        name=f"representative clip: {run['label']} (median log-mel PSNR)",
        values=dict(run.get("metrics", {})),
        test_audio=test_audio,
        reference_audio=reference_audio,
        prompt=run["prompt"],
        spectrograms=spectrograms,
        sada_stats=_sada_stats(run),
        facts=facts,
        reference_label="baseline",
        test_label=run["label"],
    )


def _clip_table(runs: list[dict[str, Any]], page_dir: Path) -> str:
    """Every clip of one method, worst log-mel PSNR first, each linking to its audio file."""
    ordered = sorted(runs, key=lambda run: run.get("metrics", {}).get("mel_psnr", math.inf))
    rows = []
    for run in ordered:
        link = escape(run["prompt"])
        if "audio" in run:
            link = f'<a href="{escape(relative_url(Path(run["audio"]), page_dir))}">{link}</a>'
        metrics = run.get("metrics", {})
        cells = "".join(f"<td>{escape(format_number(metrics.get(m)))}</td>" for m in _FIDELITY)
        rows.append(
            f"<tr><td>{link}</td><td>{run['seed']}</td><td>{run['speedup']:.2f}x</td><td>{run['wall_s']:.3g}</td>"
            f"<td>{escape(format_number(run.get('nfe')))}</td>{cells}</tr>"
        )
    header = "".join(f"<th>{m}</th>" for m in _FIDELITY)
    return (
        "<details><summary>All clips of this method (worst log-mel PSNR first)</summary><table><thead><tr>"
        f"<th>prompt (audio)</th><th>seed</th><th>speedup</th><th>wall s</th><th>NFE</th>{header}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></details>"
    )


def _summary_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        fidelity = e.get("fidelity", {})
        cells = "".join(f"<td>{escape(format_number(fidelity.get(m)))}</td>" for m in _FIDELITY)
        pareto = {True: "yes", False: "no", None: ""}[e.get("on_pareto_front")]
        rows.append(
            f'<tr><td><a href="#{escape(method_anchor(e["scheduler"], e["label"]))}">{escape(e["label"])}</a></td>'
            f"<td>{e['speedup']:.2f}x</td><td>{escape(format_number(e.get('nfe')))}</td>{cells}<td>{pareto}</td></tr>"
        )
    header = "".join(f"<th>{m}</th>" for m in _FIDELITY)
    return (
        f"<table><thead><tr><th>method</th><th>speedup</th><th>NFE</th>{header}<th>Pareto</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def benchmark_page(results: dict[str, Any], page_dir: Path, command: str) -> str:
    """The ``report.html`` of a benchmark run (``results`` as in ``results.json``), written into ``page_dir``."""
    quality, env = results["quality"], results["environment"]
    summary, runs = quality["summary"], quality["runs"]
    columns = [Column(m, m, METRICS[m].higher_is_better) for m in _FIDELITY]
    body = [
        f"<p>Command: <code>{escape(command)}</code>; {escape(env['date'])}, {escape(env['cpu'])}, device "
        f"{escape(env['device'])}. Speedup: median over clips of the baseline's wall time over the method's; "
        "fidelity: mean over clips against the baseline clip of the same prompt and seed. Click a point or a "
        "method to listen to it.</p>"
    ]
    if not any("audio" in run for run in runs):
        body.append("<p>The clips were not kept (<code>--no-clips</code>): no players.</p>")
    for scheduler in dict.fromkeys(e["scheduler"] for e in summary):
        entries = [e for e in summary if e["scheduler"] == scheduler]
        title = f"{scheduler}, {results['settings']['steps']} steps"
        body += [f"<h2>{escape(title)}</h2>", speed_fidelity_svg(entries, title), _summary_table(entries)]
        baseline = {
            (run["prompt"], run["seed"]): run for run in runs if run["scheduler"] == scheduler and "metrics" not in run
        }
        for entry in entries:
            group = [run for run in runs if run["scheduler"] == scheduler and run["label"] == entry["label"]]
            anchor = method_anchor(scheduler, entry["label"])
            body.append(f'<h3 id="{escape(anchor)}">{escape(entry["label"])} ({escape(scheduler)})</h3>')
            run = representative_run(group)
            if run is not None:
                listing = _representative_listing(run, baseline.get((run["prompt"], run["seed"])), anchor + "-clip")
                body.append(listing_section(listing, columns, page_dir))
            elif group:
                median_wall = statistics.median(r["wall_s"] for r in group)
                body.append(f"<p>The reference method: median wall time {median_wall:.3g} s.</p>")
            body.append(_clip_table(group, page_dir))
    return page("sada-audio benchmark", "".join(body))
