"""Run a MusicLDM / AudioLDM / AudioLDM2 pipeline with and without SADA and compare.

    python samples/accelerate_pipeline.py MODEL [--prompt TEXT] [--steps 50] [--seed 0] [--out-dir DIR]

MODEL is a hub id, a local pipeline directory, or a short name (musicldm, audioldm, audioldm2).
Writes baseline.wav and sada.wav to --out-dir and prints wall times, NFE and the skipped steps.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sada_audio import apply_sada
from sada_audio.audio import pipeline_sample_rate, write_audio
from sada_audio.pipelines import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", default="slow piano arpeggio in A minor")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)

    def generate() -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        audio = pipe(
            args.prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)
        ).audios[0]
        return audio, time.perf_counter() - started

    baseline, baseline_time = generate()
    with apply_sada(pipe) as handle:  # the preset of the pipeline's family
        accelerated, sada_time = generate()
        stats = handle.stats

    args.out_dir.mkdir(parents=True, exist_ok=True)
    rate = pipeline_sample_rate(pipe)
    write_audio(args.out_dir / "baseline.wav", baseline, rate)
    write_audio(args.out_dir / "sada.wav", accelerated, rate)
    difference = float(np.abs(accelerated - baseline).mean() / max(np.abs(baseline).mean(), 1e-12))
    print(f"baseline {baseline_time:.2f} s, SADA {sada_time:.2f} s ({baseline_time / sada_time:.2f}x)")
    print(f"model calls {stats.model_calls}/{stats.num_steps}, skipped steps {stats.skipped_steps}")
    print(f"pruned token share {stats.pruned_fraction:.1%}, mean relative waveform difference {difference:.4f}")


if __name__ == "__main__":
    main()
