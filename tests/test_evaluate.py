"""``sada-audio evaluate`` and the evaluation library end to end on generated tones, every bad input, the CLAP
embedding loaders (a tiny ClapModel built here) and ``--generate`` on the tiny MusicLDM pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner, Result
from diffusers import DiffusionPipeline
from transformers import ClapModel

from sada_audio.cli import main as cli
from sada_audio.errors import SADAError
from sada_audio.evaluation import embeddings, sidecars
from sada_audio.evaluation.embeddings import load_clap_embedding
from sada_audio.evaluation.evaluate import (
    UnusableClipError,
    align,
    evaluate_directories,
    pair_files,
    read_clip,
)
from sada_audio.evaluation.generate import clip_names, read_prompts
from sada_audio.evaluation.lpips import AlexNetFeatures
from sada_audio.evaluation.metrics import MetricUnavailableError
from sada_audio.tiny import TINY_MUSICLDM_PATH
from tests.support.tiny_pipelines import _clap_config, _clap_feature_extractor, _roberta_tokenizer

SR = 16_000


@pytest.fixture(autouse=True)
def _no_default_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never depend on whether the embedded model is installed."""
    monkeypatch.setattr(embeddings, "default_embedding_source", lambda: tmp_path / "not-installed")


def _tone(frequency: float, seconds: float = 1.0, rate: int = SR, level: float = 0.3) -> np.ndarray:
    return (level * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _write(path: Path, waveform: np.ndarray, rate: int = SR, sidecar: dict | None = None, **kwargs) -> Path:
    sf.write(path, waveform, rate, **kwargs)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random AlexNet weights in torchvision's layout (the real ones are a 233 MB download)."""
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    generator = torch.Generator().manual_seed(0)
    state = AlexNetFeatures().state_dict()
    torch.save({k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in state.items()}, path)
    return str(path)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ClapModel saved like a hub checkpoint (model, tokenizer, feature extractor)."""
    path = tmp_path_factory.mktemp("clap")
    tokenizer = _roberta_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ClapModel(_clap_config(len(tokenizer))).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    _clap_feature_extractor().save_pretrained(path)
    return path


@pytest.fixture
def tones(tmp_path: Path) -> tuple[Path, Path]:
    """Three reference tones with sidecars; their test versions: identical, slightly noisy, very noisy."""
    ref_dir, test_dir = tmp_path / "ref", tmp_path / "test"
    ref_dir.mkdir()
    test_dir.mkdir()
    rng = np.random.default_rng(0)
    for i, (frequency, noise) in enumerate([(220, 0.0), (330, 0.003), (440, 0.05)]):
        reference = _tone(frequency)
        _write(
            ref_dir / f"tone{i}.wav",
            reference,
            sidecar={"prompt": f"a tone at {frequency} Hz", "steps": 10, "wall_time_s": 2.0},
        )
        test_sidecar = {
            "prompt": f"a tone at {frequency} Hz",
            "steps": 10,
            "wall_time_s": 1.0,
            "sada_stats": {"model_calls": 6, "step_modes": ["full"] * 4 + ["skipped", "pruned", "full"] * 2},
        }
        _write(
            test_dir / f"tone{i}.wav",
            reference + noise * rng.standard_normal(SR).astype(np.float32),
            sidecar=test_sidecar,
        )
    return ref_dir, test_dir


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, ["evaluate", *args])


def _one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --- pairing and reading -----------------------------------------------------------------------------------


def test_pairing_by_name(tmp_path: Path) -> None:
    ref_dir, test_dir = tmp_path / "ref", tmp_path / "test"
    ref_dir.mkdir()
    test_dir.mkdir()
    for name in ("a.wav", "b.wav", "only-ref.wav", "dup.wav", "dup.flac", "notes.txt", ".hidden.wav"):
        (ref_dir / name).touch()
    for name in ("a.flac", "b.wav", "only-test.wav", "dup.wav"):
        (test_dir / name).touch()
    (test_dir / "folder.wav").mkdir()
    pairs, problems = pair_files(ref_dir, test_dir)
    assert [(name, ref.name, test.name) for name, ref, test in pairs] == [
        ("a", "a.wav", "a.flac"),
        ("b", "b.wav", "b.wav"),
    ]
    reasons = {Path(p["file"]).relative_to(tmp_path).as_posix(): p["reason"] for p in problems}
    assert reasons == {
        "ref/dup.flac": "ambiguous: dup.wav has the same name; keep one",
        "ref/dup.wav": "ambiguous: dup.flac has the same name; keep one",
        "ref/only-ref.wav": "unmatched: no test clip of this name",
        "test/dup.wav": "not evaluated: its reference clip is ambiguous",
        "test/only-test.wav": "unmatched: no reference clip of this name",
        "test/folder.wav": "not a file (a directory or special file named like audio)",
    }


def test_a_zero_byte_file_is_called_empty(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").touch()
    with pytest.raises(UnusableClipError, match=r"empty file \(0 bytes\)"):
        read_clip(tmp_path / "zero.wav")


def test_missing_or_empty_folders_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SADAError, match="reference directory .* does not exist"):
        pair_files(tmp_path / "missing", tmp_path / "empty")
    with pytest.raises(SADAError, match="no audio files"):
        pair_files(tmp_path / "empty", tmp_path / "empty")


@pytest.mark.parametrize(
    ("waveform", "write_options", "reason"),
    [
        (np.zeros(0, np.float32), {}, "empty"),
        (np.zeros(SR, np.float32), {}, "silent"),
        (np.full(SR, np.nan, np.float32), {"subtype": "FLOAT"}, "NaN"),
        (_tone(440, seconds=0.2), {}, "too short: 0.200 s"),
    ],
)
def test_unusable_clips(tmp_path: Path, waveform: np.ndarray, write_options: dict, reason: str) -> None:
    path = _write(tmp_path / "clip.wav", waveform, **write_options)
    with pytest.raises(UnusableClipError, match=reason):
        read_clip(path)


def test_unreadable_clip(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF, but not really")
    with pytest.raises(UnusableClipError, match="unreadable"):
        read_clip(path)


def test_stereo_is_mixed_down_and_a_bad_sidecar_is_a_note(tmp_path: Path) -> None:
    left, right = _tone(220), _tone(330)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    clip = read_clip(path)
    np.testing.assert_allclose(clip.waveform, (left + right) / 2, atol=1e-4)
    assert clip.sidecar is None
    assert any("mixed down from 2 channels" in note for note in clip.notes)
    assert any("sidecar stereo.json ignored" in note for note in clip.notes)


def test_align_resamples_explicitly_and_cuts_to_the_shorter(tmp_path: Path) -> None:
    reference = read_clip(_write(tmp_path / "ref.wav", _tone(500)))
    test = read_clip(_write(tmp_path / "test.wav", _tone(500, seconds=1.5, rate=22_050), rate=22_050))
    ref_wave, test_wave, notes = align(reference, test)
    assert len(ref_wave) == len(test_wave) == SR
    assert notes[0] == "test resampled from 22050 Hz to the reference's 16000 Hz (librosa.resample, soxr_hq)"
    assert "both cut to 1.000 s" in notes[1]
    assert np.abs(ref_wave - test_wave)[100:-100].max() < 0.01  # the same tone after resampling


# --- the library end to end --------------------------------------------------------------------------------


def test_evaluate_directories(tones: tuple[Path, Path], backbone: str, clap_dir: Path) -> None:
    evaluation = evaluate_directories(*tones, lpips_backbone=backbone, embedding=str(clap_dir))
    report = evaluation.report
    assert report["pairs_evaluated"] == 3 and report["problems"] == []
    perfect = report["pairs"][0]["metrics"]
    assert perfect["lpips"] == 0 and perfect["log_mel_l1"] == 0 and perfect["mel_ssim"] == pytest.approx(1)
    assert perfect["mel_psnr"] == float("inf") and perfect["si_sdr"] > 100
    noisy, noisier = report["pairs"][1]["metrics"], report["pairs"][2]["metrics"]
    for metric in ("lpips", "log_mel_l1", "mr_stft", "spectral_convergence"):
        assert 0 < noisy[metric] < noisier[metric], metric
    for metric in ("mel_psnr", "mel_ssim", "si_sdr"):
        assert noisy[metric] > noisier[metric], metric
    summary = report["summary"]
    assert summary["lpips"]["worst_clip"] == summary["si_sdr"]["worst_clip"] == "tone2"
    assert summary["si_sdr"]["worst"] == pytest.approx(noisier["si_sdr"])
    assert summary["log_mel_l1"]["median"] == pytest.approx(noisy["log_mel_l1"])
    assert report["speed"] == {
        "clips": 3,
        "reference_wall_time_s": 6.0,
        "test_wall_time_s": 3.0,
        "speedup": 2.0,
        "reference_nfe": 30,
        "test_nfe": 18,
        "nfe_ratio": 0.6,
    }
    assert report["step_modes"]["tone1"][4:6] == ["skipped", "pruned"]
    assert "reference clip's range" in report["conventions"]["lpips_scaling"]
    sets = report["set_metrics"]
    assert sets["embedding"] == f"CLAP ({clap_dir})"
    assert sets["fad"] >= 0 and sets["clap_score"]["clips"] == 3
    assert -1 <= report["pairs"][0]["clap_score"]["test"] <= 1
    # the perfect pair's clips have the same embedding, hence the same CLAP score
    assert report["pairs"][0]["clap_score"]["test"] == pytest.approx(report["pairs"][0]["clap_score"]["reference"])
    assert set(evaluation.figure_pairs) == {"worst", "median"}
    assert evaluation.figure_pairs["worst"][0] == "tone2" and evaluation.figure_pairs["median"][0] == "tone1"


def test_unavailable_metrics_do_not_stop_the_evaluation(tones: tuple[Path, Path], tmp_path: Path) -> None:
    report = evaluate_directories(*tones, lpips_backbone=str(tmp_path / "missing.pth")).report
    assert report["lpips"]["status"].startswith("unavailable: cannot read the AlexNet backbone")
    assert "lpips" not in report["summary"] and "si_sdr" in report["summary"]
    assert report["set_metrics"]["fad"].startswith("unavailable: the default embedding")


def test_clap_embedding_from_a_pipeline_folder(tiny_musicldm_dir: Path) -> None:
    embedding = load_clap_embedding(str(tiny_musicldm_dir))
    audio = embedding.embed_audio([_tone(220), _tone(220, rate=8_000)], SR)
    assert audio.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(audio, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(audio, embedding.embed_audio([_tone(220), _tone(220, rate=8_000)], SR))
    assert embedding.embed_text(["a tone"]).shape == (1, 32)


def test_the_shipped_model_is_an_embedding_despite_its_float16_weights() -> None:
    embedding = load_clap_embedding(str(TINY_MUSICLDM_PATH))
    audio = embedding.embed_audio([_tone(220), _tone(330)], SR)
    text = embedding.embed_text(["slow piano arpeggio in A minor"])
    assert audio.shape == (2, text.shape[1])
    assert np.isfinite(audio).all() and np.isfinite(text).all()


def test_clap_embedding_errors(tmp_path: Path, tiny_audioldm: DiffusionPipeline) -> None:
    with pytest.raises(MetricUnavailableError, match="default embedding .* not installed"):
        load_clap_embedding(None)
    with pytest.raises(MetricUnavailableError, match="cannot load the CLAP embedding"):
        load_clap_embedding(str(tmp_path / "missing"))
    # AudioLDM's text encoder has no audio tower
    tiny_audioldm.save_pretrained(tmp_path / "audioldm")
    with pytest.raises(MetricUnavailableError, match="not a ClapModel"):
        load_clap_embedding(str(tmp_path / "audioldm"))


# --- the command -------------------------------------------------------------------------------------------


@pytest.mark.integration  # end to end through the command line
def test_command_end_to_end(tones: tuple[Path, Path], backbone: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = [*map(str, tones), "-o", str(out), "--json", str(out / "report.json"), "--lpips-backbone", backbone]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3 pairs evaluated, 0 problems" in result.stdout and "speedup 2.00x" in result.stdout
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "median_pair.png",
        "step_modes.png",
        "worst_pair.png",
    ]
    assert all((out / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in ("worst_pair.png", "step_modes.png"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["pairs"][0]["metrics"]["mel_psnr"] == "inf"  # JSON has no infinity
    assert report["figures"]["worst"] == "figures/worst_pair.png"
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "reference clip's range" in markdown and "| lpips |" in markdown and "tone2" in markdown
    assert "unavailable: the default embedding" in markdown
    # an existing report is never replaced without --overwrite
    _one_line_error(_invoke(*args), "already exists", "--overwrite")
    assert _invoke(*args, "--overwrite").exit_code == 0


@pytest.mark.integration  # end to end through the command line
def test_bad_files_are_reported_not_fatal(tones: tuple[Path, Path], backbone: str, tmp_path: Path) -> None:
    ref_dir, test_dir = tones
    _write(ref_dir / "silent.wav", np.zeros(SR, np.float32))
    _write(test_dir / "silent.wav", _tone(100))
    (ref_dir / "broken.wav").write_bytes(b"garbage")
    _write(test_dir / "broken.wav", _tone(100))
    _write(ref_dir / "empty.wav", np.zeros(0, np.float32))
    _write(test_dir / "empty.wav", _tone(100))
    _write(ref_dir / "rate.wav", _tone(500))
    _write(test_dir / "rate.wav", _tone(500, rate=44_100), rate=44_100)
    _write(test_dir / "extra.wav", _tone(100))
    out = tmp_path / "report"
    result = _invoke(
        str(ref_dir), str(test_dir), "-o", str(out), "--json", str(tmp_path / "r.json"), "--lpips-backbone", backbone
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    reasons = {Path(p["file"]).name: p["reason"].split(":")[0] for p in report["problems"]}
    assert reasons == {
        "silent.wav": "silent",
        "broken.wav": "unreadable",
        "empty.wav": "empty",
        "extra.wav": "unmatched",
    }
    rate_pair = next(p for p in report["pairs"] if p["name"] == "rate")
    assert rate_pair["notes"] == [
        "test resampled from 44100 Hz to the reference's 16000 Hz (librosa.resample, soxr_hq)"
    ]
    assert rate_pair["metrics"]["log_mel_l1"] < 0.1
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "## Problems" in markdown and "test resampled from 44100 Hz" in markdown


def test_command_bad_input(tones: tuple[Path, Path], tmp_path: Path) -> None:
    ref, test = map(str, tones)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a tone\n", encoding="utf-8")
    (tmp_path / "a-file").touch()
    _one_line_error(_invoke(), "REF_DIR and TEST_DIR")
    _one_line_error(_invoke(ref), "REF_DIR and TEST_DIR")
    _one_line_error(_invoke(ref, test, "--generate", str(prompts)), "not both")
    _one_line_error(_invoke(ref, test, "--steps", "10", "--seed", "3"), "--steps, --seed only apply with --generate")
    _one_line_error(
        _invoke(ref, str(tmp_path / "missing"), "-o", str(tmp_path / "o1")), "test directory", "does not exist"
    )
    _one_line_error(_invoke(ref, str(tmp_path), "-o", str(tmp_path / "o2")), "no audio files")
    _one_line_error(_invoke(ref, test, "-o", str(tmp_path / "a-file")), "is a file, not a folder")
    _one_line_error(_invoke(ref, test, "-o", str(tmp_path / "o3"), "--json", str(tmp_path / "r.txt")), "extension")
    _one_line_error(_invoke("--generate", str(tmp_path / "nope.txt")), "does not exist")


def test_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\n  slow piano, A minor  \n../../etc/passwd\n", encoding="utf-8")
    prompts = read_prompts(path)
    assert prompts == ["slow piano, A minor", "../../etc/passwd"]
    assert clip_names(prompts) == ["000_slow-piano-a-minor", "001_etc-passwd"]
    assert clip_names(["!!!"]) == ["000_clip"]
    path.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(SADAError, match="no prompts"):
        read_prompts(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SADAError, match="not UTF-8"):
        read_prompts(path)
    _one_line_error(_invoke("--generate", str(path)), "not UTF-8")


@pytest.mark.integration  # end to end through the command line
def test_generate_then_evaluate(tmp_path: Path, tiny_musicldm_dir: Path, backbone: str) -> None:
    model_dir = tiny_musicldm_dir
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("slow piano arpeggio\nfast drums\n", encoding="utf-8")
    out = tmp_path / "eval"
    # no --steps: the reference runs 50 steps, the test side the default SADA level's 25 on the same sampler
    args = ["--generate", str(prompts), "--model", str(model_dir), "--duration", "0.64"]
    args += [
        "-o",
        str(out),
        "--json",
        str(out / "report.json"),
        "--lpips-backbone",
        backbone,
        "--embedding",
        str(model_dir),
    ]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    names = ["000_slow-piano-arpeggio", "001_fast-drums"]
    for folder in ("reference", "test"):
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(
            f"{n}{ext}" for n in names for ext in (".json", ".wav")
        )
    test_sidecar = json.loads((out / "test" / f"{names[1]}.json").read_text(encoding="utf-8"))
    assert test_sidecar["seed"] == 1 and test_sidecar["accelerate"] == "sada"
    assert test_sidecar["model"] == str(model_dir) and "versions" in test_sidecar
    reference_sidecar = json.loads((out / "reference" / f"{names[1]}.json").read_text(encoding="utf-8"))
    assert (reference_sidecar["steps"], test_sidecar["steps"]) == (50, 25)
    assert reference_sidecar["scheduler_class"] == test_sidecar["scheduler_class"] == "UniPCMultistepScheduler"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["pairs_evaluated"] == 2 and report["problems"] == []
    speed = report["speed"]
    assert speed["reference_nfe"] == 100 and speed["test_nfe"] == 50 and speed["speedup"] > 0
    assert len(report["step_modes"][names[0]]) == 25
    assert report["set_metrics"]["embedding"] == f"CLAP ({model_dir})"
    assert report["set_metrics"]["clap_score"]["clips"] == 2
    assert (out / "figures" / "step_modes.png").is_file()
    assert "speedup" in result.stdout
    # the generated clips are never replaced without --overwrite
    _one_line_error(_invoke(*args[:-6], "-o", str(out)), "already")


def test_sidecar_readers() -> None:
    reference = {"prompt": "piano", "seed": 1, "steps": 50, "wall_time_s": 8.0, "batch_size": 4, "sada_stats": None}
    test = {"prompt": "piano", "seed": 2, "steps": 50, "wall_time_s": 1.0, "sada_stats": {"model_calls": 30}}
    assert sidecars.mismatch_notes(reference, test) == ["seed differs: reference 1, test 2"]
    assert sidecars.mismatch_notes(reference, None) == []
    assert sidecars.clip_cost(reference) == (2.0, 50)  # a batch of 4 shares the call's wall time
    assert sidecars.clip_cost(test) == (1.0, 30)
    assert sidecars.clip_cost({"steps": 50}) is None
    assert sidecars.speed([(reference, test), (None, test)])["speedup"] == 2.0
    assert sidecars.speed([(None, test)]) is None
    assert sidecars.prompt(None, {"prompt": "  "}) is None
    assert sidecars.step_modes(test) is None and sidecars.step_modes({"sada_stats": {"step_modes": ["full"]}}) == [
        "full"
    ]


def test_nothing_usable_still_gives_a_report(tmp_path: Path) -> None:
    ref_dir, test_dir = tmp_path / "ref", tmp_path / "test"
    ref_dir.mkdir()
    test_dir.mkdir()
    _write(ref_dir / "a.wav", np.zeros(SR, np.float32))
    _write(test_dir / "a.wav", np.zeros(SR, np.float32))
    out = tmp_path / "out"
    result = _invoke(str(ref_dir), str(test_dir), "-o", str(out), "--lpips-backbone", str(tmp_path / "none.pth"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "0 pairs evaluated, 2 problems" in result.stdout
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "No pair could be evaluated." in markdown and "LPIPS: unavailable" in markdown
    assert not (out / "figures" / "worst_pair.png").exists()
