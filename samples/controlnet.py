"""ControlNet (Stable Diffusion or SDXL) with and without SADA, same seed; the ControlNet needs no changes.

    python samples/controlnet.py MODEL --control IMAGE [--prompt TEXT] [--steps 50] [--scheduler euler]
        [--seed 0] [--out-dir DIR]

MODEL is a local directory or Hub id of a whole ControlNet pipeline (StableDiffusionControlNetPipeline or
StableDiffusionXLControlNetPipeline saved with save_pretrained). IMAGE is the control image (e.g. a Canny
edge map) in the output size; without --control a synthetic pattern of the model's default size is used.
Writes baseline.png and sada.png to --out-dir; on skipped steps SADA skips the ControlNet with the UNet.
"""

from pathlib import Path

import numpy as np
from _compare import compare_images, sample_parser
from PIL import Image

from sada_audio.pipelines import SCHEDULER_CHOICES, load_pipeline, set_scheduler


def main() -> None:
    parser = sample_parser(__doc__, "a futuristic city street, night, neon lights")
    parser.add_argument("--control", type=Path, help="control image file")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, help="replace the pipeline's sampler")
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    if args.control:
        control = Image.open(args.control).convert("RGB")
    else:
        # concentric rings: an edge-map-like control image of the model's default size
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        radius = np.hypot(*np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j])
        control = Image.fromarray(np.uint8(255 * (np.sin(24 * radius) > 0.9))).convert("RGB")

    compare_images(pipe, args, image=control, height=control.height, width=control.width)


if __name__ == "__main__":
    main()
