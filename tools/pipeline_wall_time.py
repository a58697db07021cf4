"""Whole-pipeline wall time of a MusicLDM / AudioLDM pipeline, eager and compiled (``torch.compile`` default and
CUDA graphs), unaccelerated, with SADA's preset and with DeepCache: the GPU measurement of issue 15.

Real size by default: the released UNet (185 M parameters), VAE and HiFi-GAN architectures with random weights
(scaled by 0.5 so float16 stays finite; cost only, never fidelity) and a small CLAP text encoder, 10.24 s
clips, 50 DDIM steps, guidance 2. Needs torch and diffusers only (DeepCache rows where its package is
installed) and runs in under 5 minutes on one recent GPU, compilation included::

    python -m tools.pipeline_wall_time --device cuda --json wall_time.json

``--size tiny --device cpu`` runs the same plan on the tiny test pipeline (what the tests do).
Every row says how long its first call took (that is where compilation happens) and the median of the
timed calls that follow; rows of one compile mode and batch run interleaved, round by round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from diffusers import AudioLDMPipeline, AutoencoderKL, MusicLDMPipeline, UNet2DConditionModel
from transformers import ClapModel, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

from sada_audio import apply_sada
from sada_audio.audio_ldm_parts import LATENT_CHANNELS, N_MELS, SAMPLE_RATE, clap_config, real_size_audioldm_unet_config
from sada_audio.evaluation.tables import markdown_table
from sada_audio.pipelines import repair_pipeline
from tests.support.tiny_pipelines import tiny_audioldm_pipeline, tiny_musicldm_pipeline

__all__ = ["Row", "audio_pipeline", "measure", "parse_plan"]

#: Compile modes and batch sizes measured by default: CUDA graphs at both batch sizes (the headline), the
#: default compile at batch 1 only (each new batch size costs another compilation, and the run must stay
#: under 5 minutes).
DEFAULT_PLAN = "none:1,8 default:1 reduce-overhead:1,8"
METHODS = ("baseline", "SADA", "DeepCache")
PROMPTS = (
    "a calm piano melody",
    "energetic drums and bass",
    "ambient synth pads",
    "acoustic guitar strumming",
    "jazz trio with brushes",
    "orchestral strings swelling",
    "lo-fi hip hop beat",
    "solo violin in a hall",
)


@dataclass
class Row:
    """One measured setup."""

    compile_mode: str
    batch: int
    method: str
    first_call_s: float | None = None
    """The first call of this setup: includes compiling when nothing compiled fits yet."""
    times_s: list[float] = field(default_factory=list)
    model_calls: int | None = None
    error: str | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


def _scaled(module: torch.nn.Module, factor: float = 0.5) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(factor)
    return module.eval()


def audio_pipeline(size: str = "real", family: str = "musicldm") -> Any:
    """A random MusicLDM / AudioLDM pipeline: ``tiny`` (the test pipeline) or ``real`` (released architectures
    of the UNet, VAE and vocoder around the tiny pipeline's tokenizer and a small CLAP with the released 512-d
    projection the UNet expects)."""
    build = {"musicldm": tiny_musicldm_pipeline, "audioldm": tiny_audioldm_pipeline}[family]
    tiny = build()
    if size == "tiny":
        return tiny
    torch.manual_seed(0)
    parts = dict(tiny.components)
    text_length = tiny.text_encoder.config.text_config.max_position_embeddings - 2
    clap = clap_config(len(tiny.tokenizer), width=32, spec_size=64, max_text_length=text_length, projection_dim=512)
    parts["text_encoder"] = (
        ClapModel(clap) if family == "musicldm" else ClapTextModelWithProjection(clap.text_config)
    ).eval()
    parts["unet"] = _scaled(UNet2DConditionModel(**real_size_audioldm_unet_config()))
    parts["vae"] = _scaled(
        AutoencoderKL(
            in_channels=1,
            out_channels=1,
            latent_channels=LATENT_CHANNELS,
            block_out_channels=(128, 256, 512),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=2,
            scaling_factor=1.0,
        )
    )
    parts["vocoder"] = _scaled(
        SpeechT5HifiGan(
            SpeechT5HifiGanConfig(
                model_in_dim=N_MELS,
                sampling_rate=SAMPLE_RATE,
                upsample_initial_channel=1024,
                upsample_rates=[5, 4, 2, 2, 2],
                upsample_kernel_sizes=[16, 16, 8, 4, 4],
                resblock_kernel_sizes=[3, 7, 11],
                resblock_dilation_sizes=[[1, 3, 5]] * 3,
                normalize_before=False,
            )
        )
    )
    pipeline_cls = MusicLDMPipeline if family == "musicldm" else AudioLDMPipeline
    pipe = repair_pipeline(pipeline_cls(**parts))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parse_plan(text: str) -> list[tuple[str, list[int]]]:
    """``"none:1,8 reduce-overhead:1"`` -> ``[("none", [1, 8]), ("reduce-overhead", [1])]``."""
    plan = []
    for item in text.split():
        mode, _, batches = item.partition(":")
        if mode not in ("none", "default", "max-autotune", "reduce-overhead") or not batches:
            raise SystemExit(f"bad plan item {item!r}: MODE:BATCH[,BATCH...] with MODE none/default/...")
        plan.append((mode, [int(batch) for batch in batches.split(",")]))
    return plan


def _attach(method: str, pipe: Any) -> tuple[Callable[[], None], Callable[[], int | None]]:
    """Attach ``method`` to ``pipe``; return (detach, model calls of the last pipeline call)."""
    if method == "baseline":
        return (lambda: None), (lambda: None)
    if method == "SADA":
        handle = apply_sada(pipe)
        return handle.remove, (lambda: handle.stats.model_calls)
    from DeepCache import DeepCacheSDHelper  # optional: rows say so where it is missing

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    return helper.disable, (lambda: None)


def measure(
    pipe: Any,
    plan: Sequence[tuple[str, Sequence[int]]],
    *,
    methods: Sequence[str] = METHODS,
    seconds: float = 10.24,
    steps: int = 50,
    repeats: int = 3,
    budget_s: float = 270.0,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Time ``pipe`` per compile mode, batch size and method (interleaved) on ``clock`` (wall time; on a shared
    CPU ``time.process_time`` counts only this process's work); stop starting new setups once ``budget_s``
    have passed (their rows say so)."""
    unet = pipe.unet
    device = unet.device
    started = time.perf_counter()
    rows: list[Row] = []

    def call(batch: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = clock()
        pipe(
            list(PROMPTS[:batch]) if batch > 1 else PROMPTS[0],
            num_inference_steps=steps,
            audio_length_in_s=seconds,
            guidance_scale=2.0,
            generator=torch.Generator(device).manual_seed(0),
            output_type="np",
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - begin

    try:
        for mode, batches in plan:
            pipe.unet = unet if mode == "none" else torch.compile(unet, **({} if mode == "default" else {"mode": mode}))
            for batch in batches:
                setup = [Row(mode, batch, method) for method in methods]
                rows.extend(setup)
                if time.perf_counter() - started > budget_s:
                    for row in setup:
                        row.error = f"not run: the {budget_s:.0f} s budget was spent"
                    continue
                for round_index in range(repeats + 1):
                    for row in setup:
                        if row.error is not None:
                            continue
                        try:
                            detach, calls = _attach(row.method, pipe)
                        except ImportError as error:
                            row.error = f"unavailable: {error}"
                            continue
                        try:
                            seconds_taken = call(batch)
                            row.model_calls = calls()
                        except Exception as error:  # a method that fails under compilation is a result too
                            row.error = f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
                            continue
                        finally:
                            detach()
                        if round_index == 0:
                            row.first_call_s = seconds_taken
                        else:
                            row.times_s.append(seconds_taken)
                for row in setup:
                    log(f"{mode} batch {batch} {row.method}: first {row.first_call_s}, median {row.median_s}")
    finally:
        pipe.unet = unet
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    eager = {row.batch: row.median_s for row in rows if (row.compile_mode, row.method) == ("none", "baseline")}
    lines = []
    for row in rows:
        median, reference = row.median_s, eager.get(row.batch)
        speedup = f"{reference / median:.2f}x" if median and reference else ""
        lines.append(
            [
                row.compile_mode,
                str(row.batch),
                row.method,
                "" if median is None else f"{median:.3f}",
                speedup,
                "" if row.first_call_s is None else f"{row.first_call_s:.1f}",
                "" if row.model_calls is None else str(row.model_calls),
                row.error or "",
            ]
        )
    header = ["compile", "batch", "method", "median s", "vs eager baseline", "first call s", "UNet calls", "note"]
    return markdown_table(header, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--family", choices=["musicldm", "audioldm"], default="musicldm")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--plan", default=DEFAULT_PLAN, help=f"compile modes and batches [{DEFAULT_PLAN}]")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seconds", type=float, default=10.24, help="clip length")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setup after the first")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no new setup after this")
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall", help="'process': CPU time (a shared CPU only)"
    )
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()

    pipe = audio_pipeline(args.size, args.family).to(args.device, getattr(torch, args.dtype))
    rows = measure(
        pipe,
        parse_plan(args.plan),
        methods=args.methods.split(","),
        seconds=args.seconds,
        steps=args.steps,
        repeats=args.repeats,
        budget_s=args.budget_s,
        clock=time.process_time if args.clock == "process" else time.perf_counter,
    )
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    print(f"\n{args.size} {args.family}, {args.seconds} s, {args.steps} steps, {args.dtype} on {device}")
    print(f"torch {torch.__version__}\n")
    print("\n".join(table(rows)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            settings = {key: value for key, value in vars(args).items() if key != "json"}
            payload = {"device": device, "torch": torch.__version__, "settings": settings}
            json.dump({**payload, "rows": [asdict(row) for row in rows]}, handle, indent=2)


if __name__ == "__main__":
    main()
