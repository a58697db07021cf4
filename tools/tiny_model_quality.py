"""Quality of the embedded tiny MusicLDM, and SADA's speed and fidelity on it.

    python -m tools.tiny_model_quality --part all --out runs/tiny_quality.json

Parts (``--part``, repeatable; all prompts and clips are held out: seeds >= HELDOUT_SEED_START):

* ``vocoder``: ground-truth audio -> log-mel -> waveform, with the shipped vocoder, librosa's Griffin-Lim
  (32 iterations, the baseline the issue names) and, with ``--workdir``, the trained HiFi-GAN checkpoint;
  log-mel L1 and multi-resolution STFT distance against the ground truth.
* ``vae``: log-mel L1 of the VAE round trip (posterior mean) on held-out clips.
* ``prompts``: does the audio follow the caption?  Key of "in X major/minor" prompts recovered by a chroma
  key estimate (Krumhansl-Schmuckler profiles) vs chance 1/24; percussive energy share (librosa HPSS) of
  "drum groove" vs "piano" prompts; estimated tempo of "slow" vs "fast" drum prompts. The same estimators on
  the ground-truth audio of the same captions are reported as the ceiling.
* ``sada``: wall time and fidelity (log-mel PSNR and SSIM, MR-STFT, SI-SDR vs the unaccelerated output of the
  same seed) with the ``musicldm`` preset at 50 DDIM and 50 DPM++ steps.

Prints markdown tables; ``--out`` also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
from scipy.stats import binomtest

from sada_audio import SADAConfig, apply_sada
from sada_audio.audio import write_json
from sada_audio.audio_ldm_parts import HOP_LENGTH, SAMPLE_RATE
from sada_audio.evaluation.metrics import (
    log_mel_l1,
    log_mel_spectrogram,
    multi_resolution_stft_distance,
    si_sdr,
    spectrogram_psnr,
    spectrogram_ssim,
)
from sada_audio.evaluation.tables import markdown_table
from sada_audio.pipelines import load_pipeline, set_scheduler
from sada_audio.tiny.features import N_FFT, log_mel
from tools.tiny.music import HELDOUT_SEED_START, LEADS, ClipSpec, caption, render, sample_spec
from tools.tiny.train import text_embeddings

logger = logging.getLogger("tools.tiny_model_quality")

PARTS = ("vocoder", "vae", "prompts", "sada")
# latent frames of the clips that measure the conditioning gaps (the UNet's training crop)
_GAP_CROP = 48
# Chroma from C4 (262 Hz) over four octaves. Below C4 a 64-bin mel spectrogram is coarser than a semitone
# (about 47 Hz per bin), so any audio resynthesised from it (vocoder, VAE, generated) has smeared low partials,
# and chroma taken there is noise: with librosa's default range the ground truth scored 14/32 exact keys but
# the vocoded ground truth only 8/32; from C4 up, 17/32 and 15/32.
_CHROMA_FMIN_NOTE = "C4"
_CHROMA_OCTAVES = 4
# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


# ------------------------------------------------------------------------------------------- estimators


def key_scores(wave: np.ndarray) -> dict[tuple[int, str], float]:
    """Correlation of the clip's mean chroma with the Krumhansl-Kessler profile of each of the 24 keys."""
    chroma = librosa.feature.chroma_cqt(
        y=wave, sr=SAMPLE_RATE, fmin=librosa.note_to_hz(_CHROMA_FMIN_NOTE), n_octaves=_CHROMA_OCTAVES
    ).mean(axis=1)
    return {
        (tonic, mode): float(np.corrcoef(chroma, np.roll(profile, tonic))[0, 1])
        for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE))
        for tonic in range(12)
    }


def key_rank(scores: dict[tuple[int, str], float], key: tuple[int, str]) -> int:
    """Rank (1 = best, 24 = worst; 12.5 on average by chance) of ``key`` among the 24 :func:`key_scores`."""
    return 1 + sum(value > scores[key] for value in scores.values())


def percussive_share(wave: np.ndarray) -> float:
    """Share of the STFT energy that librosa's median-filter HPSS assigns to the percussive part."""
    spec = np.abs(librosa.stft(wave, n_fft=1024, hop_length=256)) ** 2
    harmonic, percussive = librosa.decompose.hpss(spec)
    return float(percussive.sum() / (harmonic.sum() + percussive.sum() + 1e-12))


def estimate_tempo(wave: np.ndarray) -> float:
    """librosa's tempo estimate in bpm (octave errors are common: 70 bpm grooves with 8th-note hats read 139)."""
    return float(librosa.feature.tempo(y=wave, sr=SAMPLE_RATE, hop_length=256)[0])


def onset_rate(wave: np.ndarray) -> float:
    """Detected onsets per second: free of tempo-octave errors, and it doubles from 70 to 140 bpm."""
    return len(librosa.onset.onset_detect(y=wave, sr=SAMPLE_RATE, hop_length=256)) / (len(wave) / SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------- helpers


def _heldout_specs(count: int, offset: int, **fixed: Any) -> list[ClipSpec]:
    return [sample_spec(HELDOUT_SEED_START + offset + i, **fixed) for i in range(count)]


def _heldout_tonal_specs(count: int, offset: int) -> list[ClipSpec]:
    """The first ``count`` held-out clips from ``offset`` on that have a lead, so their captions name a key."""
    specs: list[ClipSpec] = []
    seed = HELDOUT_SEED_START + offset
    while len(specs) < count:
        spec = sample_spec(seed)
        seed += 1
        if spec.lead is not None:
            specs.append(spec)
    return specs


@torch.no_grad()
def _vocode(pipe: Any, mel: torch.Tensor, length: int) -> np.ndarray:
    """The pipeline's vocoder on one ``(frames, 64)`` log-mel, cut to ``length`` samples."""
    return pipe.vocoder(mel[None].to(pipe.vocoder.dtype))[0, :length].float().numpy()


def _generate(pipe: Any, prompt: str, steps: int, seed: int, guidance: float) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    audio = pipe(
        prompt, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed)
    ).audios[0]
    return audio, time.perf_counter() - start


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values))


def _with_vocoded(result: dict[str, Any], measure: str, fmt: str) -> str:
    """The ground truth's value, and in brackets that of the ground truth resynthesised by the vocoder."""
    truth, vocoded = result[f"{measure}_ground_truth"], result[f"{measure}_vocoded_ground_truth"]
    return f"{fmt.format(truth)} (vocoded {fmt.format(vocoded)})"


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return "\n".join([f"\n### {title}\n", *markdown_table(header, rows, cell)])


# ------------------------------------------------------------------------------------------------ parts


def griffin_lim_librosa(mel: torch.Tensor, length: int) -> np.ndarray:
    """librosa's mel inversion + 32 Griffin-Lim iterations for one ``(frames, 64)`` log-mel."""
    magnitude = np.exp(mel.numpy().T)
    # the centred STFT of ``length`` samples has one frame more than our mel (the features drop it)
    magnitude = np.concatenate([magnitude, magnitude[:, -1:]], axis=1)
    return librosa.feature.inverse.mel_to_audio(
        magnitude,
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        power=1.0,
        n_iter=32,
        fmin=0.0,
        fmax=SAMPLE_RATE / 2,
        length=length,
    ).astype(np.float32)


def eval_vocoder(pipe: Any, clips: int, workdir: Path | None) -> dict[str, Any]:
    vocoders: dict[str, Callable[[torch.Tensor, int], np.ndarray]] = {
        f"shipped ({type(pipe.vocoder).__name__})": lambda m, n: _vocode(pipe, m, n),
        "librosa Griffin-Lim (32 it.)": griffin_lim_librosa,
    }
    if workdir is not None:
        from tools.tiny.components import build_vocoder
        from tools.tiny.train import load_checkpoint

        hifigan = build_vocoder().eval()
        state = load_checkpoint(workdir, "vocoder")
        hifigan.load_state_dict(state["model"])
        vocoders[f"trained HiFi-GAN ({state['step']} steps)"] = lambda m, n: hifigan(m[None])[0, :n].detach().numpy()
    scores: dict[str, dict[str, list[float]]] = {name: {"log_mel_l1": [], "mr_stft": []} for name in vocoders}
    for spec in _heldout_specs(clips, 0):
        wave = render(spec)
        mel = log_mel(wave)
        reference = log_mel_spectrogram(wave, SAMPLE_RATE)
        for name, vocode in vocoders.items():
            with torch.no_grad():
                out = vocode(mel, len(wave))
            scores[name]["log_mel_l1"].append(log_mel_l1(reference, log_mel_spectrogram(out, SAMPLE_RATE)))
            scores[name]["mr_stft"].append(multi_resolution_stft_distance(wave, out))
    result = {name: {k: _mean(v) for k, v in s.items()} for name, s in scores.items()}
    print(
        _table(
            f"Vocoders on {clips} held-out clips (lower is better)",
            ["vocoder", "log-mel L1", "MR-STFT"],
            [[n, r["log_mel_l1"], r["mr_stft"]] for n, r in result.items()],
        )
    )
    return result


@torch.no_grad()
def eval_vae(pipe: Any, clips: int) -> dict[str, float]:
    errors = []
    for spec in _heldout_specs(clips, 0):
        mel = log_mel(render(spec))[None, None]
        recon = pipe.vae.decode(pipe.vae.encode(mel).latent_dist.mode()).sample
        errors.append(float((recon - mel).abs().mean()))
    result = {"log_mel_l1": _mean(errors), "clips": clips}
    print(
        _table(
            f"VAE round trip on {clips} held-out clips", ["log-mel L1 (natural log units)"], [[result["log_mel_l1"]]]
        )
    )
    return result


@torch.no_grad()
def conditioning_gaps(pipe: Any, count: int, timesteps: Sequence[int] = (100, 300, 500, 700, 900)) -> dict[str, float]:
    """How much the UNet relies on the key and on the lead instrument a caption names.

    The relative rise of the epsilon-prediction loss on ``count`` held-out tonal clips (1.92 s crops, the same
    noise at each timestep) when the caption names another key (a random other tonic, same mode) or the next
    lead instrument, against the true caption. 0 means the attribute is ignored.
    """
    specs = _heldout_tonal_specs(count, 2000)
    rng = np.random.default_rng(0)
    leads = sorted(LEADS)
    captions = {
        "right": [caption(s) for s in specs],
        "key": [caption(replace(s, root=(s.root + int(rng.integers(1, 12))) % 12)) for s in specs],
        "lead": [caption(replace(s, lead=leads[(leads.index(s.lead) + 1) % len(leads)])) for s in specs],
    }
    device, dtype = pipe.unet.device, pipe.unet.dtype
    embeddings = {
        name: text_embeddings(pipe.text_encoder, pipe.tokenizer, texts, device).to(dtype)
        for name, texts in captions.items()
    }
    mels = torch.stack([log_mel(render(s))[: 4 * _GAP_CROP] for s in specs])[:, None].to(device, dtype)
    latents = pipe.vae.encode(mels).latent_dist.mode() * pipe.vae.config.scaling_factor
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    generator = torch.Generator().manual_seed(0)
    losses: dict[str, float] = dict.fromkeys(embeddings, 0.0)
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
        noisy = alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * noise
        step = torch.full((len(specs),), t, device=device)
        for name, embedding in embeddings.items():
            pred = pipe.unet(noisy, step, encoder_hidden_states=None, class_labels=embedding).sample
            losses[name] += float(((pred - noise) ** 2).mean())
    return {
        "key_loss_gap": losses["key"] / losses["right"] - 1,
        "lead_loss_gap": losses["lead"] / losses["right"] - 1,
        "loss_gap_clips": len(specs),
    }


def eval_prompts(pipe: Any, count: int, steps: int, guidance: float) -> dict[str, Any]:
    # key: tonal held-out captions ("... in X major/minor")
    tonal = _heldout_tonal_specs(count, 100)
    key_hits: dict[str, list[bool]] = {"generated": [], "truth": [], "vocoded": []}
    key_ranks: dict[str, list[int]] = {"generated": [], "truth": [], "vocoded": []}
    for i, spec in enumerate(tonal):
        truth = render(spec)
        vocoded = _vocode(pipe, log_mel(truth), len(truth))
        clips = {"generated": _generate(pipe, caption(spec), steps, i, guidance)[0], "truth": truth, "vocoded": vocoded}
        for name, wave in clips.items():
            # one chroma per clip: the exact-key hit is rank 1
            rank = key_rank(key_scores(wave), (spec.root, spec.mode))
            key_hits[name].append(rank == 1)
            key_ranks[name].append(rank)
    # drums vs piano, and tempo words (on drum grooves, whose onsets carry the tempo)
    half = max(1, count // 2)
    slow = _heldout_specs(half, 300, lead=None, bpm=70)
    fast = _heldout_specs(half, 400, lead=None, bpm=140)
    piano = _heldout_specs(2 * half, 500, lead="piano", groove=None)
    measures: dict[str, dict[str, list[float]]] = {}
    for name, specs in (("slow drums", slow), ("fast drums", fast), ("piano", piano)):
        generated = [_generate(pipe, caption(s), steps, j, guidance)[0] for j, s in enumerate(specs)]
        truth = [render(s) for s in specs]
        measures[name] = {
            "percussive_share": [percussive_share(a) for a in generated],
            "percussive_share_truth": [percussive_share(a) for a in truth],
            "tempo": [estimate_tempo(a) for a in generated],
            "tempo_truth": [estimate_tempo(a) for a in truth],
            "onset_rate": [onset_rate(a) for a in generated],
            "onset_rate_truth": [onset_rate(a) for a in truth],
        }
    drums = measures["slow drums"]["percussive_share"] + measures["fast drums"]["percussive_share"]
    pairs = [d > p for d in drums for p in measures["piano"]["percussive_share"]]
    result = {
        "key_accuracy": _mean(key_hits["generated"]),
        "key_accuracy_ground_truth": _mean(key_hits["truth"]),
        "key_accuracy_vocoded_ground_truth": _mean(key_hits["vocoded"]),
        "key_chance": 1 / 24,
        # one-sided binomial test: how likely this many exact keys are from 1-in-24 guessing
        "key_accuracy_p_value": float(binomtest(sum(key_hits["generated"]), len(tonal), 1 / 24, "greater").pvalue),
        "key_mean_rank": _mean(key_ranks["generated"]),
        "key_mean_rank_ground_truth": _mean(key_ranks["truth"]),
        "key_mean_rank_vocoded_ground_truth": _mean(key_ranks["vocoded"]),
        "key_prompts": len(tonal),
        "percussive_share_drums": _mean(drums),
        "percussive_share_piano": _mean(measures["piano"]["percussive_share"]),
        "drums_more_percussive_than_piano_pairs": _mean(pairs),
        "percussive_share_drums_truth": _mean(
            measures["slow drums"]["percussive_share_truth"] + measures["fast drums"]["percussive_share_truth"]
        ),
        "percussive_share_piano_truth": _mean(measures["piano"]["percussive_share_truth"]),
        "tempo_median_slow": float(np.median(measures["slow drums"]["tempo"])),
        "tempo_median_fast": float(np.median(measures["fast drums"]["tempo"])),
        "tempo_median_slow_truth": float(np.median(measures["slow drums"]["tempo_truth"])),
        "tempo_median_fast_truth": float(np.median(measures["fast drums"]["tempo_truth"])),
        "onset_rate_slow": _mean(measures["slow drums"]["onset_rate"]),
        "onset_rate_fast": _mean(measures["fast drums"]["onset_rate"]),
        "onset_rate_slow_truth": _mean(measures["slow drums"]["onset_rate_truth"]),
        "onset_rate_fast_truth": _mean(measures["fast drums"]["onset_rate_truth"]),
        "fast_denser_than_slow_pairs": _mean(
            [f > s for f in measures["fast drums"]["onset_rate"] for s in measures["slow drums"]["onset_rate"]]
        ),
        **conditioning_gaps(pipe, 2 * count),
        "steps": steps,
        "guidance": guidance,
    }
    print(
        _table(
            f"Prompt following ({steps} DDIM steps, guidance {guidance}; ground truth: the real clips)",
            ["measure", "generated", "ground truth", "chance / reference"],
            [
                [
                    f"key exact ({len(tonal)} prompts)",
                    result["key_accuracy"],
                    _with_vocoded(result, "key_accuracy", "{:.3f}"),
                    1 / 24,
                ],
                ["p-value of the exact-key count under chance", f"{result['key_accuracy_p_value']:.1e}", "", ""],
                [
                    "mean rank of the prompt's key (1-24)",
                    result["key_mean_rank"],
                    _with_vocoded(result, "key_mean_rank", "{:.2f}"),
                    12.5,
                ],
                ["denoising loss rise, caption with a wrong key", f"{100 * result['key_loss_gap']:.2f}%", "", "0%"],
                ["denoising loss rise, caption with a wrong lead", f"{100 * result['lead_loss_gap']:.2f}%", "", "0%"],
                [
                    "percussive share, drum prompts",
                    result["percussive_share_drums"],
                    result["percussive_share_drums_truth"],
                    "",
                ],
                [
                    "percussive share, piano prompts",
                    result["percussive_share_piano"],
                    result["percussive_share_piano_truth"],
                    "",
                ],
                [
                    "P(drum clip more percussive than piano clip)",
                    result["drums_more_percussive_than_piano_pairs"],
                    "",
                    0.5,
                ],
                [
                    "median tempo, 'slow ... 70 bpm' prompts",
                    result["tempo_median_slow"],
                    result["tempo_median_slow_truth"],
                    70.0,
                ],
                [
                    "median tempo, 'fast ... 140 bpm' prompts",
                    result["tempo_median_fast"],
                    result["tempo_median_fast_truth"],
                    140.0,
                ],
                [
                    "onsets per second, 'slow' prompts",
                    result["onset_rate_slow"],
                    result["onset_rate_slow_truth"],
                    "",
                ],
                [
                    "onsets per second, 'fast' prompts",
                    result["onset_rate_fast"],
                    result["onset_rate_fast_truth"],
                    "",
                ],
                ["P(fast clip has more onsets/s than slow clip)", result["fast_denser_than_slow_pairs"], "", 0.5],
            ],
        )
    )
    return result


def eval_sada(pipe: Any, count: int, steps: int, guidance: float, config: SADAConfig) -> dict[str, Any]:
    prompts = [caption(s) for s in _heldout_specs(count, 700)]
    result: dict[str, Any] = {"config": config.to_dict(), "prompts": count, "steps": steps}
    rows = []
    for scheduler in ("ddim", "dpm++"):
        set_scheduler(pipe, scheduler)
        base_times, sada_times, calls, fidelity = [], [], [], {"psnr": [], "ssim": [], "mr_stft": [], "si_sdr": []}
        for seed, prompt in enumerate(prompts):
            base, t_base = _generate(pipe, prompt, steps, seed, guidance)
            with apply_sada(pipe, config) as handle:
                fast, t_sada = _generate(pipe, prompt, steps, seed, guidance)
            base_times.append(t_base)
            sada_times.append(t_sada)
            calls.append(handle.stats.model_calls)
            ref_mel, test_mel = log_mel_spectrogram(base, SAMPLE_RATE), log_mel_spectrogram(fast, SAMPLE_RATE)
            fidelity["psnr"].append(spectrogram_psnr(ref_mel, test_mel))
            fidelity["ssim"].append(spectrogram_ssim(ref_mel, test_mel))
            fidelity["mr_stft"].append(multi_resolution_stft_distance(base, fast))
            fidelity["si_sdr"].append(si_sdr(base, fast))
        entry = {
            "baseline_s": _mean(base_times),
            "sada_s": _mean(sada_times),
            "speedup": sum(base_times) / sum(sada_times),
            "model_calls": _mean(calls),
            **{k: _mean(v) for k, v in fidelity.items()},
        }
        result[scheduler] = entry
        rows.append(
            [
                scheduler,
                entry["baseline_s"],
                entry["sada_s"],
                entry["speedup"],
                entry["model_calls"],
                entry["psnr"],
                entry["ssim"],
                entry["mr_stft"],
                entry["si_sdr"],
            ]
        )
    set_scheduler(pipe, "ddim")
    print(
        _table(
            f"SADA (preset musicldm) vs the unaccelerated pipeline, {count} prompts x {steps} steps, same seeds",
            [
                "sampler",
                "baseline s",
                "SADA s",
                "speedup",
                "model calls",
                "log-mel PSNR dB",
                "SSIM",
                "MR-STFT",
                "SI-SDR dB",
            ],
            rows,
        )
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-musicldm")
    parser.add_argument("--part", action="append", choices=[*PARTS, "all"], help="what to measure (default: all)")
    parser.add_argument("--clips", type=int, default=16, help="held-out clips for the vocoder and VAE parts")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per group (prompt and SADA parts)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--workdir", type=Path, help="training folder: also score its trained HiFi-GAN checkpoint")
    parser.add_argument("--sada", default="", help="preset overrides, e.g. 'max_interval=3; lagrange_int=3'")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    parts = PARTS if not args.part or "all" in args.part else tuple(args.part)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    config = SADAConfig.preset("musicldm").with_overrides(args.sada)
    results: dict[str, Any] = {"model": args.model, "torch_threads": 1}
    if "vocoder" in parts:
        results["vocoder"] = eval_vocoder(pipe, args.clips, args.workdir)
    if "vae" in parts:
        results["vae"] = eval_vae(pipe, args.clips)
    if "prompts" in parts:
        results["prompts"] = eval_prompts(pipe, args.prompts, args.steps, args.guidance)
    if "sada" in parts:
        results["sada"] = eval_sada(pipe, args.prompts, args.steps, args.guidance, config)
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
