"""Procedural music: short clips of synthesised instruments with captions built from their parameters.

Every clip is a deterministic function of one integer seed: :func:`sample_spec` draws the musical
parameters (key and mode, tempo, chord progression, lead instrument and pattern, bass, drum groove,
dynamics), :func:`render` synthesises them in numpy and :func:`caption` describes them in words, e.g.
"fast loud techno saw lead melody with a saw bass and a four-on-the-floor beat at 132 bpm in E minor".

Training clips use seeds below :data:`HELDOUT_SEED_START`; held-out clips (for evaluation) use seeds from
there on, so the two sets never share a clip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from sada_audio.audio_ldm_parts import SAMPLE_RATE

__all__ = [
    "CLIP_SECONDS",
    "HELDOUT_SEED_START",
    "NOTE_NAMES",
    "MODES",
    "LEADS",
    "PATTERNS",
    "BASSES",
    "GROOVES",
    "ClipSpec",
    "sample_spec",
    "render",
    "caption",
    "make_clip",
    "tempo_word",
]

#: 512 mel frames at hop 160, i.e. 128 latent frames after the x4 VAE.
CLIP_SECONDS = 5.12
HELDOUT_SEED_START = 1_000_000

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES: dict[str, tuple[int, ...]] = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord roots as scale degrees (0 = tonic); every progression starts on the tonic, which anchors the key.
PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 4), (0, 5, 3, 4), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 4)),
}
#: lead instrument -> words used in captions
LEADS: dict[str, str] = {
    "piano": "piano",
    "pluck": "plucked guitar",
    "saw": "saw lead",
    "square": "square lead",
    "pad": "synth pad",
}
PATTERNS = ("chords", "arpeggio", "melody")
BASSES: dict[str, str] = {"saw": "saw bass", "square": "square bass", "sine": "deep sine bass"}
#: groove -> (kick steps, snare steps, hat steps) on a 16-step bar, and its caption words
GROOVES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]] = {
    "four": ((0, 4, 8, 12), (4, 12), (2, 6, 10, 14), "a four-on-the-floor beat"),
    "rock": ((0, 8, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), "a rock drum beat"),
    "break": ((0, 6, 10), (4, 12, 15), (0, 2, 4, 6, 8, 10, 12, 14), "a breakbeat"),
    "half": ((0, 10), (8,), (0, 2, 4, 6, 8, 10, 12, 14), "a half-time drum groove"),
}
_SLOW_BPM, _FAST_BPM = 85, 120


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip (with ``seed`` for the random details of the performance)."""

    seed: int
    root: int  # pitch class of the tonic, 0 = C
    mode: str
    bpm: int
    progression: tuple[int, ...]
    lead: str | None  # key of LEADS, or None for a drums (+ bass) clip
    pattern: str
    bass: str | None
    groove: str | None
    loud: bool
    seconds: float = CLIP_SECONDS

    @property
    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.root]} {self.mode}"


def tempo_word(bpm: int) -> str:
    """The tempo word of captions: "slow", "fast" or "" (mid tempo)."""
    if bpm <= _SLOW_BPM:
        return "slow"
    if bpm >= _FAST_BPM:
        return "fast"
    return ""


def sample_spec(seed: int, **overrides: Any) -> ClipSpec:
    """Draw a clip's parameters from ``seed``; keyword arguments fix chosen fields (e.g. ``lead="piano"``)."""
    rng = np.random.default_rng([seed, 1])
    mode = str(rng.choice(list(MODES)))
    lead = rng.choice([*LEADS, None], p=[0.26, 0.2, 0.16, 0.14, 0.12, 0.12])
    groove_p = 0.25 if lead in ("piano", "pad") else 0.6
    spec = ClipSpec(
        seed=seed,
        root=int(rng.integers(12)),
        mode=mode,
        bpm=int(rng.integers(60, 161)),
        progression=PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))],
        lead=None if lead is None else str(lead),
        pattern=str(rng.choice(PATTERNS)),
        bass=str(rng.choice(list(BASSES))) if rng.random() < 0.6 else None,
        groove=str(rng.choice(list(GROOVES))) if rng.random() < groove_p else None,
        loud=bool(rng.random() < 0.5),
    )
    spec = dataclasses.replace(spec, **overrides)
    if spec.lead is None and spec.groove is None:
        # a clip needs something to play: drums are the point of a lead-less clip
        spec = dataclasses.replace(spec, groove="four")
    return spec


def caption(spec: ClipSpec) -> str:
    """Describe ``spec`` in words; the wording varies with the seed, the facts do not."""
    rng = np.random.default_rng([spec.seed, 2])
    words = [tempo_word(spec.bpm), "loud" if spec.loud else "soft"]
    if spec.groove == "four" and spec.bass == "saw":
        words.append("techno")
    elif spec.lead == "square" or spec.bass == "square" and spec.lead is None:
        words.append("chiptune")
    elif spec.lead == "pad" and spec.groove is None:
        words.append("ambient")
    if spec.lead is None:
        words.append("drum groove")
        extras = [f"with a {BASSES[spec.bass]}"] if spec.bass else []
    else:
        words += [LEADS[spec.lead], spec.pattern]
        parts = []
        if spec.bass:
            parts.append(f"a {BASSES[spec.bass]}")
        if spec.groove:
            parts.append(GROOVES[spec.groove][3])
        extras = [f"with {' and '.join(parts)}"] if parts else []
    if rng.random() < 0.8:
        extras.append(f"at {spec.bpm} bpm")
    if spec.lead is not None or spec.bass is not None:  # drums alone have no key
        extras.append(f"in {spec.key_name}")
    return " ".join(w for w in [*words, *extras] if w)


def make_clip(seed: int, **overrides: Any) -> tuple[np.ndarray, str, ClipSpec]:
    """The waveform (float32, mono, :data:`SAMPLE_RATE`), caption and parameters of clip ``seed``."""
    spec = sample_spec(seed, **overrides)
    return render(spec), caption(spec), spec


# --------------------------------------------------------------------------------------------- synthesis


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _envelope(n: int, attack: float, decay: float, release_at: int) -> np.ndarray:
    """Exponential decay after a linear attack, faded out over 20 ms from ``release_at`` samples."""
    t = np.arange(n) / SAMPLE_RATE
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)
    fade = int(0.02 * SAMPLE_RATE)
    tail = np.clip((release_at + fade - np.arange(n)) / fade, 0.0, 1.0)
    return env * tail


def _harmonic_tone(f0: float, n: int, amps: np.ndarray, inharmonicity: float = 0.0) -> np.ndarray:
    k = np.arange(1, len(amps) + 1)
    freqs = f0 * k * np.sqrt(1.0 + inharmonicity * k**2)
    keep = freqs < SAMPLE_RATE * 0.45  # band-limited: nothing above Nyquist folds back
    t = np.arange(n) / SAMPLE_RATE
    return (amps[keep, None] * np.sin(2 * np.pi * freqs[keep, None] * t)).sum(axis=0)


def _piano(f0: float, n: int, hold: int, bright: float) -> np.ndarray:
    k = np.arange(1, 11)
    tone = np.zeros(n)
    t = np.arange(n) / SAMPLE_RATE
    freqs = f0 * k * np.sqrt(1.0 + 4e-4 * k**2)
    for partial, freq in zip(k, freqs, strict=True):
        if freq >= SAMPLE_RATE * 0.45:
            break
        # higher partials die faster, as on a struck string
        amp = bright ** (partial - 1) / partial
        tone += amp * np.exp(-t * (1.2 + 0.9 * partial)) * np.sin(2 * np.pi * freq * t)
    return tone * _envelope(n, 0.003, 10.0, hold)


def _pluck(f0: float, n: int, hold: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong: a noise burst circulating in a delay line of one period with an averaging filter."""
    period = max(2, int(round(SAMPLE_RATE / f0)))
    blocks = -(-n // period)
    out = np.empty(blocks * period)
    line = rng.uniform(-1.0, 1.0, period)
    for b in range(blocks):
        out[b * period : (b + 1) * period] = line
        line = 0.996 * 0.5 * (line + np.roll(line, 1))
    return out[:n] * _envelope(n, 0.001, 10.0, hold)


def _saw(f0: float, n: int, harmonics: int, decay: float, hold: int, attack: float = 0.005) -> np.ndarray:
    k = np.arange(1, harmonics + 1)
    return _harmonic_tone(f0, n, 1.0 / k) * _envelope(n, attack, decay, hold)


def _square(f0: float, n: int, harmonics: int, decay: float, hold: int) -> np.ndarray:
    k = np.arange(1, harmonics + 1)
    amps = np.where(k % 2 == 1, 1.0 / k, 0.0)
    return _harmonic_tone(f0, n, amps) * _envelope(n, 0.003, decay, hold)


def _pad(f0: float, n: int, hold: int) -> np.ndarray:
    k = np.arange(1, 7)
    tone = sum(_harmonic_tone(f0 * d, n, 1.0 / k**1.5) for d in (0.997, 1.0, 1.003))
    return tone * _envelope(n, 0.25, 8.0, hold)


def _kick(n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    freq = 45.0 + 90.0 * np.exp(-t / 0.04)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return np.sin(phase) * np.exp(-t / 0.18)


def _snare(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    noise = np.diff(rng.standard_normal(n + 1)) * 0.5
    return (0.7 * noise * np.exp(-t / 0.09) + 0.5 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.05)) * 0.8


def _hat(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    noise = np.diff(rng.standard_normal(n + 2), n=2) * 0.25  # second difference: mostly high frequencies
    return noise * np.exp(-t / 0.03)


def _add(out: np.ndarray, start: int, sound: np.ndarray, gain: float) -> None:
    if start >= len(out):
        return
    end = min(len(out), start + len(sound))
    out[start:end] += gain * sound[: end - start]


def _chord_tones(spec: ClipSpec, degree: int) -> list[int]:
    """MIDI pitches of the diatonic triad on ``degree``, around middle C."""
    scale = MODES[spec.mode]
    tones = []
    for step in (0, 2, 4):
        d = degree + step
        tones.append(60 + spec.root + scale[d % 7] + 12 * (d // 7))
    # keep the voicing in a compact range so that keys differ by pitch class, not by register
    return [p - 12 if p > 76 else p for p in tones]


def _lead_note(spec: ClipSpec, pitch: int, n: int, hold: int, rng: np.random.Generator) -> np.ndarray:
    f0 = _hz(pitch)
    bright = 0.75 if spec.loud else 0.5
    if spec.lead == "piano":
        return _piano(f0, n, hold, bright)
    if spec.lead == "pluck":
        return _pluck(f0, n, hold, rng)
    if spec.lead == "saw":
        return _saw(f0, n, 24, 1.5, hold)
    if spec.lead == "square":
        return _square(f0, n, 15, 2.0, hold)
    return _pad(f0, n, hold)


def render(spec: ClipSpec) -> np.ndarray:
    """Synthesise ``spec`` as a float32 waveform of ``spec.seconds`` at :data:`SAMPLE_RATE`."""
    rng = np.random.default_rng([spec.seed, 3])
    total = int(round(spec.seconds * SAMPLE_RATE))
    out = np.zeros(total)
    beat = 60.0 / spec.bpm
    sixteenth = int(round(beat / 4 * SAMPLE_RATE))
    # chords change every bar at brisk tempi and every two beats at slow ones, so every clip moves
    chord_len = 16 if spec.bpm >= 100 else 8
    steps = -(-total // sixteenth)
    tail = int(1.0 * SAMPLE_RATE)
    degrees = [spec.progression[(s // chord_len) % len(spec.progression)] for s in range(steps)]

    if spec.lead is not None:
        melody_pitch = _chord_tones(spec, 0)[0] + 12
        scale = MODES[spec.mode]
        for s in range(steps):
            tones = _chord_tones(spec, degrees[s])
            start = s * sixteenth
            if spec.pattern == "chords":
                strike = 8 if spec.lead == "pad" else (4 if spec.bpm < 110 else 8)
                if s % strike == 0:
                    for p in tones:
                        _add(out, start, _lead_note(spec, p, strike * sixteenth + tail, strike * sixteenth, rng), 0.3)
            elif spec.pattern == "arpeggio":
                every = 1 if spec.bpm < 100 else 2
                if s % every == 0:
                    cycle = [*tones, tones[0] + 12, tones[2], tones[1]]
                    p = cycle[(s // every) % len(cycle)]
                    _add(out, start, _lead_note(spec, p, 2 * every * sixteenth + tail, 2 * every * sixteenth, rng), 0.5)
            elif s % 2 == 0:  # melody: a random walk on the scale that lands on chord tones on the beat
                if s % 4 == 0:
                    pcs = {t % 12 for t in tones}
                    candidates = [p for p in range(melody_pitch - 4, melody_pitch + 5) if p % 12 in pcs]
                    melody_pitch = int(rng.choice(candidates))
                else:
                    walk = int(rng.choice([-2, -1, 1, 2]))
                    in_scale = [p for p in range(60 + spec.root, 86 + spec.root) if (p - spec.root) % 12 in scale]
                    idx = int(np.argmin([abs(p - melody_pitch) for p in in_scale]))
                    melody_pitch = in_scale[int(np.clip(idx + walk, 0, len(in_scale) - 1))]
                if rng.random() < 0.85:
                    _add(out, start, _lead_note(spec, melody_pitch, 2 * sixteenth + tail, 2 * sixteenth, rng), 0.5)

    if spec.bass is not None:
        every = 2 if spec.groove in ("four", "break") else 4
        for s in range(0, steps, every):
            pitch = 36 + (spec.root + MODES[spec.mode][degrees[s] % 7]) % 12
            hold = every * sixteenth
            f0 = _hz(pitch)
            if spec.bass == "saw":
                note = _saw(f0, hold + tail, 12, 0.6, hold)
            elif spec.bass == "square":
                note = _square(f0, hold + tail, 9, 0.8, hold)
            else:
                note = _saw(f0, hold + tail, 2, 1.0, hold)
            _add(out, s * sixteenth, note, 0.45)

    if spec.groove is not None:
        kicks, snares, hats, _ = GROOVES[spec.groove]
        kick, hit = _kick(int(0.5 * SAMPLE_RATE)), int(0.3 * SAMPLE_RATE)
        for s in range(steps):
            start = s * sixteenth
            if s % 16 in kicks:
                _add(out, start, kick, 0.9)
            if s % 16 in snares:
                _add(out, start, _snare(hit, rng), 0.6)
            if s % 16 in hats:
                _add(out, start, _hat(hit, rng), 0.35 if s % 4 else 0.5)

    # dynamics: soft clips are quieter (their timbre is also darker, see _lead_note)
    peak = float(np.max(np.abs(out))) or 1.0
    level = 0.8 if spec.loud else 0.35
    return (out * (level / peak)).astype(np.float32)
