"""Throughput of ``sada-audio render``: clips per minute with batch size 1 vs. 4, with and without SADA.

Run:  python -m tools.render_throughput [--clips 16] [--steps 50] [--duration 2.56] [--repeats 3]
      [--model PATH]

Renders the same manifest (``--clips`` rows, four prompts, one seed each) in four configurations into fresh
folders, ``--repeats`` rounds with the configurations interleaved (a shared machine's load then hits all of
them alike; the table gives the median), through the command's own path (:class:`sada_audio.render.RenderJob`:
prompt-embedding cache, batching, atomic clip and sidecar writes, index), with the model loaded once beforehand
and one untimed warm-up render. Prints one table: median wall time of a render (loading excluded), clips per
minute, the speedup over batch 1 without SADA, and SADA's mean NFE speedup (steps / model calls).

Without ``--model`` it uses the tiny random MusicLDM of :mod:`tests.support.tiny_pipelines` (speed only; its outputs
are noise-like). One torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sada_audio.pipelines import load_pipeline, resolve_model_id
from sada_audio.render import RenderDefaults, RenderJob, RenderRun, process_state, read_manifest
from tests.support.tiny_pipelines import tiny_musicldm_pipeline

PROMPTS = ("slow piano arpeggio in A minor", "fast techno drum groove", "rain on a tin roof", "ambient synth pads")
CONFIGS = (("none", 1), ("none", 4), ("sada", 1), ("sada", 4))


def _manifest(path: Path, clips: int) -> Path:
    rows = [{"name": f"cue{i:03d}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(clips)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def render_once(
    pipe: object, model: str, manifest: Path, defaults: RenderDefaults, out: Path, accelerate: str, batch_size: int
) -> dict:
    """Render the whole manifest into the new folder ``out``; return the wall time and the mean NFE speedup."""
    out.mkdir()
    run = RenderRun(model, resolve_model_id(model), None, accelerate == "sada", "cpu", "float32")
    rows = read_manifest(manifest, defaults)
    with RenderJob(rows, out, run, batch_size=batch_size, state=process_state("cpu")) as job:
        started = time.perf_counter()
        progress = job.render(pipe, load_time_s=0.0)
        wall = time.perf_counter() - started
    summary = job.finish()
    if not summary.all_succeeded:
        raise RuntimeError(f"not every clip rendered: {summary.counts}")
    return {"wall_s": wall, "clips": progress.rendered, "speedup_estimate": progress.mean_speedup_estimate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--duration", type=float, default=2.56)
    parser.add_argument("--model", help="pipeline to load (default: the tiny random MusicLDM)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation notice for MusicLDM
        pipe = tiny_musicldm_pipeline() if args.model is None else load_pipeline(args.model)
    model = args.model or "tiny random MusicLDM (tests.support.tiny_pipelines)"
    defaults = RenderDefaults(steps=args.steps, duration=args.duration)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = _manifest(folder / "cues.jsonl", args.clips)
        warm_up = _manifest(folder / "warm-up.jsonl", 2)
        render_once(pipe, model, warm_up, defaults, folder / "warm-up", "sada", 2)
        runs: dict[tuple[str, int], list[dict]] = {config: [] for config in CONFIGS}
        for repeat in range(args.repeats):
            for config in CONFIGS:
                out = folder / f"{config[0]}-{config[1]}-{repeat}"
                runs[config].append(render_once(pipe, model, manifest, defaults, out, *config))
    results = {
        config: {**done[0], "wall_s": statistics.median(r["wall_s"] for r in done)} for config, done in runs.items()
    }

    baseline = results[CONFIGS[0]]["wall_s"]
    spread = {config: max(r["wall_s"] for r in done) / min(r["wall_s"] for r in done) for config, done in runs.items()}
    print(
        f"sada-audio render, {args.clips} clips of {args.duration} s, {args.steps} steps, model: {model}, "
        f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} interleaved rounds"
    )
    columns = ["accelerate", "batch size", "wall time", "max / min", "clips / min", "speedup vs batch 1, none"]
    print("| " + " | ".join([*columns, "mean speedup estimate (vs 50 steps)"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for (accelerate, batch_size), result in results.items():
        nfe = "-" if accelerate == "none" else f"{result['speedup_estimate']:.2f}x"
        print(
            f"| {accelerate} | {batch_size} | {result['wall_s']:.1f} s | {spread[accelerate, batch_size]:.2f} "
            f"| {60 * result['clips'] / result['wall_s']:.1f} "
            f"| {baseline / result['wall_s']:.2f}x | {nfe} |"
        )


if __name__ == "__main__":
    main()
