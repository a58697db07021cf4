"""The memory estimate behind the CLI's warning before a request that cannot fit."""

from __future__ import annotations

from sada_audio.memory import BYTES_PER_AUDIO_SECOND, available_memory_bytes, batch_memory_bytes, memory_warning

GB = 2**30


def test_estimate_grows_with_the_audio_of_the_call_and_halves_in_half_precision():
    assert batch_memory_bytes(10.0) == 10 * BYTES_PER_AUDIO_SECOND
    assert batch_memory_bytes(20.0) == 2 * batch_memory_bytes(10.0)
    assert batch_memory_bytes(10.0, "float16") == batch_memory_bytes(10.0, "bfloat16") == batch_memory_bytes(5.0)


def test_warning_only_when_the_call_does_not_fit():
    assert memory_warning(4, 10.0, "float32", "cpu", available=1 * GB) is None
    message = memory_warning(100, 10.0, "float32", "cpu", available=1 * GB)
    assert message == (
        "100 waveform(s) of 10 s in one pipeline call need about 13.7 GB of memory in float32, more than the "
        "1.0 GB free on cpu: expect an out-of-memory error"
    )
    # the model's own length (None) is taken as 10.24 s
    assert "of 10.24 s" in memory_warning(100, None, "float16", "cuda:0", available=GB)


def test_available_memory_is_known_on_the_cpu_and_unknown_elsewhere():
    assert available_memory_bytes("cpu") > 0
    assert available_memory_bytes("mps") is None
    assert memory_warning(10**9, 10.0, "float32", "mps") is None
