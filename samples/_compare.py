"""Shared by the family samples: one pipeline run with and without SADA, same seed, and a report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sada_audio import SADAConfig, SADAStats, apply_sada
from sada_audio.audio import write_atomically


def sample_parser(doc: str, prompt: str, steps: int = 50) -> argparse.ArgumentParser:
    """The options every sample shares: MODEL, --prompt, --steps, --seed, --out-dir."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", help="Hub id or local pipeline directory")
    parser.add_argument("--prompt", default=prompt)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    return parser


def compare(pipe: Any, generate: Callable[[], Any], config: SADAConfig | None = None) -> tuple[Any, Any]:
    """Run ``generate()`` without and with SADA (``config``, by default the family's preset); print wall
    times and what SADA did; return both outputs."""
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    baseline = generate()
    baseline_time = time.perf_counter() - started
    with apply_sada(pipe, config) as handle:
        started = time.perf_counter()
        accelerated = generate()
        sada_time = time.perf_counter() - started
        stats: SADAStats = handle.stats
    print(f"baseline {baseline_time:.2f} s, SADA {sada_time:.2f} s ({baseline_time / sada_time:.2f}x)")
    print(f"model calls {stats.model_calls}/{stats.num_steps}, skipped steps {stats.skipped_steps}")
    print(f"pruned token share {stats.pruned_fraction:.1%}, fallbacks {stats.fallbacks}")
    return baseline, accelerated


def relative_difference(accelerated: np.ndarray, baseline: np.ndarray) -> float:
    """Mean absolute difference relative to the baseline's mean magnitude."""
    return float(np.abs(accelerated - baseline).mean() / max(float(np.abs(baseline).mean()), 1e-12))


def save_images(pipe: Any, out_dir: Path, **images: np.ndarray) -> None:
    """Write ``(1, H, W, 3)`` float images in [0, 1] as ``<name>.png`` in ``out_dir``, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        picture = pipe.image_processor.numpy_to_pil(image)[0]
        write_atomically(out_dir / f"{name}.png", lambda f, picture=picture: picture.save(f, format="PNG"))


def compare_images(pipe: Any, args: argparse.Namespace, config: SADAConfig | None = None, **call: Any) -> None:
    """:func:`compare` for an image pipeline called with the prompt, steps and seed of ``args`` plus
    ``call``; writes baseline.png and sada.png to ``args.out_dir``."""

    def generate() -> np.ndarray:
        generator = torch.Generator().manual_seed(args.seed)
        return pipe(args.prompt, num_inference_steps=args.steps, generator=generator, output_type="np", **call).images

    baseline, accelerated = compare(pipe, generate, config)
    save_images(pipe, args.out_dir, baseline=baseline, sada=accelerated)
    print(f"mean relative pixel difference {relative_difference(accelerated, baseline):.4f}")
