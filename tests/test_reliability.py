"""Issue 27 (reliability, second pass): what a hostile user's input must never do -- delete a user's file, write
into the wrong place, leave a traceback or an empty folder behind."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from sada_audio.cli import common as cli_common
from sada_audio.cli import main as cli
from sada_audio.errors import SADAError
from sada_audio.render.guard import check_clip_folder, clip_folder_files

SR = 16000


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model must not be loaded for input that can be checked beforehand")


def _one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output + repr(result.exception)
    # the denoising progress bar (generate) is not an error line
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("Denoising:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _tool_clip(folder: Path, name: str, suffix: str = ".wav") -> tuple[Path, Path]:
    """A clip as a sada-audio command writes it: audio, and a sidecar with its prompt and seed that lists it."""
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / f"{name}{suffix}"
    sf.write(audio, np.zeros(SR // 2, dtype=np.float32), SR, format=suffix[1:].upper())
    sidecar = audio.with_suffix(".json")
    sidecar.write_text(json.dumps({"prompt": "a tone", "seed": 0, "files": [audio.name]}), encoding="utf-8")
    return audio, sidecar


def _refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], *fragments: str) -> str:
    """Run ``argv`` in ``tmp_path`` (which holds the manifest m.jsonl and the prompts file p.txt) with model loading
    forbidden: one Error line holding ``fragments``, and nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    (tmp_path / "m.jsonl").write_text('{"name": "a", "prompt": "a tone"}\n', encoding="utf-8")
    (tmp_path / "p.txt").write_text("a tone\n", encoding="utf-8")
    line = _one_line_error(CliRunner().invoke(cli.main, argv), *fragments)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.jsonl", "p.txt"]
    return line


# --- row 1: --overwrite replaces only what the tool made ------------------------------------------------------


def test_clip_folder_files_tells_the_tools_clips_from_a_users_files(tmp_path: Path) -> None:
    audio, sidecar = _tool_clip(tmp_path / "clips", "000_a-tone")
    folder = audio.parent
    (folder / "take.wav").write_bytes(b"a user's take")  # no sidecar lists it
    (folder / "notes.json").write_text('{"prompt": "mine"}', encoding="utf-8")  # not a clip sidecar
    (folder / ".000_a-tone.wav.0123456789ab.tmp").write_bytes(b"")  # an interrupted write's leftover
    os.symlink(audio, folder / "link.wav")
    (folder / "sub").mkdir()
    owned, foreign = clip_folder_files(folder)
    assert sorted(p.name for p in owned) == [".000_a-tone.wav.0123456789ab.tmp", sidecar.name, audio.name]
    assert sorted(p.name for p in foreign) == ["link.wav", "notes.json", "sub", "take.wav"]
    assert clip_folder_files(tmp_path / "missing") == ([], [])


def test_a_users_file_among_the_clips_is_refused_with_or_without_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    _tool_clip(folder / "ddim" / "SADA", "p00_seed0", ".flac")
    (folder / "ddim" / "SADA" / "p01_seed0.flac").write_bytes(b"mine")
    for overwrite in (False, True):
        with pytest.raises(SADAError, match=r"1 file that sada-audio did not make: ddim/SADA/p01_seed0.flac"):
            check_clip_folder(folder, overwrite, recursive=True)
    (folder / "ddim" / "SADA" / "p01_seed0.flac").unlink()
    with pytest.raises(SADAError, match="already holds clips of an earlier run"):
        check_clip_folder(folder, False, recursive=True)
    assert len(check_clip_folder(folder, True, recursive=True)) == 2


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_evaluate_generate_never_deletes_a_users_take(
    tmp_path: Path, tiny_musicldm_dir: Path, monkeypatch: pytest.MonkeyPatch, overwrite: list[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a tone\n", encoding="utf-8")
    take = tmp_path / "proj" / "reference" / "take.wav"
    take.parent.mkdir(parents=True)
    take.write_bytes(b"the only copy")
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    argv = ["evaluate", "--generate", str(prompts), "-o", str(tmp_path / "proj"), "-m", str(tiny_musicldm_dir)]
    result = CliRunner().invoke(cli.main, [*argv, *overwrite])
    line = _one_line_error(result, "take.wav", "sada-audio did not make")
    assert "earlier run" not in line
    assert take.read_bytes() == b"the only copy"
    assert not (tmp_path / "proj" / "test").exists()


def test_evaluate_generate_overwrite_removes_only_the_earlier_runs_clips(
    tmp_path: Path, tiny_musicldm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a tone\n", encoding="utf-8")
    earlier = [
        *_tool_clip(tmp_path / "proj" / "reference", "000_a-tone"),
        *_tool_clip(tmp_path / "proj" / "test", "000_a-tone"),
    ]
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    argv = ["evaluate", "--generate", str(prompts), "-o", str(tmp_path / "proj"), "-m", str(tiny_musicldm_dir)]
    _one_line_error(CliRunner().invoke(cli.main, argv), "already holds clips of an earlier run")
    assert all(path.exists() for path in earlier)
    result = CliRunner().invoke(cli.main, [*argv, "--overwrite"])
    assert isinstance(result.exception, AssertionError)  # got as far as loading the model
    assert not any(path.exists() for path in earlier)


def test_benchmark_overwrite_never_deletes_a_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "b" / "clips" / "notes" / "mix.flac"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    for overwrite in ([], ["--overwrite"]):
        result = CliRunner().invoke(cli.main, ["benchmark", "-o", str(tmp_path / "b"), "--quick", *overwrite])
        _one_line_error(result, "notes/mix.flac", "sada-audio did not make")
        assert mine.read_bytes() == b"mine"


# --- row 3: an empty output path is not the current folder ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "a tone", "-o", ""],
        ["generate", "a tone", "-o", "x.wav", "--sparsity-map", " "],
        ["render", "m.jsonl", "-o", ""],
        ["evaluate", "--generate", "p.txt", "-o", ""],
        ["evaluate", "--generate", "p.txt", "--json", ""],
        ["benchmark", "-o", ""],
    ],
)
def test_an_empty_output_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    _refused_before_loading(tmp_path, monkeypatch, argv, "the path is empty")


# --- row 11: an output folder that cannot be made is one line -------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_an_output_folder_under_a_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    (tmp_path / "file").write_bytes(b"")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a tone\n", encoding="utf-8")
    first = ["evaluate", "--generate", str(prompts)] if command == "evaluate" else ["benchmark", "--quick"]
    for out in [tmp_path / "file" / "sub", Path("/proc/sada-audio-test")]:
        result = CliRunner().invoke(cli.main, [*first, "-o", str(out)])
        _one_line_error(result, "cannot create the output directory", str(out))


# --- row 13: a failed run leaves no folder behind -------------------------------------------------------------


@pytest.mark.parametrize("command", ["render", "evaluate", "benchmark"])
def test_a_run_that_fails_to_load_its_model_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest, prompts = tmp_path / "m.jsonl", tmp_path / "p.txt"
    manifest.write_text('{"name": "a", "prompt": "a tone"}\n', encoding="utf-8")
    prompts.write_text("a tone\n", encoding="utf-8")
    out = tmp_path / "out" / "sub"
    first = {
        "render": ["render", str(manifest)],
        "evaluate": ["evaluate", "--generate", str(prompts)],
        "benchmark": ["benchmark", "--quick"],
    }[command]
    result = CliRunner().invoke(cli.main, [*first, "-o", str(out), "--model", str(tmp_path / "nonexistent")])
    _one_line_error(result, "nonexistent")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.jsonl", "p.txt"]


# --- row 9: non-finite numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "render", "evaluate", "benchmark"])
@pytest.mark.parametrize(
    "numbers", [["--duration", "nan"], ["--duration", "inf", "--allow-long"], ["--guidance", "nan"]]
)
def test_non_finite_numbers_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, numbers: list[str]
) -> None:
    first = {
        "generate": ["generate", "a tone", "-o", "x.wav"],
        "render": ["render", "m.jsonl", "-o", "out"],
        "evaluate": ["evaluate", "--generate", "p.txt", "-o", "out"],
        "benchmark": ["benchmark", "-o", "out"],
    }[command]
    numbers = [arg for arg in numbers if command != "benchmark" or arg != "--allow-long"]
    _refused_before_loading(tmp_path, monkeypatch, [*first, *numbers], "is not a finite number", numbers[0])


# --- row 6: the sparsity map is part of the clip's all-or-nothing write ---------------------------------------


@pytest.mark.parametrize("failing", ["png", "sidecar"])
def test_a_failed_write_leaves_neither_the_clip_nor_its_sparsity_map(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    from sada_audio import audio as audio_module
    from sada_audio.evaluation import sparsity_figure

    def disk_full(path: Path, *args: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    if failing == "png":
        monkeypatch.setattr(sparsity_figure, "write_atomically", disk_full)
    else:
        monkeypatch.setattr(audio_module, "write_json", disk_full)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["generate", "a tone", "-m", str(tiny_musicldm_dir), "-o", str(out / "x.wav"), "--steps", "4"]
    argv += ["--duration", "1.28", "--sparsity-map", str(out / "x.png")]
    _one_line_error(CliRunner().invoke(cli.main, argv), "No space left on device")
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    result = CliRunner().invoke(cli.main, argv)  # the re-run does not stop at "already exists"
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["x.json", "x.png", "x.wav"]


# --- row 7: a sidecar of the wrong shape is ignored, never fatal -----------------------------------------------

GARBAGE_SIDECARS = [
    {"sada_stats": "garbage"},
    {"sada_stats": [1, 2], "wall_time_s": 1.0, "steps": 50},
    {"sada_stats": {"step_modes": "full", "model_calls": "many"}, "wall_time_s": float("nan")},
    {"wall_time_s": "slow", "batch_size": "big", "prompt": 7, "seed": "x"},
    {"sada_stats": {"step_modes": [1, None], "sparsity_map": "none"}, "wall_time_s": 1, "steps": 5},
]


def test_sidecar_readers_survive_garbage() -> None:
    from sada_audio.evaluation import sidecars

    for garbage in GARBAGE_SIDECARS:
        assert sidecars.step_modes(garbage) is None
        sidecars.prompt(garbage, garbage)
        sidecars.mismatch_notes(garbage, garbage)
        cost = sidecars.clip_cost(garbage)
        assert cost is None or cost == (1.0, 50) or cost == (1, 5)
        sidecars.speed([(garbage, garbage)])


@pytest.mark.parametrize("garbage", GARBAGE_SIDECARS)
def test_evaluate_with_garbage_sidecars_still_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, garbage: dict
) -> None:
    from sada_audio.evaluation import embeddings

    monkeypatch.setattr(embeddings, "default_embedding_source", lambda: tmp_path / "not-installed")
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    for side in ("ref", "test"):
        (tmp_path / side).mkdir()
        sf.write(tmp_path / side / "a.wav", tone, SR)
        # json.dumps writes NaN as the bare token NaN, which Python's json reads back
        (tmp_path / side / "a.json").write_text(json.dumps(garbage), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "ref"), str(tmp_path / "test"), "-o", str(out)]
    result = CliRunner().invoke(
        cli.main, [*argv, "--lpips-backbone", str(tmp_path / "none.pth"), "--json", str(out / "r.json")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "1 pairs evaluated" in result.stdout
    assert json.loads((out / "r.json").read_text(encoding="utf-8"))["pairs_evaluated"] == 1
    assert (out / "report.html").is_file()


# --- row 4: index lines survive the characters splitlines takes for line breaks ---------------------------------


def test_index_statuses_survive_unicode_line_separators(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"name": "a", "prompt": "piano\u2028second line"},
        {"name": "b", "prompt": "drums\x85next line\u2029"},
        {"name": "tiny", "prompt": "too short\u2028", "duration": 0.001},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["render", str(manifest), "-o", str(out), "-m", str(tiny_musicldm_dir), "--steps", "2", "--duration", "0.64"]
    result = CliRunner().invoke(cli.main, argv)
    assert result.exit_code == 1, result.output + repr(result.exception)
    lines = (out / "index.jsonl").read_text(encoding="utf-8").splitlines()  # what any JSON-lines reader does
    index = {entry["name"]: entry for entry in map(json.loads, lines)}
    assert {name: entry["status"] for name, entry in index.items()} == {
        "a": "rendered",
        "b": "rendered",
        "tiny": "failed",
    }
    assert index["a"]["prompt"] == rows[0]["prompt"] and "audio_length_in_s" in index["tiny"]["error"]


# --- row 5: text that is not UTF-8 is refused up front, and never wedges a render -------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "\udcff", "-o", "x.wav"],
        ["generate", "\udc80 piano", "-o", "x.wav"],
        ["generate", "piano", "-o", "x.wav", "--negative-prompt", "\udc80"],
        ["render", "m.jsonl", "-o", "out", "--negative-prompt", "hiss \udcff"],
    ],
)
def test_unencodable_text_on_the_command_line_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    _refused_before_loading(tmp_path, monkeypatch, argv, "which is no character")


def test_a_manifest_row_with_a_lone_surrogate_is_invalid_and_the_others_render(
    tiny_musicldm_dir: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    # JSON escapes of lone surrogates: valid JSON, valid UTF-8 file, but no text a sidecar can hold
    manifest.write_text(
        '{"name": "a", "prompt": "\\udc80 piano"}\n{"name": "b", "prompt": "drums"}\n'
        '{"name": "c\\ud800", "prompt": "bass"}\n{"name": "d", "prompt": "hum", "negative_prompt": "\\udfff"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    argv = ["render", str(manifest), "-o", str(out), "-m", str(tiny_musicldm_dir), "--steps", "2", "--duration", "0.64"]
    _one_line_error(CliRunner().invoke(cli.main, argv), "line 1", "prompt holds '\\udc80'")
    assert not out.exists()
    result = CliRunner().invoke(cli.main, [*argv, "--skip-invalid"])
    assert result.exit_code == 1, result.output + repr(result.exception)
    entries = [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [entry["status"] for entry in entries] == ["invalid", "rendered", "invalid", "invalid"]
    assert (out / "b.wav").is_file()


# --- row 10: names too long for the file system, in bytes -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "a tone", "-o", "a" * 236 + ".wav"],  # the name fits, its temporary file does not
        ["generate", "a tone", "-o", "é" * 120 + ".wav"],  # 124 characters, 244 bytes
        ["generate", "a tone", "-o", "x.wav", "--sparsity-map", "m" * 250 + ".png"],
        ["evaluate", "--generate", "p.txt", "-o", "out", "--json", "j" * 250 + ".json"],
    ],
)
def test_a_name_too_long_for_the_file_system_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    _refused_before_loading(tmp_path, monkeypatch, argv, "is too long for the file system")


def test_a_manifest_name_too_long_in_bytes_is_an_invalid_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    manifest = tmp_path / "m.jsonl"
    rows = [{"name": "é" * 130, "prompt": "a tone"}, {"name": "é" * 100, "prompt": "a tone"}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["render", str(manifest), "-o", str(tmp_path / "out")])
    line = _one_line_error(result, "line 1", "at most 200 bytes")
    assert "line 2" not in line  # 100 two-byte characters fit
    assert not (tmp_path / "out").exists()


# --- row 12: a folder at an output name is refused, even with --overwrite ----------------------------------------


@pytest.mark.parametrize("folder", ["k1.json", "k1.wav", "index.html", "index.jsonl", "index.rank0.jsonl"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_at_an_output_name_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str, overwrite: list[str]
) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"name": "k1", "prompt": "a tone"}\n', encoding="utf-8")
    (tmp_path / "out" / folder).mkdir(parents=True)
    (tmp_path / "out" / folder / "keep.txt").write_text("mine", encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["render", str(manifest), "-o", str(tmp_path / "out"), *overwrite])
    _one_line_error(result, folder)
    assert (tmp_path / "out" / folder / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [folder]


# --- row 2: memory ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "render"])
def test_a_request_beyond_the_machines_memory_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from sada_audio import memory

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    monkeypatch.setattr(memory, "total_memory_bytes", lambda device: 2**30)  # a 1 GB machine
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"name": "c{i}", "prompt": "a tone"}}\n' for i in range(20)), encoding="utf-8")
    argv = {
        "generate": ["generate", "a tone", "-o", "x.wav", "--num-waveforms", "20"],
        "render": ["render", "m.jsonl", "-o", "out", "--batch-size", "20"],
    }[command]
    line = _one_line_error(CliRunner().invoke(cli.main, argv), "more than the 1.0 GB cpu has in all")
    assert "--ignore-memory-estimate" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.jsonl"]
    # forced, it goes on to load the model
    result = CliRunner().invoke(cli.main, [*argv, "--ignore-memory-estimate"])
    assert isinstance(result.exception, AssertionError), result.output


def test_the_cpu_allocators_failure_is_the_one_line_out_of_memory_error(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sada_audio import generation

    def allocation_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 1467898675200 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(generation, "generate_batch", allocation_fails)
    argv = ["generate", "a tone", "-m", str(tiny_musicldm_dir), "-o", str(tmp_path / "x.wav"), "--steps", "2"]
    result = CliRunner().invoke(cli.main, argv)
    assert result.exit_code == 1, result.output + repr(result.exception)
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("Error: out of memory (") and "DefaultCPUAllocator" in line
    assert list(tmp_path.iterdir()) == []


# --- row 16: Ctrl-C is 130 from the first instant ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "render", "evaluate", "benchmark"])
def test_ctrl_c_while_the_command_starts_is_exit_130(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    from sada_audio.cli import console

    def interrupted_import(*args: object) -> None:  # Ctrl-C while the command's modules are imported
        raise KeyboardInterrupt

    monkeypatch.setattr(console.LazyGroup, "get_command", interrupted_import)
    result = CliRunner().invoke(cli.main, [command, "--help"])
    assert result.exit_code == 130, result.output + repr(result.exception)
    assert result.output.strip() == "Interrupted."
    assert "Aborted" not in result.output


# --- row 17: small ones -----------------------------------------------------------------------------------------


def test_a_sada_override_given_twice_is_refused() -> None:
    from sada_audio import SADAConfig
    from sada_audio.errors import ConfigError

    with pytest.raises(ConfigError, match="acc_range is given twice"):
        SADAConfig.preset("musicldm").with_overrides("acc_range=[10,49]; acc_range=[5,40]")


def test_benchmark_refuses_a_variant_with_a_key_given_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    variant = "acc_range=[10,49]; acc_range=[5,40]"
    result = CliRunner().invoke(cli.main, ["benchmark", "-o", str(tmp_path / "b"), "--sada-variant", variant])
    _one_line_error(result, "acc_range is given twice")


def test_sada_config_takes_a_list_as_a_pair_and_a_preset_name_must_be_text() -> None:
    from sada_audio import SADAConfig
    from sada_audio.errors import ConfigError

    assert SADAConfig(acc_range=[10, 40]) == SADAConfig(acc_range=(10, 40))
    assert SADAConfig(acc_range=[10, 40]).acc_range == (10, 40)
    with pytest.raises(ConfigError, match="acc_range must be 2 whole numbers"):
        SADAConfig(acc_range=[10, 40, 3])
    with pytest.raises(ConfigError, match="a SADA preset is named by text, got null None"):
        SADAConfig.preset(None)  # type: ignore[arg-type]


def test_report_md_shows_a_hostile_file_name_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sada_audio.evaluation import embeddings

    monkeypatch.setattr(embeddings, "default_embedding_source", lambda: tmp_path / "not-installed")
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    name = "<img src=x onerror=alert(1)>"
    for side in ("ref", "test"):
        (tmp_path / side).mkdir()
        sf.write(tmp_path / side / f"{name}.wav", tone, SR)
    (tmp_path / "test" / "a|b\nc.wav").write_bytes(b"")  # unusable: listed under Problems
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "ref"), str(tmp_path / "test"), "-o", str(out)]
    result = CliRunner().invoke(cli.main, [*argv, "--lpips-backbone", str(tmp_path / "none.pth")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "a\\|b c.wav" in markdown


# --- rows 14 and 15: Windows device names, and CSV line numbers past blank lines -------------------------------


@pytest.mark.parametrize("name", ["COM\u00b9", "lpt\u00b3.wav", "CONIN$", "conout$", "COM0", "LPT9"])
def test_windows_device_names_are_invalid(tmp_path: Path, name: str) -> None:
    from sada_audio.render import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"name": name, "prompt": "a tone"}) + "\n", encoding="utf-8")
    (problem,) = read_manifest(manifest).problems
    assert "Windows device names" in problem.message


def test_csv_problems_name_the_right_line_past_blank_lines(tmp_path: Path) -> None:
    from sada_audio.render import read_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text(
        'name,prompt\n\na,piano\n\n\nCON,drums\n"b","two\nlines"\n\r\n"NUL",x\nc,\n', encoding="utf-8", newline=""
    )
    cues = read_manifest(manifest)
    assert [(row.line, row.name) for row in cues.rows] == [(3, "a"), (7, "b")]
    assert [(problem.line, problem.name) for problem in cues.problems] == [(6, "CON"), (10, "NUL"), (11, "c")]


def test_a_row_whose_write_fails_is_failed_and_the_rows_after_it_render(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: validation now refuses unencodable text, but any ValueError of a clip's write (the
    UnicodeEncodeError that used to wedge render) fails that row only."""
    from sada_audio.render import job

    real = job._write_clip

    def write(out_dir: Path, row: object, *args: object) -> object:
        if row.name == "a":  # type: ignore[attr-defined]
            "\udc80".encode()
        return real(out_dir, row, *args)

    monkeypatch.setattr(job, "_write_clip", write)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"name": "a", "prompt": "piano"}\n{"name": "b", "prompt": "drums"}\n', encoding="utf-8")
    out = tmp_path / "out"
    argv = ["render", str(manifest), "-o", str(out), "-m", str(tiny_musicldm_dir), "--steps", "2", "--duration", "0.64"]
    result = CliRunner().invoke(cli.main, argv)
    assert result.exit_code == 1, result.output + repr(result.exception)
    entries = [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [(entry["name"], entry["status"]) for entry in entries] == [("a", "failed"), ("b", "rendered")]
    assert "UnicodeEncodeError" in entries[0]["error"]


# --- row 8: a full disk is one OSError, not errors inside libsndfile's callbacks ---------------------------------


class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write and seek fails as the kernel's would (ENOSPC)."""

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def seek(self, offset: int, whence: int = 0) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_a_full_disk_is_one_os_error_from_a_plain_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from sada_audio import audio as audio_module

    monkeypatch.setattr(audio_module, "write_atomically", lambda path, write: write(_FullDisk()))
    with pytest.raises(OSError) as raised:
        audio_module.write_audio(tmp_path / f"x{suffix}", np.zeros(SR, dtype=np.float32), SR)
    assert raised.value.errno == errno.ENOSPC


def test_write_atomically_names_the_destination_of_a_failed_write(tmp_path: Path) -> None:
    from sada_audio.audio import write_atomically

    def fail(file: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as raised:
        write_atomically(tmp_path / "x.wav", fail)
    assert raised.value.filename == str(tmp_path / "x.wav")
    assert list(tmp_path.iterdir()) == []


def test_the_benchmarks_clips_are_recognised_as_its_own(tiny_musicldm, tmp_path: Path) -> None:
    """What row 1's --overwrite relies on: every file the quality workload writes is recognised as the tool's."""
    from sada_audio.evaluation.accelerators import Baseline
    from sada_audio.evaluation.benchmark import BenchmarkSettings, run_quality

    settings = BenchmarkSettings(
        schedulers=("ddim",), steps=4, prompts=("a tone",), seeds=(0,), duration=0.64, converged_steps=None
    )
    clips = tmp_path / "clips"
    run_quality(tiny_musicldm, [Baseline()], settings, clip_dir=clips)
    owned, foreign = clip_folder_files(clips, recursive=True)
    assert foreign == [] and sorted(path.suffix for path in owned) == [".flac", ".json"]
    with pytest.raises(SADAError, match="already holds clips of an earlier run"):
        check_clip_folder(clips, False, recursive=True)
    assert check_clip_folder(clips, True, recursive=True) == owned


# --- row 9 (rest): --quick keeps what the command line gives explicitly ----------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], {"steps": 20, "duration": 2.56, "latent_frames": (32,)}),
        (["--duration", "1.28"], {"steps": 20, "duration": 1.28, "latent_frames": (32,)}),
        (["--steps", "8", "--frames", "64"], {"steps": 8, "duration": 2.56, "latent_frames": (64,)}),
    ],
)
def test_quick_keeps_the_explicit_steps_duration_and_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], expected: dict
) -> None:
    from sada_audio.cli import benchmark as cli_benchmark
    from sada_audio.evaluation import benchmark as evaluation_benchmark

    settings: dict = {}

    def methods(pipe: object, run_settings: object) -> None:
        settings.update(run_settings.to_dict())  # type: ignore[attr-defined]
        raise SADAError("stopped by the test once the settings are known")

    monkeypatch.setattr(cli_benchmark, "load_for_command", lambda *args: (None, 0.0))
    monkeypatch.setattr(evaluation_benchmark, "accelerators_for", methods)
    result = CliRunner().invoke(cli.main, ["benchmark", "-o", str(tmp_path / "b"), "--quick", *given])
    _one_line_error(result, "stopped by the test")
    assert {key: settings[key] for key in expected} == expected


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_evaluate_generate_never_clears_a_folder_through_a_symlink(
    tmp_path: Path, tiny_musicldm_dir: Path, monkeypatch: pytest.MonkeyPatch, overwrite: list[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a tone\n", encoding="utf-8")
    elsewhere = _tool_clip(tmp_path / "elsewhere", "000_a-tone")  # clips the tool made, in another folder
    (tmp_path / "proj").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "proj" / "reference")
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    argv = ["evaluate", "--generate", str(prompts), "-o", str(tmp_path / "proj"), "-m", str(tiny_musicldm_dir)]
    _one_line_error(CliRunner().invoke(cli.main, [*argv, *overwrite]), "reference' is a symlink")
    assert all(path.exists() for path in elsewhere)


def test_a_benchmark_with_an_unknown_method_leaves_no_folder(tmp_path: Path) -> None:
    """The issue's case: the method names are checked once the model is loaded, after the folders exist."""
    out = tmp_path / "b"
    result = CliRunner().invoke(cli.main, ["benchmark", "-o", str(out), "--quick", "--methods", "Nope"])
    _one_line_error(result, "unknown method(s) nope")
    assert not out.exists()
