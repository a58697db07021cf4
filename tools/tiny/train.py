"""Train the tiny MusicLDM from scratch on procedurally generated music.

    python -m tools.tiny.train data      --clips 6000        # synthesise the training set once
    python -m tools.tiny.train vae       --steps 3000        # log-mel autoencoder
    python -m tools.tiny.train vae-decoder --steps 1000      # decoder robust to noisy latents
    python -m tools.tiny.train clap      --steps 2500        # text + audio towers, contrastive
    python -m tools.tiny.train clap-text --steps 1200        # text tower again, + attribute probes
    python -m tools.tiny.train vocoder   --steps 3000        # HiFi-GAN: log-mel L1 + multi-resolution STFT
    python -m tools.tiny.train unet      --steps 5000        # needs the VAE and CLAP (text) checkpoints
    python -m tools.tiny.train assemble                      # MusicLDMPipeline -> sada_audio/assets/

Everything lives in ``--workdir`` (default ``checkpoints/tiny-musicldm``, git-ignored). Each trainer saves a
checkpoint every ``--save-every`` steps and resumes from it when started again; the batch and noise of step
``k`` are drawn from generators seeded with ``(seed, k)``, so a resumed run takes the same steps as an
uninterrupted one. The ``vae``, ``clap`` and ``vocoder`` trainers are independent and can run in parallel.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sada_audio._compat import clap_embedding
from sada_audio.audio_ldm_parts import HOP_LENGTH, SAMPLE_RATE
from sada_audio.errors import SADAError
from sada_audio.tiny import TINY_MUSICLDM_PATH
from sada_audio.tiny.features import log_mel
from tools.tiny.components import (
    CLAP_DIM,
    build_clap,
    build_feature_extractor,
    build_scheduler,
    build_tokenizer,
    build_unet,
    build_vae,
    build_vocoder,
)
from tools.tiny.music import (
    BASSES,
    CLIP_SECONDS,
    GROOVES,
    LEADS,
    PATTERNS,
    caption,
    make_clip,
    sample_spec,
    tempo_word,
)

logger = logging.getLogger("tools.tiny.train")

DEFAULT_WORKDIR = Path("checkpoints/tiny-musicldm")
_CLIP_SAMPLES = int(round(CLIP_SECONDS * SAMPLE_RATE))
# share of UNet training examples conditioned on the empty caption, for classifier-free guidance
_UNCOND_PROB = 0.1
_MIN_SNR_GAMMA = 5.0


class TrainingError(SADAError):
    """A training step cannot run: missing data or checkpoints of a component it depends on."""


# ------------------------------------------------------------------------------------------------ data


def _synth(seed: int) -> tuple[np.ndarray, str]:
    wave, text, _ = make_clip(seed)
    return (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16), text


@dataclass
class Dataset:
    """The cached training set: int16 waveforms, log-mel spectrograms, CLAP features, captions."""

    waves: np.ndarray  # (N, samples) int16
    mels: np.ndarray  # (N, frames, 64) float16
    clap_features: np.ndarray  # (N, 1, 251, 64) float16
    captions: list[str]

    @classmethod
    def load(cls, workdir: Path) -> Dataset:
        data = workdir / "data"
        if not (data / "captions.json").is_file():
            raise TrainingError(f"no training set in {data}; run `python -m tools.tiny.train data` first")
        return cls(
            waves=np.load(data / "waves.npy", mmap_mode="r"),
            mels=np.load(data / "mels.npy", mmap_mode="r"),
            clap_features=np.load(data / "clap_features.npy", mmap_mode="r"),
            captions=json.loads((data / "captions.json").read_text()),
        )


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def build_dataset(workdir: Path, clips: int, workers: int, first_seed: int = 0) -> None:
    """Synthesise clips ``first_seed .. first_seed + clips - 1`` and cache them with their features."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    seeds = range(first_seed, first_seed + clips)
    start = time.time()
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_synth, seeds, chunksize=16)
    else:
        results = [_synth(s) for s in seeds]
    waves = np.stack([w for w, _ in results])
    captions = [c for _, c in results]
    logger.info("synthesised %d clips in %.0f s", clips, time.time() - start)
    mels, feats = [], []
    extractor = build_feature_extractor()
    for i in range(0, clips, 64):
        chunk = waves[i : i + 64].astype(np.float32) / 32767
        mels.append(log_mel(torch.from_numpy(chunk)).numpy().astype(np.float16))
        inputs = extractor(list(chunk), sampling_rate=SAMPLE_RATE, return_tensors="np")
        feats.append(inputs["input_features"].astype(np.float16))
    _save_npy(data / "waves.npy", waves)
    _save_npy(data / "mels.npy", np.concatenate(mels))
    _save_npy(data / "clap_features.npy", np.concatenate(feats))
    build_tokenizer(captions).save_pretrained(str(workdir / "tokenizer"))
    # captions last: their presence marks a complete cache
    tmp = data / "captions.json.tmp"
    tmp.write_text(json.dumps(captions))
    os.replace(tmp, data / "captions.json")
    logger.info("dataset of %d clips ready in %.0f s", clips, time.time() - start)


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_path(workdir: Path, name: str) -> Path:
    return workdir / f"{name}.pt"


def _save_checkpoint(workdir: Path, name: str, state: dict[str, Any]) -> None:
    path = _checkpoint_path(workdir, name)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(workdir: Path, name: str) -> dict[str, Any]:
    path = _checkpoint_path(workdir, name)
    if not path.is_file():
        raise TrainingError(f"no {name} checkpoint in {workdir}; run `python -m tools.tiny.train {name}` first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _step_rng(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class TrainConfig:
    workdir: Path
    steps: int
    batch: int
    lr: float
    seed: int
    save_every: int
    device: torch.device
    max_minutes: float | None = None
    stop_at: int | None = None


def _train_loop(
    name: str,
    cfg: TrainConfig,
    model: torch.nn.Module,
    loss_fn: Callable[[np.random.Generator, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    extra_state: Callable[[], dict[str, Any]] = dict,
    ema: torch.nn.Module | None = None,
    ema_decay: float = 0.999,
) -> None:
    """Resumable AdamW loop with linear warm-up and gradient clipping; checkpoints to ``workdir/name.pt``."""
    model.to(cfg.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    warmup = min(200, max(1, cfg.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup))
    step = 0
    path = _checkpoint_path(cfg.workdir, name)
    if path.is_file():
        state = torch.load(path, map_location=cfg.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step = state["step"]
        logger.info("%s: resuming at step %d", name, step)
    elapsed = 0.0 if step == 0 else state.get("seconds", 0.0)

    def save() -> None:
        state = {
            "step": step,
            "seconds": elapsed,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_schedule": sched.state_dict(),
            **extra_state(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        _save_checkpoint(cfg.workdir, name, state)

    running: dict[str, float] = {}
    tick = time.time()
    # --stop-at ends a run early without changing its schedule, e.g. to redo a run --max-minutes stopped
    last = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)
    while step < last:
        np_rng, torch_rng = _step_rng(cfg.seed, step)
        loss, parts = loss_fn(np_rng, torch_rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        step += 1
        for key, value in parts.items():
            running[key] = running.get(key, 0.0) + value
        if step % 50 == 0 or step == last:
            now = time.time()
            elapsed += now - tick
            tick = now
            count = 50 if step % 50 == 0 else step % 50
            logger.info(
                "%s step %d/%d (%.0f s) %s",
                name,
                step,
                cfg.steps,
                elapsed,
                " ".join(f"{k}={v / count:.4f}" for k, v in running.items()),
            )
            running = {}
        out_of_time = cfg.max_minutes is not None and elapsed + time.time() - tick > 60 * cfg.max_minutes
        if step % cfg.save_every == 0 or step == last or out_of_time:
            save()
        if out_of_time:
            logger.info("%s: stopping at step %d, the --max-minutes limit", name, step)
            break
    logger.info("%s done: %d steps, %.0f s", name, step, elapsed)


# ------------------------------------------------------------------------------------------ components


def _batch(array: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    # sorted indices read a memory-mapped array far faster than random ones
    order = np.argsort(idx)
    return torch.from_numpy(np.asarray(array[idx[order]], dtype=np.float32)).to(device)


@torch.no_grad()
def latent_scale(vae: torch.nn.Module, mels: np.ndarray, count: int = 64) -> float:
    """1 / std of the VAE posterior means over the first ``count`` full training clips."""
    vae.eval()
    device = next(vae.parameters()).device
    count = min(count, len(mels))
    latents = [
        vae.encode(_batch(mels, np.arange(i, min(count, i + 16)), device)[:, None]).latent_dist.mode()
        for i in range(0, count, 16)
    ]
    vae.train()
    return float(1.0 / torch.cat(latents).std())


def train_vae(cfg: TrainConfig, crop: int = 128, kl_weight: float = 1e-6) -> None:
    data = Dataset.load(cfg.workdir)
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    frames = data.mels.shape[1]

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(len(data.mels), size=cfg.batch)
        start = int(rng.integers(0, frames - crop + 1))
        x = _batch(data.mels[:, start : start + crop], idx, cfg.device)[:, None]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(cfg.device)
        recon = vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    _train_loop("vae", cfg, vae, loss_fn, extra_state=lambda: {"scaling_factor": latent_scale(vae, data.mels)})


def train_vae_decoder(cfg: TrainConfig, crop: int = 128, max_noise: float = 0.3) -> None:
    """Fine-tune the VAE decoder to decode noisy latents into the clean log-mel (the encoder stays frozen).

    With its tiny KL weight the VAE's posterior is very sharp, so the decoder had only seen exact latents and
    turned the small errors of generated latents into a loud broadband noise bed. Gaussian noise of up to
    ``max_noise`` times the latent standard deviation teaches it to ignore such errors; the encoder, hence
    the UNet's training latents, do not change.
    """
    data = Dataset.load(cfg.workdir)
    vae, scale = _load_vae(cfg.workdir, stage="vae")
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    frames = data.mels.shape[1]

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(len(data.mels), size=cfg.batch)
        start = int(rng.integers(0, frames - crop + 1))
        x = _batch(data.mels[:, start : start + crop], idx, cfg.device)[:, None]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        sigma = torch.from_numpy(rng.uniform(0, max_noise, size=(cfg.batch, 1, 1, 1))).float().to(cfg.device) / scale
        z = z + sigma * torch.randn(z.shape, generator=gen).to(cfg.device)
        l1 = (vae.decode(z).sample - x).abs().mean()
        return l1, {"l1": l1.item()}

    _train_loop("vae_decoder", cfg, vae, loss_fn, extra_state=lambda: {"scaling_factor": scale})


def _tokenize(tokenizer: Any, captions: list[str]) -> dict[str, torch.Tensor]:
    return tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")


def train_clap(cfg: TrainConfig) -> None:
    from transformers import RobertaTokenizer

    data = Dataset.load(cfg.workdir)
    tokenizer = RobertaTokenizer.from_pretrained(str(cfg.workdir / "tokenizer"))
    tokens = _tokenize(tokenizer, data.captions)
    torch.manual_seed(cfg.seed)
    clap = build_clap(len(tokenizer))

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = np.sort(rng.choice(len(data.captions), size=cfg.batch, replace=False))
        out = clap(
            input_ids=tokens["input_ids"][idx].to(cfg.device),
            attention_mask=tokens["attention_mask"][idx].to(cfg.device),
            input_features=_batch(data.clap_features, idx, cfg.device),
            is_longer=torch.zeros(len(idx), 1, dtype=torch.bool, device=cfg.device),
            return_loss=True,
        )
        # retrieval accuracy within the batch, audio -> text
        acc = (out.logits_per_audio.argmax(-1) == torch.arange(len(idx), device=cfg.device)).float().mean()
        return out.loss, {"loss": out.loss.item(), "acc": acc.item()}

    _train_loop("clap", cfg, clap, loss_fn)


def _attribute_labels(captions: list[str]) -> dict[str, torch.Tensor]:
    """Class labels of every musical attribute a caption states, from the clip parameters (seeds 0..N-1)."""
    specs = [sample_spec(seed) for seed in range(len(captions))]
    if any(caption(spec) != text for spec, text in zip(specs, captions, strict=True)):
        raise TrainingError("the cached captions do not match seeds 0..N-1; rebuild the data with `train data`")
    tonal = [spec.lead is not None or spec.bass is not None for spec in specs]
    values: dict[str, list[int]] = {
        "key": [2 * s.root + (s.mode == "minor") if t else 24 for s, t in zip(specs, tonal, strict=True)],
        "lead": [[*LEADS, None].index(s.lead) for s in specs],
        "groove": [[*GROOVES, None].index(s.groove) for s in specs],
        "bass": [[*BASSES, None].index(s.bass) for s in specs],
        "tempo": [("slow", "", "fast").index(tempo_word(s.bpm)) for s in specs],
        "loud": [int(s.loud) for s in specs],
        "pattern": [PATTERNS.index(s.pattern) for s in specs],
    }
    return {name: torch.tensor(v) for name, v in values.items()}


class _ClapWithProbes(torch.nn.Module):
    """The CLAP model plus linear probes that read caption attributes off the projected text embedding."""

    def __init__(self, clap: torch.nn.Module, classes: dict[str, int]) -> None:
        super().__init__()
        self.clap = clap
        self.probes = torch.nn.ModuleDict({name: torch.nn.Linear(CLAP_DIM, n) for name, n in classes.items()})


def train_clap_text(cfg: TrainConfig, probe_weight: float = 1.0) -> None:
    """Sharpen the text tower: contrastive against the frozen audio tower's embeddings, plus attribute probes.

    Contrastive training alone leaves attributes the small audio tower hears poorly (the key above all)
    nearly invisible in the text embedding (captions differing only in key had cosine 0.99), so the UNet,
    conditioned on that embedding, could not follow them. Linear probes on the embedding for key, lead,
    groove, bass, tempo word, dynamics and pattern make every stated attribute linearly readable.
    """
    data = Dataset.load(cfg.workdir)
    clap, tokenizer = _load_clap(cfg.workdir, stage="clap")
    tokens = _tokenize(tokenizer, data.captions)
    labels = _attribute_labels(data.captions)
    with torch.no_grad():
        audio = torch.cat(
            [
                clap_embedding(
                    clap.get_audio_features(
                        input_features=_batch(data.clap_features, np.arange(i, min(len(data.captions), i + 64)), "cpu"),
                        is_longer=torch.zeros(min(64, len(data.captions) - i), 1, dtype=torch.bool),
                    )
                )
                for i in range(0, len(data.captions), 64)
            ]
        ).to(cfg.device)
    clap.requires_grad_(False)
    clap.text_model.requires_grad_(True)
    clap.text_projection.requires_grad_(True)
    torch.manual_seed(cfg.seed)
    model = _ClapWithProbes(clap, {name: int(v.max()) + 1 for name, v in labels.items()})

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = np.sort(rng.choice(len(data.captions), size=cfg.batch, replace=False))
        text = clap_embedding(
            clap.get_text_features(
                input_ids=tokens["input_ids"][idx].to(cfg.device),
                attention_mask=tokens["attention_mask"][idx].to(cfg.device),
            )
        )
        logits = clap.logit_scale_t.exp().detach() * text @ audio[idx].T
        target = torch.arange(len(idx), device=cfg.device)
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        # the embedding is unit length: scale it so that the probes' logits can become confident
        probe_losses = {n: F.cross_entropy(p(8 * text), labels[n][idx].to(cfg.device)) for n, p in model.probes.items()}
        loss = contrastive + probe_weight * sum(probe_losses.values())
        return loss, {"contrastive": contrastive.item(), **{n: v.item() for n, v in probe_losses.items()}}

    _train_loop("clap_text", cfg, model, loss_fn)


def train_vocoder(cfg: TrainConfig, segment_frames: int = 64) -> None:
    import auraloss

    data = Dataset.load(cfg.workdir)
    torch.manual_seed(cfg.seed)
    vocoder = build_vocoder()
    stft_loss = auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=[512, 1024, 2048], hop_sizes=[50, 120, 240], win_lengths=[240, 600, 1200]
    ).to(cfg.device)
    frames = data.mels.shape[1]

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(len(data.mels), size=cfg.batch)
        starts = rng.integers(0, frames - segment_frames + 1, size=cfg.batch)
        pairs = list(zip(idx, starts, strict=True))
        mel = torch.stack([torch.from_numpy(data.mels[i, s : s + segment_frames].astype(np.float32)) for i, s in pairs])
        mel = mel.to(cfg.device)
        wave = torch.stack(
            [
                torch.from_numpy(data.waves[i, s * HOP_LENGTH : (s + segment_frames) * HOP_LENGTH] / 32767.0)
                for i, s in pairs
            ]
        ).to(cfg.device, torch.float32)
        pred = vocoder(mel)
        mel_l1 = (log_mel(pred) - mel).abs().mean()
        mr = stft_loss(pred[:, None], wave[:, None])
        return mel_l1 + mr, {"mel_l1": mel_l1.item(), "mrstft": mr.item()}

    _train_loop("vocoder", cfg, vocoder, loss_fn)


def _load_vae(workdir: Path, stage: str | None = None) -> tuple[torch.nn.Module, float]:
    """The VAE of ``stage``; by default the noise-robust decoder ("vae_decoder") once it exists."""
    if stage is None:
        stage = "vae_decoder" if _checkpoint_path(workdir, "vae_decoder").is_file() else "vae"
    state = load_checkpoint(workdir, stage)
    vae = build_vae()
    vae.load_state_dict(state["model"])
    return vae.eval(), float(state["scaling_factor"])


def _clap_stage(workdir: Path) -> str:
    """The latest CLAP training stage with a checkpoint: "clap_text" once it exists, else "clap"."""
    return "clap_text" if _checkpoint_path(workdir, "clap_text").is_file() else "clap"


def _load_clap(workdir: Path, stage: str | None = None) -> tuple[torch.nn.Module, Any]:
    from transformers import RobertaTokenizer

    tokenizer = RobertaTokenizer.from_pretrained(str(workdir / "tokenizer"))
    clap = build_clap(len(tokenizer))
    stage = stage or _clap_stage(workdir)
    state = load_checkpoint(workdir, stage)["model"]
    if stage == "clap_text":  # drop the probes, keep the CLAP weights
        state = {k.removeprefix("clap."): v for k, v in state.items() if k.startswith("clap.")}
    clap.load_state_dict(state)
    return clap.eval(), tokenizer


@torch.no_grad()
def text_embeddings(clap: Any, tokenizer: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    """Projected, normalised CLAP text embeddings, as MusicLDMPipeline computes them for its prompts."""
    clap.to(device)
    out = []
    for i in range(0, len(captions), 256):
        tokens = _tokenize(tokenizer, captions[i : i + 256])
        features = clap.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        out.append(clap_embedding(features))
    return torch.cat(out)


@torch.no_grad()
def _unet_inputs(cfg: TrainConfig, data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled VAE latents of every clip, caption embeddings and the empty caption's embedding (cached)."""
    cache = cfg.workdir / "unet_inputs.pt"
    vae_state = load_checkpoint(cfg.workdir, "vae")
    clap_stage = _clap_stage(cfg.workdir)
    stamp = [vae_state["step"], clap_stage, load_checkpoint(cfg.workdir, clap_stage)["step"], len(data.captions)]
    if cache.is_file():
        cached = torch.load(cache, weights_only=True)
        if cached["stamp"] == stamp:
            return cached["latents"], cached["text"], cached["empty"]
    vae, scale = _load_vae(cfg.workdir, stage="vae")
    vae.to(cfg.device)
    latents = torch.cat(
        [
            vae.encode(_batch(data.mels, np.arange(i, min(len(data.mels), i + 32)), cfg.device)[:, None])
            .latent_dist.mode()
            .mul(scale)
            .cpu()
            for i in range(0, len(data.mels), 32)
        ]
    )
    clap, tokenizer = _load_clap(cfg.workdir)
    text = text_embeddings(clap, tokenizer, data.captions, cfg.device).cpu()
    empty = text_embeddings(clap, tokenizer, [""], cfg.device).cpu()
    torch.save({"stamp": stamp, "latents": latents, "text": text, "empty": empty}, cache)
    return latents, text, empty


def train_unet(cfg: TrainConfig, crop: int = 64) -> None:
    data = Dataset.load(cfg.workdir)
    latents, text, empty = _unet_inputs(cfg, data)
    latents, text, empty = latents.to(cfg.device), text.to(cfg.device), empty.to(cfg.device)
    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod.to(cfg.device)
    torch.manual_seed(cfg.seed)
    unet = build_unet()
    ema = build_unet().to(cfg.device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    length = latents.shape[2]

    def loss_fn(rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.from_numpy(rng.integers(len(latents), size=cfg.batch)).to(cfg.device)
        start = int(rng.integers(0, length - crop + 1))
        x0 = latents[idx, :, start : start + crop]
        cond = text[idx].clone()
        drop = torch.from_numpy(rng.random(cfg.batch) < _UNCOND_PROB).to(cfg.device)
        cond[drop] = empty[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=gen).to(cfg.device)
        noise = torch.randn(x0.shape, generator=gen).to(cfg.device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, encoder_hidden_states=None, class_labels=cond).sample
        mse = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        # Min-SNR-5 weighting (Hang et al., 2023): the nearly clean steps stop dominating, training converges faster
        snr = a.flatten() / (1 - a.flatten())
        loss = (mse * snr.clamp(max=_MIN_SNR_GAMMA) / snr).mean()
        return loss, {"loss": loss.item(), "mse": mse.mean().item()}

    _train_loop("unet", cfg, unet, loss_fn, ema=ema)


# --------------------------------------------------------------------------------------------- assembly


def assemble(
    workdir: Path, destination: Path, vocoder_kind: str = "griffin-lim", dtype: torch.dtype = torch.float16
) -> Path:
    """Build the ``MusicLDMPipeline`` from the trained components and save it with safetensors.

    ``vocoder_kind`` is ``"hifigan"`` (the trained SpeechT5HifiGan) or ``"griffin-lim"``
    (:class:`~sada_audio.tiny.vocoder.GriffinLimVocoder`, no weights).
    """
    from diffusers import MusicLDMPipeline

    from sada_audio.tiny.vocoder import GriffinLimVocoder

    vae, scale = _load_vae(workdir)
    vae.register_to_config(scaling_factor=scale)
    clap, tokenizer = _load_clap(workdir)
    unet = build_unet()
    unet.load_state_dict(load_checkpoint(workdir, "unet")["ema"])
    if vocoder_kind == "hifigan":
        vocoder = build_vocoder()
        vocoder.load_state_dict(load_checkpoint(workdir, "vocoder")["model"])
    else:
        vocoder = GriffinLimVocoder()
    pipe = MusicLDMPipeline(
        vae=vae,
        text_encoder=clap,
        tokenizer=tokenizer,
        feature_extractor=build_feature_extractor(),
        unet=unet.eval(),
        scheduler=build_scheduler(),
        vocoder=vocoder.eval(),
    )
    # stored in half precision to halve the package size; loaded as float32 (waveform change ~1e-4 RMS)
    pipe.to(dtype)
    destination.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(destination), safe_serialization=True)
    size = sum(f.stat().st_size for f in destination.rglob("*.safetensors"))
    logger.info("saved the pipeline to %s (%.1f MB of safetensors)", destination, size / 1e6)
    return destination


# ------------------------------------------------------------------------------------------------- CLI

_DEFAULTS: dict[str, dict[str, float]] = {
    "vae": {"steps": 3000, "batch": 16, "lr": 1e-3},
    "clap": {"steps": 2500, "batch": 64, "lr": 5e-4},
    "clap-text": {"steps": 1200, "batch": 128, "lr": 2e-3},
    "vae-decoder": {"steps": 1000, "batch": 16, "lr": 3e-4},
    "vocoder": {"steps": 3000, "batch": 16, "lr": 1e-3},
    "unet": {"steps": 5000, "batch": 16, "lr": 5e-4},
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny.train", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="data and checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--device", default="cpu")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="synthesise and cache the training set")
    data.add_argument("--clips", type=int, default=6000)
    data.add_argument("--workers", type=int, default=2)
    for name, defaults in _DEFAULTS.items():
        p = sub.add_parser(name, help=f"train the {name}")
        p.add_argument("--steps", type=int, default=int(defaults["steps"]))
        p.add_argument("--batch", type=int, default=int(defaults["batch"]))
        p.add_argument("--lr", type=float, default=defaults["lr"])
        p.add_argument("--save-every", type=int, default=250)
        p.add_argument("--max-minutes", type=float, help="stop (and save) after this much training time")
        p.add_argument("--stop-at", type=int, help="stop (and save) at this step; the schedule still spans --steps")
        if name in ("vae", "vae-decoder", "unet"):
            p.add_argument("--crop", type=int, default=64 if name == "unet" else 128, help="training crop (frames)")
    out = sub.add_parser("assemble", help="save the trained MusicLDMPipeline")
    out.add_argument("--output", type=Path, default=TINY_MUSICLDM_PATH)
    out.add_argument("--fp32", action="store_true", help="store float32 weights (default: float16)")
    out.add_argument("--vocoder", choices=("griffin-lim", "hifigan"), default="griffin-lim")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.command == "data":
        build_dataset(args.workdir, args.clips, args.workers)
        return
    if args.command == "assemble":
        assemble(args.workdir, args.output, args.vocoder, torch.float32 if args.fp32 else torch.float16)
        return
    cfg = TrainConfig(
        workdir=args.workdir,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        save_every=args.save_every,
        device=torch.device(args.device),
        max_minutes=args.max_minutes,
        stop_at=args.stop_at,
    )
    trainers: dict[str, Callable[[], None]] = {
        "vae": lambda: train_vae(cfg, crop=args.crop),
        "vae-decoder": lambda: train_vae_decoder(cfg, crop=args.crop),
        "clap": lambda: train_clap(cfg),
        "clap-text": lambda: train_clap_text(cfg),
        "vocoder": lambda: train_vocoder(cfg),
        "unet": lambda: train_unet(cfg, crop=args.crop),
    }
    trainers[args.command]()


if __name__ == "__main__":
    main()
