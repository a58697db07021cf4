"""Stable Diffusion 2 or SDXL with and without SADA, same seed.

    python samples/stable_diffusion.py MODEL [--prompt TEXT] [--steps 50] [--size H W] [--scheduler euler]
        [--seed 0] [--out-dir DIR]

MODEL is a Hub id (e.g. stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0) or a
local pipeline directory. Writes baseline.png and sada.png to --out-dir and prints wall times and NFE.
"""

from _compare import compare_images, sample_parser

from sada_audio.pipelines import SCHEDULER_CHOICES, load_pipeline, set_scheduler


def main() -> None:
    parser = sample_parser(__doc__, "a lighthouse on a cliff at sunset, oil painting")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (default: the model's)")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, help="replace the pipeline's sampler")
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    height, width = args.size or (None, None)
    compare_images(pipe, args, height=height, width=width)


if __name__ == "__main__":
    main()
