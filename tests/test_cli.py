"""End-to-end tests of ``sada-audio generate`` on a tiny random MusicLDM pipeline saved to disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner, Result

import sada_audio
from sada_audio import audio as audio_module
from sada_audio import generation as generation_module
from sada_audio.cli import common as cli_common
from sada_audio.cli import main as cli
from sada_audio.levels import resolve_sada_config
from sada_audio.pipelines import SCHEDULER_CHOICES, load_pipeline, set_scheduler
from tests.support.tiny_pipelines import SAMPLE_RATE

PROMPT = "slow piano arpeggio in A minor"
STEPS = "12"


def _generate(tiny_musicldm_dir: Path, output: Path, *args: str) -> Result:
    """Run ``generate`` in-process: 12 steps of 1.28 s clips, unless ``args`` say otherwise (last wins)."""
    argv = [
        "generate",
        PROMPT,
        "--model",
        str(tiny_musicldm_dir),
        "-o",
        str(output),
        "--steps",
        STEPS,
        "--duration",
        "1.28",
    ]
    argv += args
    return CliRunner().invoke(cli.main, argv)


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _sidecar(audio_path: Path) -> dict:
    return json.loads(audio_path.with_suffix(".json").read_text(encoding="utf-8"))


def _read(path: Path) -> np.ndarray:
    data, rate = sf.read(path)
    assert rate == SAMPLE_RATE
    assert np.isfinite(data).all()
    return data


def test_generate_writes_audio_and_sidecar(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.wav"
    result = _ok(_generate(tiny_musicldm_dir, out, "--duration", "0.96", "--seed", "3", "--negative-prompt", "noise"))
    assert "clip.wav" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.wav"]
    assert sf.info(out).format == "WAV"
    audio = _read(out)
    assert audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 0.96) < 0.05

    meta = _sidecar(out)
    assert meta["prompt"] == PROMPT
    assert meta["negative_prompt"] == "noise"
    assert meta["seed"] == 3
    assert meta["model"] == str(tiny_musicldm_dir)
    assert meta["pipeline_class"] == "MusicLDMPipeline"
    assert meta["scheduler_class"] == "UniPCMultistepScheduler"  # the default SADA level's sampler
    assert meta["steps"] == 12
    assert meta["guidance_scale"] == 2.0
    assert meta["sample_rate"] == SAMPLE_RATE
    assert meta["duration_s"] == pytest.approx(len(audio) / SAMPLE_RATE)
    assert meta["requested_duration_s"] == 0.96
    assert meta["files"] == ["clip.wav"]
    assert (meta["device"], meta["dtype"]) == ("cpu", "float32")
    assert meta["wall_time_s"] > 0
    assert meta["versions"] == {
        "torch": torch.__version__,
        "diffusers": meta["versions"]["diffusers"],
        "transformers": meta["versions"]["transformers"],
        "sada-audio": sada_audio.__version__,
    }
    assert meta["sada_config"] == resolve_sada_config("musicldm").to_dict()
    stats = meta["sada_stats"]
    assert stats["num_steps"] == 12
    assert 0 < stats["model_calls"] <= 12


@pytest.mark.integration  # end to end through the command line
def test_generate_is_deterministic_and_accelerate_none_has_no_stats(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    first, second, plain = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "plain.wav"
    _ok(_generate(tiny_musicldm_dir, first))
    _ok(_generate(tiny_musicldm_dir, second))
    _ok(_generate(tiny_musicldm_dir, plain, "--accelerate", "none"))
    np.testing.assert_array_equal(_read(first), _read(second))
    assert len(_read(plain)) == len(_read(first))
    meta = _sidecar(plain)
    assert meta["sada_config"] is None
    assert meta["sada_stats"] is None
    assert meta["accelerate"] == "none"
    assert _sidecar(first)["sada_stats"] is not None


@pytest.mark.integration
@pytest.mark.parametrize("scheduler", list(SCHEDULER_CHOICES))
def test_generate_with_each_scheduler(tiny_musicldm_dir: Path, tmp_path: Path, scheduler: str) -> None:
    out = tmp_path / "s.wav"
    _ok(_generate(tiny_musicldm_dir, out, "--scheduler", scheduler))
    expected = load_pipeline(str(tiny_musicldm_dir))
    set_scheduler(expected, scheduler)
    assert _sidecar(out)["scheduler_class"] == type(expected.scheduler).__name__
    _read(out)


@pytest.mark.integration  # end to end through the command line
def test_generate_flac_and_several_waveforms(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "take.flac"
    _ok(_generate(tiny_musicldm_dir, out, "--num-waveforms", "3"))
    names = ["take.flac", "take_1.flac", "take_2.flac"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "take.json"])
    assert _sidecar(out)["files"] == names
    assert _sidecar(out)["num_waveforms"] == 3
    for name in names:
        assert sf.info(tmp_path / name).format == "FLAC"
        _read(tmp_path / name)


def test_overwrite_replaces_existing_files(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.wav"
    out.write_bytes(b"old audio")
    out.with_suffix(".json").write_text("{}")
    _ok(_generate(tiny_musicldm_dir, out, "--overwrite"))
    _read(out)
    assert _sidecar(out)["prompt"] == PROMPT


@pytest.mark.integration
def test_installed_script_in_a_subprocess(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sada-audio"
    assert script.exists(), "the console script is not installed: pip install -e ."
    out = tmp_path / "sub.wav"
    argv = [str(script), "generate", PROMPT, "--model", str(tiny_musicldm_dir), "-o", str(out), "--steps", STEPS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "sub.wav" in done.stdout
    # One progress bar (the denoising steps), none from loading.
    assert "Denoising" in done.stderr
    assert "Loading" not in done.stderr
    assert "Traceback" not in done.stderr
    assert len(_read(out)) == int(2.56 * SAMPLE_RATE)  # the tiny model's own default length
    assert _sidecar(out)["sada_stats"]["num_steps"] == 12

    bad = subprocess.run(
        [*argv[:2], "  ", *argv[3:]], capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("Error: ")
    assert bad.stdout == ""


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model must not be loaded for input that can be checked beforehand")


class Bad(NamedTuple):
    """One bad command line: the arguments after the defaults, and a fragment of the message."""

    args: list[str]
    message: str
    before_load: bool = True  # whether the mistake must be caught before the model is loaded
    prompt: str = PROMPT
    model: str | None = None  # None: the tiny model


BAD_INPUTS = {
    "empty prompt": Bad([], "the prompt is empty", prompt=""),
    "blank prompt": Bad([], "the prompt is empty", prompt=" \t "),
    "zero steps": Bad(["--steps", "0"], "--steps"),
    "zero duration": Bad(["--duration", "0"], "--duration"),
    "negative duration": Bad(["--duration", "-1"], "--duration"),
    "negative guidance": Bad(["--guidance", "-0.5"], "--guidance"),
    "zero waveforms": Bad(["--num-waveforms", "0"], "--num-waveforms"),
    "unknown scheduler": Bad(["--scheduler", "heun"], "--scheduler"),
    "unknown accelerate": Bad(["--accelerate", "fast"], "--accelerate"),
    "unknown dtype": Bad(["--dtype", "float64"], "--dtype"),
    "bad device": Bad(["--device", "toaster"], "toaster"),
    "too many steps": Bad(["--steps", "1001"], "1001 steps do not fit UniPCMultistepScheduler, trained with 1000"),
    "too many steps, own sampler": Bad(
        ["--accelerate", "none", "--steps", "1000"], "1000 steps do not fit DDIMScheduler, trained with 1000 timesteps"
    ),
    "too many dpm++ steps": Bad(
        ["--scheduler", "dpm++", "--steps", "1001"], "1001 steps do not fit DPMSolverMultistepScheduler"
    ),
    "seed past 64 bits": Bad(["--seed", "18446744073709551616"], "--seed"),
    "negative seed": Bad(["--seed", "-1"], "--seed"),
    "too long": Bad(["--duration", "1000"], "1000 s is longer than the 120 s limit"),
    # load_pipeline refuses these at once, before reading any weights (offline: no Hub probe).
    "unknown alias": Bad([], "musicldmm", before_load=False, model="musicldmm"),
    "missing path": Bad([], "no/such/model-dir", before_load=False, model="./no/such/model-dir"),
    "not a pipeline dir": Bad([], "model_index.json", before_load=False, model="{tmp}"),
    "not found offline": Bad([], "no-such-model", before_load=False, model="sada-audio-tests/no-such-model"),
    "too short for the model": Bad(["--duration", "0.001"], "audio_length_in_s", before_load=False),
    "missing output dir": Bad(["-o", "{tmp}/missing/out.wav"], "does not exist"),
    "output dir is a file": Bad(["-o", "{tmp}/existing.wav/out.wav"], "does not exist"),
    "unsupported extension": Bad(["-o", "{tmp}/out.mp3"], "unsupported output file extension"),
    "no extension": Bad(["-o", "{tmp}/out"], "unsupported output file extension"),
    "existing output": Bad(["-o", "{tmp}/existing.wav"], "existing.wav' already exists"),
    "existing sidecar": Bad(["-o", "{tmp}/existing.flac"], "existing.json' already exists"),
    "existing extra waveform": Bad(["-o", "{tmp}/take.wav", "--num-waveforms", "3"], "take_2.wav' already exists"),
}
EXISTING = {"existing.wav": b"keep me", "existing.json": b"{}", "take_2.wav": b"keep me too"}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    bad = BAD_INPUTS[case]
    for name, content in EXISTING.items():
        (tmp_path / name).write_bytes(content)
    model = (bad.model or str(tiny_musicldm_dir)).replace("{tmp}", str(tmp_path))
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in bad.args]
    argv = ["generate", bad.prompt, "--model", model, "-o", str(tmp_path / "out.wav"), "--steps", STEPS, *extra]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if bad.before_load:
        monkeypatch.setattr(cli_common, "load_pipeline", _no_load)

    result = CliRunner().invoke(cli.main, argv)

    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert bad.message in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(EXISTING)
    for name, content in EXISTING.items():
        assert (tmp_path / name).read_bytes() == content


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_refused_before_loading(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    result = _generate(tiny_musicldm_dir, tmp_path / "out.wav", "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert "CUDA is not available" in result.stderr


def test_a_request_too_big_for_memory_is_warned_before_loading(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    # more than the machine has in all: refused (issue 27 tests that), unless forced
    monkeypatch.setattr("sada_audio.memory.total_memory_bytes", lambda device: 2**50)
    result = _generate(tiny_musicldm_dir, tmp_path / "out.wav", "--num-waveforms", "100000")
    warning = result.stderr.splitlines()[0]
    assert warning.startswith("Warning: 100000 waveform(s) of 1.28 s in one pipeline call need about 1,750.0 GB")
    assert warning.endswith("expect an out-of-memory error; generate fewer with --num-waveforms.")
    # a request that fits is not warned about
    result = _generate(tiny_musicldm_dir, tmp_path / "out.wav", "--num-waveforms", "2")
    assert "Warning" not in result.stderr


def test_unwritable_output_dir(tiny_musicldm_dir: Path, read_only_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    result = _generate(tiny_musicldm_dir, read_only_dir / "out.wav")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert "is not writable" in result.stderr
    assert list(read_only_dir.iterdir()) == []


def test_help_lists_every_option() -> None:
    result = _ok(CliRunner().invoke(cli.main, ["generate", "--help"]))
    for option in [
        "--output",
        "--model",
        "--steps",
        "--seed",
        "--duration",
        "--guidance",
        "--scheduler",
        "--accelerate",
        "--device",
        "--dtype",
        "--negative-prompt",
        "--num-waveforms",
        "--overwrite",
        "OUT_1.wav",
    ]:
        assert option in result.output


@pytest.mark.integration  # end to end through the command line
def test_a_full_disk_is_one_line_and_leaves_no_audio_without_its_sidecar(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, obj: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(audio_module, "write_json", disk_full)
    result = _generate(tiny_musicldm_dir, tmp_path / "x.wav", "--num-waveforms", "2")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert errors == [
        f"Error: No space left on device writing '{tmp_path / 'x.json'}': free some space or write to another disk"
    ]
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    _ok(_generate(tiny_musicldm_dir, tmp_path / "x.wav"))  # no "already exists" from a half-written run


@pytest.mark.integration  # end to end through the command line
def test_out_of_memory_is_one_line_with_a_hint(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CPU out of memory: tried to allocate 80.00 GiB")

    monkeypatch.setattr(generation_module, "generate_batch", out_of_memory)
    result = _generate(tiny_musicldm_dir, tmp_path / "x.wav", "--num-waveforms", "100000", "--ignore-memory-estimate")
    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if "Error" in line]
    assert line.startswith("Error: out of memory (CPU out of memory: tried to allocate 80.00 GiB); try fewer waveforms")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_is_exit_130(tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(generation_module, "generate_batch", interrupted)
    result = _generate(tiny_musicldm_dir, tmp_path / "x.wav")
    assert result.exit_code == 130 and "Interrupted." in result.stderr and "Aborted" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration  # end to end through the command line
def test_the_sidecar_tells_euler_from_edm(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    configs = {}
    for scheduler in ("euler", "edm"):
        _ok(_generate(tiny_musicldm_dir, tmp_path / f"{scheduler}.wav", "--scheduler", scheduler, "--steps", "4"))
        configs[scheduler] = _sidecar(tmp_path / f"{scheduler}.wav")["scheduler_config"]
    assert configs["euler"]["use_karras_sigmas"] is False and configs["edm"]["use_karras_sigmas"] is True
    assert not np.array_equal(_read(tmp_path / "euler.wav"), _read(tmp_path / "edm.wav"))


@pytest.mark.integration
def test_help_version_and_argument_errors_do_not_import_torch() -> None:
    # the CLI answers these at once: torch, diffusers and transformers load only when a command runs
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from sada_audio.cli.main import main\n"
        "calls = (['--version'], ['--help'], ['nosuch'], ['generate', '--help'], ['generate', 'x', '-o', 'a.wav',"
        " '--steps', '0'], ['generate', 'x', '-o', 'a.wav', '--seed', '-1'], ['render', 'm.jsonl', '-o', 'o',"
        " '--steps', '0'], ['evaluate', 'a', 'b', '--duration', '-1'], ['benchmark', '--help'],"
        " ['benchmark', '-o', 'b', '--seeds', 'x'], ['benchmark', '-o', 'b', '--sada-variant', 'seed=1.5'])\n"
        "codes = [CliRunner().invoke(main, args).exit_code for args in calls]\n"
        "heavy = sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules)\n"
        "print(codes, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[0, 0, 2, 0, 2, 2, 2, 2, 0, 2, 2] []"
