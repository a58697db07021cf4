"""SADA's named speed / fidelity levels: the table, ``--sada-level`` / ``--sada`` on the commands that generate,
and ``sada-audio presets``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sada_audio import SADAConfig
from sada_audio.cli import common as cli_common
from sada_audio.cli import main as cli
from sada_audio.config import PRESETS, parse_overrides
from sada_audio.errors import ConfigError
from sada_audio.evaluation.generate import generate_pair_folders
from sada_audio.generation import SamplingSettings
from sada_audio.levels import (
    DEFAULT_LEVEL,
    DEFAULT_STEPS,
    LEVEL_NAMES,
    LEVELS,
    family_of_model,
    levels_for,
    resolve_sada_config,
    run_sampling,
)

AUDIO_FAMILIES = ("musicldm", "audioldm", "audioldm2")


def test_every_family_has_levels_that_resolve_and_the_published_preset_is_one_of_them() -> None:
    assert set(LEVELS) == set(PRESETS)
    for family in PRESETS:
        levels = levels_for(family)
        assert DEFAULT_LEVEL in levels and set(levels) <= set(LEVEL_NAMES)
        # the audio families' default is measured on their own; the others' is the published preset
        published = "published" if family in AUDIO_FAMILIES else DEFAULT_LEVEL
        assert resolve_sada_config(family, published) == SADAConfig.preset(family)
        assert levels[published].scheduler is None and levels[published].steps == DEFAULT_STEPS
        for name in levels:
            assert isinstance(resolve_sada_config(family, name), SADAConfig)


def test_the_audio_levels_are_the_measured_points() -> None:
    # the speed levels: shallow steps on every other step of the second half, no skipped step, on UniPC runs of
    # 20, 25 and 30 steps (BENCHMARKS.md, '2026-12-08')
    late_shallow = SADAConfig.preset(
        "musicldm", stepwise=False, lagrange_step=None, shallow="accelerated", shallow_max_age=1, acc_range=(25, 49)
    )
    for family in AUDIO_FAMILIES:
        levels = levels_for(family)
        assert list(levels) == list(LEVEL_NAMES)
        speed_levels = [levels[name] for name in ("fast", "default", "faithful")]
        assert [(level.scheduler, level.steps) for level in speed_levels] == [
            ("unipc", 20),
            ("unipc", 25),
            ("unipc", 30),
        ]
        for level in speed_levels:
            assert resolve_sada_config(family, level.name) == dataclasses.replace(
                late_shallow, max_downsample=SADAConfig.preset(family).max_downsample
            )
        points = [level.measured[0] for level in speed_levels]
        assert {p.sampler for p in points} == {"unipc"}
        # fastest first, most faithful last: speed falls and fidelity rises along the table
        assert [p.speedup for p in points] == sorted((p.speedup for p in points), reverse=True)
        assert [p.mel_psnr_converged_db for p in points] == sorted(p.mel_psnr_converged_db for p in points)
        assert {p.sampler for p in levels["published"].measured} == {"ddim", "dpm++"}
        assert all("BENCHMARKS.md" in level.source for level in levels.values())


@pytest.mark.parametrize(
    ("level", "steps", "scheduler", "expected"),
    [
        ("default", None, None, (25, "unipc")),
        ("fast", None, "dpm++", (20, "dpm++")),  # what the command line gives wins
        ("faithful", 40, None, (40, "unipc")),
        ("published", None, None, (DEFAULT_STEPS, None)),  # the model's own sampler
        (None, None, None, (DEFAULT_STEPS, None)),  # without SADA: 50 steps of the model's own sampler
    ],
)
def test_a_run_takes_the_levels_sampler_and_steps_unless_given(level, steps, scheduler, expected) -> None:
    assert run_sampling("musicldm", level, steps, scheduler) == expected
    # a family not known before loading waits: the defaults without a level, until the family is known
    assert run_sampling(None, level, steps, scheduler) == (
        DEFAULT_STEPS if steps is None else steps,
        scheduler,
    )
    assert run_sampling("sd2", "default", None, None) == (DEFAULT_STEPS, None)


def test_a_level_the_family_lacks_and_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="the sd2 preset has no SADA level 'fast'; its levels: default"):
        resolve_sada_config("sd2", "fast")
    with pytest.raises(ConfigError, match="the sd2 preset has no SADA level 'fast'"):
        run_sampling("sd2", "fast", None, None)
    with pytest.raises(ConfigError, match="max_lagrange_int must be <= max_interval \\+ 1"):
        resolve_sada_config("musicldm", "published", "max_lagrange_int=6")
    assert resolve_sada_config("musicldm", "published", "max_interval=6; max_lagrange_int=7").max_lagrange_int == 7
    with pytest.raises(ConfigError, match="unknown SADA config keys: nope"):
        parse_overrides("nope=1")
    assert parse_overrides(" lagrange_int=3 ;; acc_range=[4, 40] ") == {"lagrange_int": 3, "acc_range": [4, 40]}


def test_the_family_is_known_before_loading(tiny_musicldm_dir: Path) -> None:
    assert family_of_model("tiny-musicldm") == "musicldm"
    assert family_of_model("audioldm2") == "audioldm2"
    assert family_of_model(str(tiny_musicldm_dir)) == "musicldm"
    assert family_of_model("sada-audio-tests/not-in-the-cache") is None


def _generate(model: Path, output: Path, *args: str, steps: str | None = "12") -> Result:
    argv = ["generate", "piano", "--model", str(model), "-o", str(output), "--duration", "1.28"]
    return CliRunner().invoke(cli.main, [*argv, *(["--steps", steps] if steps else []), *args])


def test_generate_runs_the_level_with_overrides_and_the_sidecar_records_them(
    tiny_musicldm_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clip.wav"
    result = _generate(tiny_musicldm_dir, out, "--sada-level", "faithful", "--sada", "max_interval=5")
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == resolve_sada_config("musicldm", "faithful", "max_interval=5").to_dict()
    assert (meta["sada_level"], meta["sada_overrides"]) == ("faithful", "max_interval=5")
    assert (meta["steps"], meta["scheduler_class"]) == (12, "UniPCMultistepScheduler")  # --steps given, the sampler not


def test_without_options_generate_runs_the_default_level_on_its_sampler_and_steps(
    tiny_musicldm_dir: Path, tmp_path: Path
) -> None:
    default = tmp_path / "default.wav"
    result = _generate(tiny_musicldm_dir, default, steps=None)
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads(default.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == resolve_sada_config("musicldm").to_dict()
    assert (meta["sada_level"], meta["sada_overrides"]) == ("default", "")
    assert (meta["steps"], meta["scheduler_class"]) == (25, "UniPCMultistepScheduler")
    assert meta["scheduler_config"]["timestep_spacing"] == "trailing"
    # shallow steps on every other step of the second half, nothing skipped
    modes = meta["sada_stats"]["step_modes"]
    assert len(modes) == 25 and "skipped" not in modes and modes.count("shallow") == 6
    assert "25 steps" in result.stdout
    # without SADA: 50 steps of the model's own sampler, the unmodified pipeline
    plain = tmp_path / "plain.wav"
    assert _generate(tiny_musicldm_dir, plain, "--accelerate", "none", steps=None).exit_code == 0
    meta = json.loads(plain.with_suffix(".json").read_text(encoding="utf-8"))
    assert (meta["steps"], meta["scheduler_class"], meta["sada_config"]) == (50, "DDIMScheduler", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sada-level", "fastest"], "--sada-level"),
        (["--accelerate", "none", "--sada-level", "fast"], "--sada-level needs --accelerate sada"),
        (["--accelerate", "none", "--sada", "lagrange_int=3"], "--sada needs --accelerate sada"),
        (["--sada", "lagrange_int"], "is not key=value"),
        (["--sada", "lagrange_int=three"], "is not a JSON value"),
        (["--sada", "nope=1"], "unknown SADA config keys: nope"),
        (["--sada", "max_lagrange_int=6"], "max_lagrange_int must be <= max_interval + 1 = 5"),
        (["--sada-level", "faithful", "--sada", "lagrange_int=1"], "lagrange_int must be >= 2"),
    ],
)
def test_bad_sada_options_are_one_line_before_loading(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be loaded for options that can be checked beforehand")

    monkeypatch.setattr(cli_common, "load_pipeline", no_load)
    for command in (["generate", "piano", "-o", str(tmp_path / "a.wav")], ["evaluate", "--generate", __file__]):
        argv = [*command, "--model", str(tiny_musicldm_dir), *args]
        if command[0] == "evaluate":
            argv += ["-o", str(tmp_path / "eval")]
        result = CliRunner().invoke(cli.main, argv)
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "eval" / "reference").exists()


def test_evaluate_takes_the_sada_options_only_with_generate(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), str(tmp_path), "--sada-level", "fast"])
    assert result.exit_code == 2 and "--sada-level only apply with --generate" in result.stderr


def test_evaluate_generates_its_test_side_with_the_config(tiny_musicldm, tmp_path: Path) -> None:
    config = resolve_sada_config("musicldm", "faithful")
    ref, test = tmp_path / "ref", tmp_path / "test"
    ref.mkdir(), test.mkdir()
    settings = SamplingSettings(steps=12, duration=0.64)
    names = generate_pair_folders(
        tiny_musicldm, ["piano"], settings, seed=0, reference_dir=ref, test_dir=test, sada_config=config, test_steps=8
    )
    meta = json.loads((test / f"{names[0]}.json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == config.to_dict()
    reference = json.loads((ref / f"{names[0]}.json").read_text(encoding="utf-8"))
    assert reference["sada_config"] is None
    # a level's own steps run on the test side only: the reference is the unaccelerated run at the full count
    assert (reference["steps"], meta["steps"], meta["sada_stats"]["num_steps"]) == (12, 8, 8)


def test_presets_lists_every_level_with_its_measurements() -> None:
    result = CliRunner().invoke(cli.main, ["presets"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for name in LEVEL_NAMES:
        assert f"  {name} " in text
    assert "  default   unipc, 25 steps, stepwise=false;" in text
    assert "  published the model's own sampler, 50 steps, (the preset)" in text
    assert "ddim: 17.0 full + 4.7 shallow calls, 2.30x faster than 50 steps, log-mel PSNR 38.3 dB to their clip" in text
    assert "unipc: 19.0 full + 6.0 shallow calls, 2.07x faster than 50 steps" in text and "BENCHMARKS.md" in text
    assert "No SADA setting measured beats plain" in text
    assert "sd2, sdxl, controlnet, flux, stable-audio:" in text
