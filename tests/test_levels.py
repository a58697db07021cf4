"""SADA's named speed / fidelity levels: the table, ``--sada-level`` / ``--sada`` on the commands that generate,
and ``sada-audio presets``."""

from __future__ import annotations

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
from sada_audio.levels import DEFAULT_LEVEL, LEVEL_NAMES, LEVELS, family_of_model, levels_for, resolve_sada_config

AUDIO_FAMILIES = ("musicldm", "audioldm", "audioldm2")


def test_every_family_has_levels_that_resolve_and_its_default_is_the_preset() -> None:
    assert set(LEVELS) == set(PRESETS)
    for family in PRESETS:
        levels = levels_for(family)
        assert DEFAULT_LEVEL in levels and set(levels) <= set(LEVEL_NAMES)
        assert resolve_sada_config(family) == SADAConfig.preset(family)
        for name in levels:
            assert isinstance(resolve_sada_config(family, name), SADAConfig)


def test_the_audio_levels_are_the_measured_points() -> None:
    # the faithful level is BENCHMARKS.md's I3 quality setting, the fast one its 'widening to 6' variant
    assert resolve_sada_config("musicldm", "faithful") == SADAConfig.preset(
        "musicldm", lagrange_int=3, max_lagrange_int=5
    )
    assert resolve_sada_config("musicldm", "fast") == SADAConfig.preset("musicldm", max_interval=6, max_lagrange_int=6)
    for family in AUDIO_FAMILIES:
        levels = list(levels_for(family).values())
        assert [level.name for level in levels] == list(LEVEL_NAMES)
        for sampler in ("ddim", "dpm++"):
            points = [next(p for p in level.measured if p.sampler == sampler) for level in levels]
            # fastest first, most faithful last: speed falls and fidelity rises along the table
            assert [p.speedup for p in points] == sorted((p.speedup for p in points), reverse=True)
            assert [p.mel_psnr_db for p in points] == sorted(p.mel_psnr_db for p in points)
        assert all("BENCHMARKS.md" in level.source for level in levels)


def test_a_level_the_family_lacks_and_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="the sd2 preset has no SADA level 'fast'; its levels: default"):
        resolve_sada_config("sd2", "fast")
    with pytest.raises(ConfigError, match="max_lagrange_int must be <= max_interval \\+ 1"):
        resolve_sada_config("musicldm", "default", "max_lagrange_int=6")
    # the same override fits the fast level, whose max_interval is 6
    assert resolve_sada_config("musicldm", "fast", "max_lagrange_int=7").max_lagrange_int == 7
    with pytest.raises(ConfigError, match="unknown SADA config keys: nope"):
        parse_overrides("nope=1")
    assert parse_overrides(" lagrange_int=3 ;; acc_range=[4, 40] ") == {"lagrange_int": 3, "acc_range": [4, 40]}


def test_the_family_is_known_before_loading(tiny_musicldm_dir: Path) -> None:
    assert family_of_model("tiny-musicldm") == "musicldm"
    assert family_of_model("audioldm2") == "audioldm2"
    assert family_of_model(str(tiny_musicldm_dir)) == "musicldm"
    assert family_of_model("sada-audio-tests/not-in-the-cache") is None


def _generate(model: Path, output: Path, *args: str) -> Result:
    argv = ["generate", "piano", "--model", str(model), "-o", str(output), "--steps", "12", "--duration", "1.28"]
    return CliRunner().invoke(cli.main, [*argv, *args])


def test_generate_runs_the_level_with_overrides_and_the_sidecar_records_them(
    tiny_musicldm_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clip.wav"
    result = _generate(tiny_musicldm_dir, out, "--sada-level", "faithful", "--sada", "max_interval=5")
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == resolve_sada_config("musicldm", "faithful", "max_interval=5").to_dict()
    assert (meta["sada_level"], meta["sada_overrides"]) == ("faithful", "max_interval=5")
    default = tmp_path / "default.wav"
    assert _generate(tiny_musicldm_dir, default).exit_code == 0
    meta = json.loads(default.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == SADAConfig.preset("musicldm").to_dict()
    assert (meta["sada_level"], meta["sada_overrides"]) == ("default", "")


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
        tiny_musicldm, ["piano"], settings, seed=0, reference_dir=ref, test_dir=test, sada_config=config
    )
    meta = json.loads((test / f"{names[0]}.json").read_text(encoding="utf-8"))
    assert meta["sada_config"] == config.to_dict()
    assert json.loads((ref / f"{names[0]}.json").read_text(encoding="utf-8"))["sada_config"] is None


def test_presets_lists_every_level_with_its_measurements() -> None:
    result = CliRunner().invoke(cli.main, ["presets"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for name in LEVEL_NAMES:
        assert f"  {name} " in text
    assert "lagrange_int=3; max_lagrange_int=5" in text  # the I3 setting
    assert "ddim: 17.0 full + 4.7 shallow calls of 50 steps, 2.30x faster, log-mel PSNR 38.3 dB" in text
    assert "2.05x (est.)" in text and "BENCHMARKS.md" in text
    assert "sd2, sdxl, controlnet, flux, stable-audio:" in text
