"""Tests of the atomic audio / JSON writers and the output-path checks."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from sada_audio import audio
from sada_audio.audio import (
    audio_format,
    check_output_path,
    pipeline_sample_rate,
    write_audio,
    write_clip,
    write_json,
)
from sada_audio.errors import SADAError, UnsupportedModelError

SR = 16000


def _tone(seconds: float = 0.25, channels: int = 0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    mono = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    return mono if channels == 0 else np.stack([mono] * channels, axis=1)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("name", ["a.wav", "b.flac", "C.WAV", "d.Flac"])
def test_write_audio_round_trip(tmp_path: Path, name: str) -> None:
    wave = _tone()
    out = write_audio(tmp_path / name, wave, SR)
    data, rate = sf.read(out)
    assert rate == SR
    assert data.shape == wave.shape
    np.testing.assert_allclose(data, wave, atol=1e-4)  # 16-bit quantisation
    assert sf.info(out).format == audio_format(name)
    assert _leftovers(tmp_path) == []


def test_write_audio_stereo(tmp_path: Path) -> None:
    out = write_audio(tmp_path / "s.wav", _tone(channels=2), SR)
    assert sf.info(out).channels == 2


def test_write_audio_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = write_audio(tmp_path / "m.wav", _tone(), SR)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize("name", ["x.mp3", "x", "x.json", "x.wav.tmp"])
def test_write_audio_refuses_unknown_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(SADAError, match="unsupported audio file extension"):
        write_audio(tmp_path / name, _tone(), SR)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_write_audio_refuses_non_finite(tmp_path: Path, bad: float) -> None:
    wave = _tone()
    wave[10] = bad
    with pytest.raises(SADAError, match="NaN or infinite"):
        write_audio(tmp_path / "n.wav", wave, SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_rejects_bad_shapes_and_rates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_audio(tmp_path / "a.wav", np.zeros((1, 2, 3)), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        write_audio(tmp_path / "a.wav", _tone(), 0)
    with pytest.raises(SADAError, match="empty"):
        write_audio(tmp_path / "a.wav", np.zeros(0), SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_clips_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wave = 3.0 * _tone()
    with caplog.at_level(logging.WARNING, logger="sada_audio.audio"):
        out = write_audio(tmp_path / "c.wav", wave, SR)
    assert "clipping" in caplog.text
    data, _ = sf.read(out)
    assert np.abs(data).max() <= 1.0


def test_failed_write_leaves_existing_file_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.wav"
    target.write_bytes(b"original")

    def half_write(file, *args, **kwargs):
        file.write(b"RIFF partial")
        raise OSError("disk full")

    monkeypatch.setattr(audio.sf, "write", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_audio(target, _tone(), SR)
    assert target.read_bytes() == b"original"
    assert _leftovers(tmp_path) == []


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(file, *args, **kwargs):
        file.write(b"RIFF partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(audio.sf, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_audio(tmp_path / "new.flac", _tone(), SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "r.wav"
    target.write_bytes(b"old")
    write_audio(target, _tone(), SR)
    assert sf.info(target).samplerate == SR


def test_write_json_round_trip(tmp_path: Path) -> None:
    obj = {"prompt": "piano \u00e9", "steps": 50, "stats": None, "nested": {"x": [1.5, 2]}}
    out = write_json(tmp_path / "s.json", obj)
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert json.loads(text) == obj
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("obj", [{"x": object()}, {"x": float("nan")}])
def test_write_json_refuses_invalid_json_without_touching_files(tmp_path: Path, obj: dict) -> None:
    target = tmp_path / "s.json"
    target.write_text("{}")
    with pytest.raises((TypeError, ValueError)):
        write_json(target, obj)
    assert target.read_text() == "{}"
    assert _leftovers(tmp_path) == []


def test_check_output_path_accepts_new_file(tmp_path: Path) -> None:
    assert check_output_path(str(tmp_path / "ok.flac"), overwrite=False) == tmp_path / "ok.flac"


def test_check_output_path_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_output_path("clip.wav", overwrite=False) == Path("clip.wav")


def test_check_output_path_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "e.wav"
    target.write_bytes(b"x")
    with pytest.raises(SADAError, match="already exists") as info:
        check_output_path(target, overwrite=False)
    assert "\n" not in str(info.value)
    assert check_output_path(target, overwrite=True) == target


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("missing/out.wav", "does not exist"),
        ("afile/out.wav", "does not exist or is not a directory"),
        ("adir.wav", "is a directory"),
        ("out.mp3", "unsupported output file extension"),
        ("out", "unsupported output file extension"),
    ],
)
def test_check_output_path_errors(tmp_path: Path, relative: str, message: str) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.wav").mkdir()
    with pytest.raises(SADAError, match=message) as info:
        check_output_path(tmp_path / relative, overwrite=True)
    assert "\n" not in str(info.value)


def test_check_output_path_custom_extensions(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "s.json", overwrite=False, extensions={".json"})
    with pytest.raises(SADAError, match=r"use one of \.json"):
        check_output_path(tmp_path / "s.wav", overwrite=False, extensions={".json"})


def test_check_output_path_unwritable_directory(read_only_dir: Path) -> None:
    with pytest.raises(SADAError, match="is not writable"):
        check_output_path(read_only_dir / "out.wav", overwrite=False)


def test_pipeline_sample_rate() -> None:
    pipe = SimpleNamespace(vocoder=SimpleNamespace(config=SimpleNamespace(sampling_rate=16000)))
    assert pipeline_sample_rate(pipe) == 16000
    with pytest.raises(UnsupportedModelError, match="sample rate"):
        pipeline_sample_rate(SimpleNamespace())


def test_signals_wait_for_the_end_of_an_atomic_write(tmp_path: Path) -> None:
    import os
    import signal

    from sada_audio.audio import write_atomically

    def write(file: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
        file.write(b"complete")

    # Ctrl-C raises KeyboardInterrupt, as in a terminal (a background job starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_atomically(tmp_path / "out.bin", write)
    finally:
        signal.signal(signal.SIGINT, previous)
    # the interrupt landed after the write: the file is complete, no temporary file is left
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"complete"


def test_write_clip_writes_audio_then_sidecar_or_nothing(tmp_path: Path) -> None:
    audio = [(tmp_path / "a.wav", _tone()), (tmp_path / "b.flac", _tone())]
    assert write_clip(audio, SR, tmp_path / "a.json", {"files": ["a.wav", "b.flac"]}) == [
        tmp_path / "a.wav",
        tmp_path / "b.flac",
        tmp_path / "a.json",
    ]
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"files": ["a.wav", "b.flac"]}
    with pytest.raises(TypeError):  # a sidecar that cannot be written takes the clip's audio with it
        write_clip([(tmp_path / "c.wav", _tone())], SR, tmp_path / "c.json", {"bad": object()})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json", "a.wav", "b.flac"]
