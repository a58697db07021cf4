"""Stable Diffusion 2 or SDXL with and without SADA, same seed.

    python samples/stable_diffusion.py MODEL [--prompt TEXT] [--steps 50] [--size H W] [--scheduler euler]
        [--seed 0] [--out-dir DIR]

MODEL is a Hub id (e.g. stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0) or a
local pipeline directory. Writes baseline.png and sada.png to --out-dir and prints wall times and NFE.
"""

import argparse
from pathlib import Path

import torch
from _compare import compare, relative_difference, save_images

from sada_audio.pipelines import SCHEDULER_CHOICES, load_pipeline, set_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at sunset, oil painting")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: the model's)")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, help="replace the pipeline's sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    height, width = args.size or (None, None)

    def generate():
        generator = torch.Generator().manual_seed(args.seed)
        return pipe(
            args.prompt,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            generator=generator,
            output_type="np",
        ).images

    baseline, accelerated = compare(pipe, generate)
    save_images(pipe, args.out_dir, baseline=baseline, sada=accelerated)
    print(f"mean relative pixel difference {relative_difference(accelerated, baseline):.4f}")


if __name__ == "__main__":
    main()
