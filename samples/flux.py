"""Flux with and without SADA, same seed (step skipping with velocity reconstruction; token pruning optional).

    python samples/flux.py MODEL [--prompt TEXT] [--steps 50] [--size H W] [--guidance 3.5] [--prune]
        [--seed 0] [--out-dir DIR]

MODEL is a Hub id (e.g. black-forest-labs/FLUX.1-dev) or a local pipeline directory. --prune switches on
token pruning (off in the published Flux preset). Writes baseline.png and sada.png to --out-dir.
"""

from _compare import compare_images, sample_parser

from sada_audio import SADAConfig
from sada_audio.pipelines import load_pipeline


def main() -> None:
    parser = sample_parser(__doc__, "a cat holding a sign that says hello world")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(1024, 1024))
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--max-sequence-length", type=int, default=512, help="T5 prompt tokens")
    parser.add_argument("--prune", action="store_true", help="also prune tokens (kept tokens keep their RoPE ids)")
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    height, width = args.size
    config = SADAConfig.preset("flux", tokenwise=args.prune)
    compare_images(
        pipe,
        args,
        config,
        height=height,
        width=width,
        guidance_scale=args.guidance,
        max_sequence_length=args.max_sequence_length,
    )


if __name__ == "__main__":
    main()
