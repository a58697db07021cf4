"""Flux with and without SADA, same seed (step skipping with velocity reconstruction; token pruning optional).

    python samples/flux.py MODEL [--prompt TEXT] [--steps 50] [--size H W] [--guidance 3.5] [--prune]
        [--seed 0] [--out-dir DIR]

MODEL is a Hub id (e.g. black-forest-labs/FLUX.1-dev) or a local pipeline directory. --prune switches on
token pruning (off in the published Flux preset). Writes baseline.png and sada.png to --out-dir.
"""

import argparse
from pathlib import Path

import torch
from _compare import compare, relative_difference, save_images

from sada_audio import SADAConfig
from sada_audio.pipelines import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", default="a cat holding a sign that says hello world")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(1024, 1024))
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--max-sequence-length", type=int, default=512, help="T5 prompt tokens")
    parser.add_argument("--prune", action="store_true", help="also prune tokens (kept tokens keep their RoPE ids)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    height, width = args.size

    def generate():
        generator = torch.Generator().manual_seed(args.seed)
        return pipe(
            args.prompt,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            max_sequence_length=args.max_sequence_length,
            generator=generator,
            output_type="np",
        ).images

    baseline, accelerated = compare(pipe, generate, SADAConfig.preset("flux", tokenwise=args.prune))
    save_images(pipe, args.out_dir, baseline=baseline, sada=accelerated)
    print(f"mean relative pixel difference {relative_difference(accelerated, baseline):.4f}")


if __name__ == "__main__":
    main()
