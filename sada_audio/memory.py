"""How much memory one pipeline call needs, roughly, so that a request that cannot fit is warned about before
the model loads instead of failing with an out-of-memory error after it. Torch is imported only for CUDA."""

from __future__ import annotations

import os

#: Peak memory of one pipeline call per second of generated audio (all waveforms of the call together), in
#: float32 with classifier-free guidance: the slope measured on the real-size MusicLDM pipeline on the CPU
#: (BENCHMARKS.md, "Memory of a batch"). Half precision needs about half.
BYTES_PER_AUDIO_SECOND = 14 * 2**20
#: Clip length assumed when the model's own default is used (MusicLDM's and AudioLDM's 10.24 s).
DEFAULT_DURATION_S = 10.24

_BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2}


def batch_memory_bytes(audio_seconds: float, dtype: str = "float32") -> int:
    """Estimated peak bytes of one pipeline call that generates ``audio_seconds`` of audio in all (every
    waveform of every clip of the call) in ``dtype``."""
    return int(audio_seconds * BYTES_PER_AUDIO_SECOND * _BYTES_PER_ELEMENT.get(dtype, 4) / 4)


def available_memory_bytes(device: str) -> int | None:
    """Bytes free for a new allocation on ``device`` (``cpu``: the kernel's MemAvailable; ``cuda[:N]``: the
    driver's free memory), or None where it cannot be told."""
    return _memory_bytes(device, free=True)


def total_memory_bytes(device: str) -> int | None:
    """Bytes ``device`` has in all (``cpu``: the kernel's MemTotal; ``cuda[:N]``: the card's memory), or None
    where it cannot be told."""
    return _memory_bytes(device, free=False)


def _memory_bytes(device: str, free: bool) -> int | None:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0 if free else 1])
    if device != "cpu":
        return None
    key = "MemAvailable:" if free else "MemTotal:"
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES" if free else "SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def memory_warning(
    waveforms: int, duration_s: float | None, dtype: str, device: str, available: int | None = None
) -> str | None:
    """A sentence saying that ``waveforms`` waveforms of ``duration_s`` seconds in one call will not fit on
    ``device`` (``available`` bytes, measured if None), or None when they should."""
    available = available_memory_bytes(device) if available is None else available
    need = _need_beyond(waveforms, duration_s, dtype, available)
    if need is None:
        return None
    return f"{need}, more than the {_gigabytes(available)} free on {device}: expect an out-of-memory error"


def memory_refusal(
    waveforms: int, duration_s: float | None, dtype: str, device: str, total: int | None = None
) -> str | None:
    """A sentence saying that ``waveforms`` waveforms of ``duration_s`` seconds in one call need more memory than
    ``device`` has in all (``total`` bytes, measured if None), so that the call cannot succeed; else None."""
    total = total_memory_bytes(device) if total is None else total
    need = _need_beyond(waveforms, duration_s, dtype, total)
    return None if need is None else f"{need}, more than the {_gigabytes(total)} {device} has in all"


def _need_beyond(waveforms: int, duration_s: float | None, dtype: str, limit: int | None) -> str | None:
    """What the call needs (``N waveform(s) of D s ... need about X GB of memory in DTYPE``) if it is more than
    ``limit`` bytes; None when it is not, or the limit is unknown."""
    duration = DEFAULT_DURATION_S if duration_s is None else duration_s
    needed = batch_memory_bytes(waveforms * duration, dtype)
    if limit is None or needed <= limit:
        return None
    return (
        f"{waveforms} waveform(s) of {duration:g} s in one pipeline call need about {_gigabytes(needed)} of memory "
        f"in {dtype}"
    )


def _gigabytes(size: int) -> str:
    return f"{size / 2**30:,.1f} GB"
