"""Stable Audio Open with and without SADA, same seed.

    python samples/stable_audio.py MODEL [--prompt TEXT] [--steps 100] [--seconds 10] [--guidance 7]
        [--seed 0] [--out-dir DIR]

MODEL is a Hub id (stabilityai/stable-audio-open-1.0) or a local pipeline directory. Its scheduler is
kept: Stable Audio Open ships the SDE sampler CosineDPMSolverMultistepScheduler (needs torchsde), whose
Brownian noise is seeded by the generator, so both runs see the same noise. Writes baseline.wav and
sada.wav (stereo) to --out-dir.
"""

import torch
from _compare import compare, relative_difference, sample_parser

from sada_audio.audio import write_audio
from sada_audio.pipelines import load_pipeline


def main() -> None:
    parser = sample_parser(__doc__, "The sound of a hammer hitting a wooden surface.", steps=100)
    parser.add_argument("--seconds", type=float, help="clip length (default: the model's maximum)")
    parser.add_argument("--guidance", type=float, default=7.0)
    args = parser.parse_args()

    pipe = load_pipeline(args.model)

    def generate():
        generator = torch.Generator().manual_seed(args.seed)
        return pipe(
            args.prompt,
            audio_end_in_s=args.seconds,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
            output_type="np",
        ).audios[0]

    baseline, accelerated = compare(pipe, generate)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rate = pipe.vae.config.sampling_rate
    write_audio(args.out_dir / "baseline.wav", baseline.T, rate)  # (channels, samples) -> (samples, channels)
    write_audio(args.out_dir / "sada.wav", accelerated.T, rate)
    print(f"mean relative waveform difference {relative_difference(accelerated, baseline):.4f}")


if __name__ == "__main__":
    main()
