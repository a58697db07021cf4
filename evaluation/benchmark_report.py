"""The outputs of ``sada-audio benchmark``: ``results.json``, ``results.md`` (tables), ``speedup_fidelity.png`` and
``report.html`` (the listening report, :mod:`.benchmark_html`).

Every file is written to a temporary name and renamed (:func:`sada_audio.audio.write_atomically`), so an
interrupted run never leaves half a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sada_audio.audio import write_atomically, write_json, write_text
from sada_audio.choices import BENCHMARK_RESULT_FILES

from .accelerators import FewerSteps
from .benchmark_html import benchmark_page
from .report import json_ready
from .tables import markdown_table

__all__ = [
    "target_checks",
    "markdown",
    "speedup_fidelity_figure",
    "write_benchmark_outputs",
]


#: The SADA speedup the paper reports for MusicLDM, the target of the quality workload.
TARGET_SPEEDUP = 1.8
#: SADA bookkeeping must stay under this share of a full model call on the real-size UNet.
TARGET_BOOKKEEPING_SHARE = 0.02
_PEER_FOR_TARGET = "DeepCache"


def _sada_preset_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in entries if e["method"] == "SADA" and e["setting"].startswith("preset")), None)


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"scheduler", "target", "value", "met"}``: SADA's preset speedup, its
    log-mel PSNR and SSIM against DeepCache's point of closest speedup, its place on the Pareto front, and
    the bookkeeping share on the real-size UNet."""
    checks = []
    summary = results["quality"]["summary"]
    for scheduler in dict.fromkeys(e["scheduler"] for e in summary):
        entries = [e for e in summary if e["scheduler"] == scheduler]
        sada = _sada_preset_entry(entries)
        if sada is None:
            continue
        checks.append(
            {
                "scheduler": scheduler,
                "target": f"SADA speedup >= {TARGET_SPEEDUP}x",
                "value": f"{sada['speedup']:.2f}x",
                "met": sada["speedup"] >= TARGET_SPEEDUP,
            }
        )
        peers = [e for e in entries if e["method"] == _PEER_FOR_TARGET]
        if peers:
            closest = min(peers, key=lambda e: abs(e["speedup"] - sada["speedup"]))
            for metric, name in (("mel_psnr", "log-mel PSNR"), ("mel_ssim", "log-mel SSIM")):
                ours, theirs = sada["fidelity"][metric], closest["fidelity"][metric]
                checks.append(
                    {
                        "scheduler": scheduler,
                        "target": f"{name} >= {closest['label']} (closest speedup, {closest['speedup']:.2f}x)",
                        "value": f"{ours:.3f} vs {theirs:.3f}",
                        "met": ours >= theirs,
                    }
                )
        checks.append(
            {
                "scheduler": scheduler,
                "target": "SADA on the Pareto front, dominated by no peer",
                "value": ", ".join(sada["dominated_by"]) or "not dominated",
                "met": sada["on_pareto_front"] and not sada["dominated_by"],
            }
        )
    for name, bench in results["step_costs"].items():
        sada = _sada_preset_entry(bench["entries"])
        if sada is None:
            continue
        share = sada["costs"]["skipped"] / bench["entries"][0]["costs"]["full"]
        checks.append(
            {
                "scheduler": name,
                "target": f"SADA bookkeeping < {TARGET_BOOKKEEPING_SHARE:.0%} of a full call",
                "value": f"{share:.2%}",
                "met": share < TARGET_BOOKKEEPING_SHARE,
            }
        )
    return checks


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _kinds(kind_counts: dict[str, float]) -> str:
    return ", ".join(f"{count:g} {kind}" for kind, count in kind_counts.items())


def _mean_and_worst(entry: dict[str, Any], name: str) -> str:
    """``mean (worst)`` log-mel PSNR of a summary entry against one reference; empty without it."""
    if name not in entry:
        return ""
    return f"{entry[name]['mel_psnr']:.2f} ({entry[f'{name}_worst_mel_psnr']:.2f})"


def _set_cells(metrics: dict[str, Any] | None) -> list[str]:
    """The FAD and ``CLAP score (the baseline's)`` cells of a method's set; empty where not measured."""
    if not metrics:
        return ["", ""]
    fad, clap = metrics.get("fad"), metrics.get("clap_score")
    clap_text = f"{clap['test']:.3f} ({clap['reference']:.3f})" if isinstance(clap, dict) else str(clap or "")
    return [_number(fad, 4), clap_text]


def _quality_lines(summary: list[dict[str, Any]]) -> list[str]:
    header = [
        "sampler",
        "method",
        "speedup (min-max)",
        "NFE",
        "steps by kind",
        "pruned tokens",
        "log-mel PSNR dB (worst clip)",
        "vs converged: log-mel PSNR dB (worst)",
        "log-mel SSIM",
        "log-mel L1",
        "MR-STFT",
        "SI-SDR dB",
        "FAD vs baseline set",
        "CLAP score (baseline)",
        "Pareto",
        "dominated by",
    ]
    rows = []
    for e in summary:
        fidelity = e.get("fidelity", {})
        rows.append(
            [
                e["scheduler"],
                e["label"],
                f"{e['speedup']:.2f}x ({e['speedup_min']:.2f}-{e['speedup_max']:.2f})",
                _number(e.get("nfe"), 1),
                _kinds(e["step_kinds"]),
                "" if "pruned_token_share" not in e else f"{e['pruned_token_share']:.1%}",
                _mean_and_worst(e, "fidelity"),
                _mean_and_worst(e, "fidelity_converged"),
                _number(fidelity.get("mel_ssim"), 4),
                _number(fidelity.get("log_mel_l1"), 4),
                _number(fidelity.get("mr_stft"), 3),
                _number(fidelity.get("si_sdr"), 2),
                *_set_cells(e.get("set_metrics")),
                {True: "yes", False: "no", None: ""}[e.get("on_pareto_front")],
                ", ".join(e.get("dominated_by", [])),
            ]
        )
    return markdown_table(header, rows)


def _cost_lines(bench: dict[str, Any], schedulers: list[str]) -> list[str]:
    baseline_full = bench["entries"][0]["costs"]["full"]
    header = ["method", "full step ms", "other steps ms", *[f"implied speedup, {s} schedule" for s in schedulers]]
    rows = []
    for entry in bench["entries"]:
        costs = entry["costs"]
        others = ", ".join(
            f"{kind} {seconds * 1e3:.1f} ({seconds / baseline_full:.1%})"
            for kind, seconds in costs.items()
            if kind != "full"
        )
        implied = [
            "" if s not in entry["implied_speedup"] else f"{entry['implied_speedup'][s]:.2f}x" for s in schedulers
        ]
        full = "" if "full" not in costs else f"{costs['full'] * 1e3:.1f}"
        rows.append([entry["label"], full, others, *implied])
    return markdown_table(header, rows)


def _order(results: dict[str, Any]) -> str:
    """How the quality workload ordered its calls, in words (and the compiled runs' first calls)."""
    mode = results["settings"].get("compile_mode", "none")
    if mode == "none":
        return "interleaved order after a warm-up"
    first_calls = "; ".join(
        f"{scheduler}: " + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in calls.items())
        for scheduler, calls in results["quality"].get("first_call_s", {}).items()
    )
    return (
        f"denoiser compiled (`--compile {mode}`), so method by method, each after one untimed full call that "
        f"compiles it (first call, compile included: {first_calls}); real-size step costs not compiled"
    )


def markdown(results: dict[str, Any], command: str) -> str:
    """The Markdown report of one benchmark run."""
    env, settings = results["environment"], results["settings"]
    page = BENCHMARK_RESULT_FILES["html"]
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items() if v is not None)
    lines = [
        "# sada-audio benchmark",
        "",
        f"To listen: [{page}]({page}) (the plot with links to every method's clips).",
        "",
        f"- Command: `{command}`",
        f"- Date: {env['date']}; machine: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads, "
        f"device {env['device']}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}",
        f"- Versions: {versions}",
        f"- Quality workload: {len(settings['prompts'])} prompts x {len(settings['seeds'])} seeds, "
        f"{settings['steps']} steps, {settings['duration']} s, guidance {settings['guidance']}; "
        f"SADA preset `{results['sada_preset']}`: `{results['sada_config']}`",
        "- Speedup: median over clips of the baseline's wall time over the method's, same prompt and seed, "
        f"{_order(results)}; fidelity: mean over clips against the baseline clip.",
        "",
        "## Quality workload",
        "",
        *_quality_lines(results["quality"]["summary"]),
        "",
    ]
    skipped = results["quality"]["skipped"]
    if skipped:
        lines += ["Not run on this pipeline:", ""] + [f"- {label}: {reason}" for label, reason in skipped.items()]
        lines.append("")
    schedulers = list(settings["schedulers"])
    for name, bench in results["step_costs"].items():
        lines += [
            f"## Step costs: {name}, batch {bench['batch']}",
            "",
            "Random weights: cost only, fidelity is not measurable here. Other steps as a share of the baseline's "
            "full step. Implied speedup: each method's mean schedule on the quality workload, priced here.",
            "",
            *_cost_lines(bench, schedulers),
            "",
        ]
        lines += [f"- {label}: {reason}" for label, reason in bench["skipped"].items()]
        lines.append("")
    lines += ["## Targets", ""]
    lines += markdown_table(
        ["workload", "target", "value", "met"],
        [[c["scheduler"], c["target"], c["value"], "yes" if c["met"] else "NO"] for c in target_checks(results)],
    )
    return "\n".join(lines) + "\n"


def speedup_fidelity_figure(results: dict[str, Any], path: Path) -> None:
    """One panel per sampler and reference (the sampler's baseline clip; the converged run, where measured):
    speedup against log-mel PSNR, one point per method and setting, the fewer-steps peer (the unmodified sampler
    with fewer steps) as a line, and the Pareto front as a dashed line."""
    summary = results["quality"]["summary"]
    schedulers = list(dict.fromkeys(e["scheduler"] for e in summary))
    references = [("fidelity", "baseline clip")]
    if any("fidelity_converged" in e for e in summary):
        steps = results["settings"].get("converged_steps")
        references.append(("fidelity_converged", f"converged run ({steps} steps)"))
    figure = Figure(figsize=(6.5 * len(schedulers), 5 * len(references)))
    axes = figure.subplots(len(references), len(schedulers), squeeze=False)
    families = list(dict.fromkeys(e["method"] for e in summary if "fidelity" in e))
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}
    for row, (key, reference) in zip(axes, references, strict=True):
        for axis, scheduler in zip(row, schedulers, strict=True):
            entries = [e for e in summary if e["scheduler"] == scheduler and key in e]
            for e in entries:
                x, y = e["speedup"], e[key]["mel_psnr"]
                axis.scatter(x, y, color=colours.get(e["method"], "grey"), s=40, zorder=3, label=e["method"])
                name = e["setting"] or e["method"]
                axis.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            plain = sorted((e for e in entries if e["method"] == FewerSteps.name), key=lambda e: e["speedup"])
            if plain:
                axis.plot(
                    [e["speedup"] for e in plain],
                    [e[key]["mel_psnr"] for e in plain],
                    color=colours[FewerSteps.name],
                    linewidth=1.5,
                    zorder=2,
                    label="plain sampler, fewer steps",
                )
            if key == "fidelity":
                front = sorted((e for e in entries if e["on_pareto_front"]), key=lambda e: e["speedup"])
                axis.plot(
                    [e["speedup"] for e in front],
                    [e[key]["mel_psnr"] for e in front],
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    zorder=2,
                    label="Pareto front",
                )
            handles, labels = axis.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            axis.legend(unique.values(), unique.keys(), fontsize=8)
            axis.set_xlabel("speedup (median over clips)")
            axis.set_ylabel(f"log-mel PSNR vs {reference} (dB)")
            axis.set_title(f"{scheduler}, {results['settings']['steps']} steps")
            axis.grid(alpha=0.3)
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=110))


def write_benchmark_outputs(results: dict[str, Any], output_dir: Path, command: str) -> dict[str, Path]:
    """Write the four outputs into ``output_dir`` (created if missing); return their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / name for kind, name in BENCHMARK_RESULT_FILES.items()}
    write_json(paths["json"], json_ready({**results, "command": command, "targets": target_checks(results)}))
    write_text(paths["markdown"], markdown(results, command))
    speedup_fidelity_figure(results, paths["plot"])
    write_text(paths["html"], benchmark_page(results, output_dir, command))
    return paths
