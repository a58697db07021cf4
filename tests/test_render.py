"""``sada-audio render`` and ``sada_audio.render``: manifests, validation, resume, batching, failures, processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner, Result
from diffusers import DiffusionPipeline

from sada_audio.cli import common as cli_common
from sada_audio.cli import main as cli
from sada_audio.generation import ClipRequest, PromptEmbeddingCache, SamplingSettings, generate_batch
from sada_audio.render import (
    ManifestError,
    RenderDefaults,
    plan_batches,
    read_manifest,
    shard,
)
from sada_audio.render import job as render_job
from tests.support.tiny_pipelines import SAMPLE_RATE

STEPS = "8"
DURATION = "0.64"
SCRIPT = Path(sys.executable).parent / "sada-audio"
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _rows(count: int, **extra: Any) -> list[dict[str, Any]]:
    prompts = ["slow piano arpeggio", "fast techno drum groove", "rain on a tin roof", "ambient synth pads"]
    return [{"name": f"cue{i:02d}", "prompt": prompts[i % len(prompts)], "seed": i, **extra} for i in range(count)]


def _render(manifest: Path, out: Path, model: Path, *args: str) -> Result:
    argv = ["render", str(manifest), "-o", str(out), "--model", str(model), "--steps", STEPS, "--duration", DURATION]
    return CliRunner().invoke(cli.main, [*argv, *args])


def _index(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "index.jsonl").read_text(encoding="utf-8").splitlines()
    return {entry["name"]: entry for entry in map(json.loads, lines)}


def _statuses(out: Path) -> dict[str, str]:
    return {name: entry["status"] for name, entry in _index(out).items()}


def _snapshot(out: Path) -> dict[str, int]:
    """Modification times of the clips' files: a file that is rewritten gets a new one."""
    indexes = ("index.jsonl", "index.html")
    return {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.name not in indexes}


def _read(path: Path) -> np.ndarray:
    data, rate = sf.read(path)
    assert rate == SAMPLE_RATE and np.isfinite(data).all()
    return data


# ---------------------------------------------------------------- manifest parsing and validation


def test_jsonl_and_csv_manifests_fill_in_the_defaults(tmp_path: Path) -> None:
    defaults = RenderDefaults(seed=7, duration=1.28, steps=12, guidance=3.0, format="flac", negative_prompt="hiss")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"name": "a", "prompt": "piano\u2028"}\n\n'
        '{"name": "b", "prompt": "drums", "seed": 3, "steps": 4, "duration": 0.64, "guidance": 1, '
        '"format": "WAV", "negative_prompt": "noise"}\n',
        encoding="utf-8",
    )
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(
        "\ufeffname,prompt,seed,steps,duration,guidance,format,negative_prompt\n"
        "a,piano,,,,,,\n"
        'b,"drums, loud\nand long",3,4,0.64,1,wav,noise\n',
        encoding="utf-8",
    )
    for path, lines in ((jsonl, (1, 3)), (csv_path, (2, 3))):
        manifest = read_manifest(path, defaults)
        assert manifest.problems == []
        first, second = manifest.rows
        assert (first.line, second.line) == lines
        assert (first.name, first.clip.prompt.strip(), first.format) == ("a", "piano", "flac")
        assert (first.clip.seed, first.clip.negative_prompt) == (7, "hiss")
        assert first.settings == SamplingSettings(steps=12, duration=1.28, guidance=3.0)
        assert second.clip.seed == 3 and second.clip.negative_prompt == "noise" and second.format == "wav"
        assert second.settings == SamplingSettings(steps=4, duration=0.64, guidance=1.0)
    assert read_manifest(csv_path, defaults).rows[1].clip.prompt == "drums, loud\nand long"


BAD_ROWS = {
    "missing prompt": ({"name": "x"}, "missing prompt"),
    "blank prompt": ({"name": "x", "prompt": "  "}, "missing prompt"),
    "missing name": ({"prompt": "p"}, "missing name"),
    "name not text": ({"name": 3, "prompt": "p"}, "name must be text"),
    "parent name": ({"name": "../x", "prompt": "p"}, "unsafe name '../x'"),
    "absolute name": ({"name": "/tmp/x", "prompt": "p"}, "unsafe name '/tmp/x'"),
    "nested name": ({"name": "a/b", "prompt": "p"}, "unsafe name"),
    "backslash name": ({"name": "a\\b", "prompt": "p"}, "unsafe name"),
    "dot dot": ({"name": "..", "prompt": "p"}, "unsafe name"),
    "hidden name": ({"name": ".x", "prompt": "p"}, "unsafe name"),
    "drive name": ({"name": "C:x", "prompt": "p"}, "unsafe name"),
    "control character": ({"name": "a\nb", "prompt": "p"}, "unsafe name"),
    "long name": ({"name": "n" * 201, "prompt": "p"}, "unsafe name"),
    "negative seed": ({"name": "x", "prompt": "p", "seed": -1}, "seed must be a whole number >= 0, got a number -1"),
    "fractional seed": ({"name": "x", "prompt": "p", "seed": 1.5}, "seed must be a whole number"),
    "boolean seed": ({"name": "x", "prompt": "p", "seed": True}, "seed must be a whole number"),
    "huge seed": ({"name": "x", "prompt": "p", "seed": 2**64}, "seed must be at most"),
    "zero steps": ({"name": "x", "prompt": "p", "steps": 0}, "steps must be a whole number >= 1"),
    "text steps": ({"name": "x", "prompt": "p", "steps": "many"}, "steps must be a whole number"),
    "zero duration": ({"name": "x", "prompt": "p", "duration": 0}, "duration must be a number > 0"),
    "nan duration": ({"name": "x", "prompt": "p", "duration": "nan"}, "duration must be a number > 0"),
    "negative guidance": ({"name": "x", "prompt": "p", "guidance": -1}, "guidance must be a number >= 0"),
    "list guidance": ({"name": "x", "prompt": "p", "guidance": [1]}, "guidance must be a number"),
    "unknown format": ({"name": "x", "prompt": "p", "format": "mp3"}, "format must be one of wav, flac"),
    "negative prompt not text": ({"name": "x", "prompt": "p", "negative_prompt": 5}, "negative_prompt must be text"),
    "unknown field": ({"name": "x", "prompt": "p", "promt": "q"}, "unknown field 'promt'"),
    "duplicate name": ({"name": "Good", "prompt": "p"}, "duplicate name 'Good' (first on line 1)"),
    "prompt not text": ({"name": "x", "prompt": 5}, "prompt must be text, got a number 5"),
    "negative not text": (
        {"name": "x", "prompt": "p", "negative_prompt": ["a"]},
        "negative_prompt must be text, got a list",
    ),
    "seed in quotes": ({"name": "x", "prompt": "p", "seed": "3"}, "seed must be a whole number >= 0, got text '3'"),
    "device name": ({"name": "CON", "prompt": "p"}, "unportable name 'CON'"),
    "device name with extension": ({"name": "nul.take2", "prompt": "p"}, "unportable name"),
    "com port": ({"name": "com1", "prompt": "p"}, "unportable name"),
    "trailing dot": ({"name": "trail.", "prompt": "p"}, "unportable name 'trail.'"),
    "bidi override": ({"name": "clip\u202ewav.exe", "prompt": "p"}, "unportable name"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_every_bad_row_is_reported_with_its_line(tmp_path: Path, case: str) -> None:
    bad, message = BAD_ROWS[case]
    manifest = read_manifest(_write_manifest(tmp_path / "m.jsonl", [{"name": "good", "prompt": "p"}, bad]))
    assert [row.name for row in manifest.rows] == ["good"]
    assert [problem.line for problem in manifest.problems] == [2]
    assert message in manifest.problems[0].message


def test_unreadable_rows_and_csv_structure(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"name": "a", "prompt": "p"}\n{"name": "b",\n[1, 2]\n', encoding="utf-8")
    problems = read_manifest(jsonl).problems
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(2, "not valid JSON"), (3, "not a JSON object")]

    csv_path = tmp_path / "m.csv"
    csv_path.write_text("name,prompt,tempo\na,p,120\nb,p,1,extra\n", encoding="utf-8")
    problems = read_manifest(csv_path).problems
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (1, "unknown column 'tempo'"),
        (3, "more cells than columns"),
    ]


def test_check_lists_every_problem_on_one_line_or_skips_them(tmp_path: Path) -> None:
    rows = [{"name": "a", "prompt": "p"}, {"name": "../a", "prompt": ""}, {"name": "b", "prompt": "p", "steps": 0}]
    manifest = read_manifest(_write_manifest(tmp_path / "m.jsonl", rows))
    with pytest.raises(ManifestError) as error:
        manifest.check(skip_invalid=False)
    message = str(error.value)
    assert "has 2 invalid rows" in message and "\n" not in message and "--skip-invalid" in message
    assert "line 2: unsafe name '../a'" in message and "line 2: missing prompt" in message
    assert "line 3: steps must be" in message
    manifest.check(skip_invalid=True)  # the valid row is enough

    only_bad = read_manifest(_write_manifest(tmp_path / "bad.jsonl", rows[1:]))
    with pytest.raises(ManifestError, match="no valid rows"):
        only_bad.check(skip_invalid=True)


@pytest.mark.parametrize(("name", "message"), [("m.txt", "use .jsonl or .csv"), ("missing.jsonl", "cannot read")])
def test_unreadable_manifest(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "m.txt").write_text("name,prompt\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / name)


def test_shards_are_disjoint_complete_and_batches_share_a_shape(tmp_path: Path) -> None:
    rows = _rows(7) + _rows(3, steps=4)
    rows = [{**row, "name": f"r{i}"} for i, row in enumerate(rows)]
    valid = read_manifest(_write_manifest(tmp_path / "m.jsonl", rows)).rows
    for world in (1, 2, 3):
        shares = [shard(valid, rank, world) for rank in range(world)]
        names = [row.name for share in shares for row in share]
        assert sorted(names) == sorted(row.name for row in valid)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    batches = plan_batches(valid, 3)
    assert [len(batch) for batch in batches] == [3, 3, 1, 3]
    assert all(len({row.settings for row in batch}) == 1 for batch in batches)
    assert [row.name for row in batches[0]] == ["r0", "r1", "r2"]


# ---------------------------------------------------------------- rendering


def test_render_writes_clips_sidecars_and_index(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    rows = [*_rows(3), {"name": "loud", "prompt": "drums", "seed": 9, "format": "flac", "negative_prompt": "hiss"}]
    manifest = _write_manifest(tmp_path / "cues.jsonl", rows)
    out = tmp_path / "out" / "nested"
    # the published preset skips steps: the index's NFE bookkeeping is checked on it
    result = _render(
        manifest, out, tiny_musicldm_dir, "--batch-size", "2", "--steps", "20", "--sada-level", "published"
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Rendered 4 clips" in result.stdout

    names = {"cue00", "cue01", "cue02", "loud"}
    expected = {f"{n}.json" for n in names} | {f"{n}.wav" for n in names - {"loud"}}
    expected |= {"loud.flac", "index.jsonl", "index.html"}
    assert {path.name for path in out.iterdir()} == expected
    assert sf.info(out / "loud.flac").format == "FLAC"
    assert len(_read(out / "cue00.wav")) == int(0.64 * SAMPLE_RATE)

    meta = json.loads((out / "loud.json").read_text(encoding="utf-8"))
    assert (meta["prompt"], meta["negative_prompt"], meta["seed"], meta["files"]) == ("drums", "hiss", 9, ["loud.flac"])
    assert (meta["name"], meta["manifest_line"], meta["steps"], meta["pipeline_class"]) == (
        "loud",
        4,
        20,
        "MusicLDMPipeline",
    )
    assert meta["render_request"]["model_id"] == str(tiny_musicldm_dir) and meta["sada_stats"]["num_steps"] == 20
    # the sidecar holds everything generate's does
    generated = tmp_path / "g.wav"
    assert (
        CliRunner()
        .invoke(cli.main, ["generate", "p", "-o", str(generated), "--model", str(tiny_musicldm_dir), "--steps", "2"])
        .exit_code
        == 0
    )
    assert set(json.loads(generated.with_suffix(".json").read_text(encoding="utf-8"))) <= set(meta)

    index = _index(out)
    assert list(index) == ["cue00", "cue01", "cue02", "loud"]  # manifest order
    for entry in index.values():
        assert entry["status"] == "rendered" and entry["error"] is None and entry["wall_time_s"] > 0
        assert entry["nfe"] == json.loads((out / f"{entry['name']}.json").read_text())["sada_stats"]["model_calls"]
        assert entry["nfe_speedup"] == pytest.approx(20 / entry["nfe"], abs=1e-4)
        # priced against 50 unaccelerated steps: a shallow call costs 0.157 of a full one
        meta = json.loads((out / f"{entry['name']}.json").read_text())
        cost = entry["nfe"] - (1 - render_job.SHALLOW_CALL_COST) * len(meta["sada_stats"]["shallow_steps"])
        assert entry["speedup_estimate"] == pytest.approx(50 / cost, abs=1e-4) and entry["speedup_estimate"] > 2.5
        assert entry["nfe"] < 20 and entry["steps_skipped"] + entry["nfe"] == 20
    assert [index[name]["batch_size"] for name in sorted(names)] == [2, 2, 2, 2]


@pytest.mark.integration  # end to end through the command line
def test_the_edm_alias_is_recorded_as_euler_karras(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    manifest = _write_manifest(tmp_path / "cues.jsonl", _rows(1))
    runs = {name: tmp_path / name for name in ("edm", "euler-karras")}
    for name, out in runs.items():
        result = _render(manifest, out, tiny_musicldm_dir, "--scheduler", name, "--steps", "2")
        assert result.exit_code == 0, result.output
    sidecars = {name: json.loads((out / "cue00.json").read_text(encoding="utf-8")) for name, out in runs.items()}
    assert {meta["render_request"]["scheduler"] for meta in sidecars.values()} == {"euler-karras"}
    assert sidecars["edm"]["scheduler_config"] == sidecars["euler-karras"]["scheduler_config"]
    assert (runs["edm"] / "cue00.wav").read_bytes() == (runs["euler-karras"] / "cue00.wav").read_bytes()


@pytest.mark.integration  # end to end through the command line
def test_rerun_skips_complete_clips_and_rerenders_changed_rows(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = _rows(3)
    manifest = _write_manifest(tmp_path / "cues.jsonl", rows)
    assert _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none").exit_code == 0
    before = _snapshot(out)

    again = _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none")
    assert again.exit_code == 0
    assert _snapshot(out) == before
    assert set(_statuses(out).values()) == {"skipped"}
    assert _index(out)["cue01"]["nfe"] == 8  # the statistics come from the sidecar

    rows[1]["seed"] = 99
    rows[2]["format"] = "flac"
    _write_manifest(manifest, rows)
    assert _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none").exit_code == 0
    assert _statuses(out) == {"cue00": "skipped", "cue01": "rendered", "cue02": "rendered"}
    after = _snapshot(out)
    assert after["cue00.wav"] == before["cue00.wav"] and after["cue01.wav"] != before["cue01.wav"]
    assert "cue02.wav" not in after and "cue02.flac" in after  # the old format's file is gone

    # other settings on the command line are another request too
    assert _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none", "--guidance", "3").exit_code == 0
    assert set(_statuses(out).values()) == {"rendered"}


@pytest.mark.integration  # end to end through the command line
def test_damaged_clips_are_rendered_again(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path / "cues.jsonl", _rows(4))
    assert _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none").exit_code == 0
    (out / "cue00.json").write_text("{", encoding="utf-8")  # unreadable sidecar
    meta = json.loads((out / "cue01.json").read_text(encoding="utf-8"))
    (out / "cue01.json").write_text(json.dumps({**meta, "duration_s": "long"}), encoding="utf-8")  # edited by hand
    sf.write(out / "cue02.wav", np.zeros(100), SAMPLE_RATE)  # audio shorter than its sidecar says
    (out / "cue03.wav").unlink()

    # an unreadable sidecar may be anybody's file: render refuses to replace it, and changes nothing
    before = _snapshot(out)
    refused = _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none")
    assert refused.exit_code == 2 and "cue00.json" in refused.output and "--overwrite" in refused.output
    assert _snapshot(out) == before
    assert _render(manifest, out, tiny_musicldm_dir, "--accelerate", "none", "--overwrite").exit_code == 0
    assert set(_statuses(out).values()) == {"rendered"}
    assert len(_read(out / "cue02.wav")) == int(0.64 * SAMPLE_RATE)


@pytest.mark.integration  # end to end through the command line
def test_batched_equals_unbatched_for_the_same_seeds(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    manifest = _write_manifest(
        tmp_path / "cues.jsonl", [*_rows(4), {**_rows(1)[0], "name": "neg", "negative_prompt": "x"}]
    )
    lsb = 1 / 32768  # the files are 16-bit
    for accelerate in ("none", "sada"):
        outs = {}
        for size in ("1", "4"):
            outs[size] = tmp_path / f"{accelerate}-{size}"
            assert (
                _render(
                    manifest, outs[size], tiny_musicldm_dir, "--batch-size", size, "--accelerate", accelerate
                ).exit_code
                == 0
            )
        index_1, index_4 = _index(outs["1"]), _index(outs["4"])
        for name in index_1:
            alone, batched = _read(outs["1"] / f"{name}.wav"), _read(outs["4"] / f"{name}.wav")
            # Without SADA a clip differs from itself alone only by float rounding (batched matrix products).
            # With SADA the step decisions pool over the batch: here (a random tiny model) they came out the
            # same, so the difference stays at rounding level too; in general only finiteness is guaranteed.
            assert np.abs(alone - batched).max() <= lsb
            assert index_1[name]["nfe"] == index_4[name]["nfe"]
        assert {entry["batch_size"] for entry in index_4.values()} == {4, 1}


def test_prompt_embedding_cache_is_exact(tiny_musicldm: DiffusionPipeline) -> None:
    settings = SamplingSettings(steps=4, duration=0.64)
    cache = PromptEmbeddingCache(tiny_musicldm)
    clips = [ClipRequest("slow piano", 1), ClipRequest("slow piano", 2, "noise"), ClipRequest("drums", 3)]
    for clip in clips:
        plain = generate_batch(tiny_musicldm, [clip], settings, accelerate=False)
        cached = generate_batch(tiny_musicldm, [clip], settings, accelerate=False, prompt_cache=cache)
        np.testing.assert_array_equal(plain.waveforms, cached.waveforms)
    assert len(cache) == 4  # "slow piano", "", "noise", "drums": each encoded once


def _failing_generate(real: Any) -> Any:
    """Fault injection around the real generate_batch: a call containing 'boom' runs out of memory, and the
    clip 'silence' comes back NaN (as a diverged sampler's would)."""

    def generate(pipe: Any, clips: list[ClipRequest], settings: SamplingSettings, **kwargs: Any) -> Any:
        if any("boom" in clip.prompt for clip in clips):
            raise torch.OutOfMemoryError("CPU out of memory (injected)")
        batch = real(pipe, clips, settings, **kwargs)
        for index, clip in enumerate(clips):
            if clip.prompt == "silence":
                batch.waveforms[index] = np.nan
        return batch

    return generate


def test_a_failing_clip_is_recorded_and_the_rest_render(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render_job, "generate_batch", _failing_generate(render_job.generate_batch))
    rows = [*_rows(2), {"name": "oom", "prompt": "boom"}, {"name": "nan", "prompt": "silence"}, *_rows(4)[2:]]
    rows.append({"name": "tiny", "prompt": "too short for the model", "duration": 0.001})
    manifest = _write_manifest(tmp_path / "cues.jsonl", rows)
    out = tmp_path / "out"
    result = _render(manifest, out, tiny_musicldm_dir, "--batch-size", "3")
    assert result.exit_code == 1, result.output
    assert "Rendered 4 clips" in result.stdout and "3 failed" in result.stdout
    index = _index(out)
    assert _statuses(out) == {
        "cue00": "rendered",
        "cue01": "rendered",
        "oom": "failed",
        "nan": "failed",
        "cue02": "rendered",
        "cue03": "rendered",
        "tiny": "failed",
    }
    assert index["oom"]["error"].startswith("OutOfMemoryError: CPU out of memory")
    assert "NaN" in index["nan"]["error"] and "audio_length_in_s" in index["tiny"]["error"]
    assert not any(path.name.startswith(("oom.", "nan.", "tiny.")) for path in out.iterdir())
    # the batch with the out-of-memory clip was rendered again clip by clip
    assert index["cue00"]["batch_size"] == 1 and index["cue03"]["batch_size"] == 3

    monkeypatch.undo()
    rows = [row for row in rows if row["name"] not in ("oom", "nan", "tiny")]
    assert _render(_write_manifest(manifest, rows), out, tiny_musicldm_dir).exit_code == 0


def test_skip_invalid_renders_the_valid_rows(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [*_rows(2), {"name": "../escape", "prompt": "p"}, {"name": "cue00", "prompt": "again"}]
    manifest = _write_manifest(tmp_path / "cues.jsonl", rows)
    out = tmp_path / "out"

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("an invalid manifest must be refused before the model is loaded")

    monkeypatch.setattr(cli_common, "load_pipeline", no_load)
    refused = _render(manifest, out, tiny_musicldm_dir)
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("Error: ")
    assert "line 3: unsafe name '../escape'" in refused.stderr and "line 4: duplicate name 'cue00'" in refused.stderr
    assert not out.exists()

    monkeypatch.undo()
    result = _render(manifest, out, tiny_musicldm_dir, "--skip-invalid")
    assert result.exit_code == 1  # not every row rendered
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(entry["line"], entry["status"]) for entry in index] == [
        (1, "rendered"),
        (2, "rendered"),
        (3, "invalid"),
        (4, "invalid"),
    ]
    assert not (tmp_path / "escape.wav").exists()


def test_unusable_output_dir_is_one_line(tiny_musicldm_dir: Path, tmp_path: Path, read_only_dir: Path) -> None:
    manifest = _write_manifest(tmp_path / "cues.jsonl", _rows(1))
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    for out, message in ((read_only_dir, "is not writable"), (tmp_path / "a-file" / "out", "cannot create")):
        result = _render(manifest, out, tiny_musicldm_dir)
        assert result.exit_code == 2 and result.stderr.startswith("Error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------- interruption and processes


# ``python -c GATED_RENDER READY GATE AFTER ARGS...`` runs ``sada-audio ARGS...``, but after AFTER batches it
# writes a byte to the pipe READY and blocks reading the pipe GATE, where the test's signal finds it: the
# render cannot get further, and the test waits for that event instead of for some time.
GATED_RENDER = """
import os, signal, sys
from sada_audio.cli.main import main
from sada_audio.render import job

# Ctrl-C raises KeyboardInterrupt, as in a terminal (a test run as a background job starts with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)

ready, gate, after = (int(arg) for arg in sys.argv[1:4])
generate_batch, calls = job.generate_batch, []

def gated(*args, **kwargs):
    calls.append(None)
    if len(calls) > after:
        os.write(ready, b"!")
        os.read(gate, 1)
    return generate_batch(*args, **kwargs)

job.generate_batch = gated
main(args=sys.argv[4:], prog_name="sada-audio")
"""


def _complete_clips(out: Path) -> set[str]:
    return {path.stem for path in out.glob("*.json") if (out / f"{path.stem}.wav").exists()}


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_killed_run_leaves_no_partial_audio_and_resumes(tiny_musicldm_dir: Path, tmp_path: Path, signum: int) -> None:
    """Kill a render mid-run; every audio file left is complete, and the re-run renders exactly the rest."""
    count, done_first = 12, 3
    manifest = _write_manifest(tmp_path / "cues.jsonl", _rows(count))
    out = tmp_path / "out"
    args = ["render", str(manifest), "-o", str(out), "--model", str(tiny_musicldm_dir), "--steps", "12"]
    args += ["--duration", DURATION]
    ready_read, ready_write = os.pipe()
    gate_read, gate_write = os.pipe()
    unclosed = {ready_read, ready_write, gate_read, gate_write}
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", GATED_RENDER, str(ready_write), str(gate_read), str(done_first), *args],
            env=SUBPROCESS_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(ready_write, gate_read),
        )
        for fd in (ready_write, gate_read):  # the child's ends: only it may hold them
            os.close(fd)
            unclosed.remove(fd)
        try:
            # returns when the render reaches the gate, or empty when it exited before (the message says why)
            assert os.read(ready_read, 1) == b"!", process.communicate()
        finally:
            process.send_signal(signum)
        _, stderr = process.communicate()
    finally:
        for fd in unclosed:
            os.close(fd)
    assert process.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), stderr

    audio = sorted(out.glob("*.wav"))
    for path in audio:  # whatever was written is whole
        assert len(_read(path)) == int(0.64 * SAMPLE_RATE)
    if signum != signal.SIGKILL:  # unwound: no temporary file left either, and a hint to resume
        assert not list(out.glob(".*.tmp"))
        assert stderr.endswith("Interrupted: run the same command again to render the rest.\n")
    done_before = _complete_clips(out)
    assert done_before == {f"cue{i:02d}" for i in range(done_first)}
    sidecars = {name: (out / f"{name}.json").read_bytes() for name in done_before}

    result = _render(manifest, out, tiny_musicldm_dir, "--steps", "12")
    assert result.exit_code == 0, result.output
    statuses = _statuses(out)
    assert {name for name, status in statuses.items() if status == "skipped"} == done_before
    assert {name for name, status in statuses.items() if status == "rendered"} == {
        f"cue{i:02d}" for i in range(count)
    } - done_before
    assert {name: (out / f"{name}.json").read_bytes() for name in done_before} == sidecars  # none rendered twice
    assert not list(out.glob(".*.tmp")) and not list(out.glob("index.rank*"))


@pytest.mark.integration
def test_two_processes_under_accelerate_render_the_complete_set(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    rows = _rows(5) + _rows(2, steps=6)
    rows = [{**row, "name": f"r{i}"} for i, row in enumerate(rows)]
    manifest = _write_manifest(tmp_path / "cues.jsonl", rows)
    out = tmp_path / "out"
    # 'accelerate launch --cpu' starts one process unless MPI is set up; '--multi_gpu' starts torchrun, and
    # render joins its CPU processes in a gloo group.
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    # A port this test holds open for the whole run: accelerate finds it in use and lets torchrun pick and bind
    # its own rendezvous port (--standalone). A port found free and passed on could be taken in between.
    held = socket.create_server(("127.0.0.1", 0))
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(held.getsockname()[1])]
    argv = [
        *launch,
        "--no_python",
        str(SCRIPT),
        "render",
        str(manifest),
        "-o",
        str(out),
        "--model",
        str(tiny_musicldm_dir),
    ]
    argv += ["--steps", STEPS, "--duration", DURATION, "--batch-size", "2"]
    with held:
        done = subprocess.run(argv, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Rendered 7 clips" in done.stdout

    index = _index(out)
    assert list(index) == [f"r{i}" for i in range(7)] and {e["status"] for e in index.values()} == {"rendered"}
    by_rank = {rank: {name for name, e in index.items() if e["rank"] == rank} for rank in (0, 1)}
    assert by_rank[0] and by_rank[1] and by_rank[0].isdisjoint(by_rank[1])
    assert by_rank[0] | by_rank[1] == set(index)
    for name in index:
        assert json.loads((out / f"{name}.json").read_text())["rank"] == index[name]["rank"]
        _read(out / f"{name}.wav")
    assert not list(out.glob("index.rank*"))


# ---------------------------------------------------------------- render owns only what it made


def test_a_manifest_among_the_outputs_is_refused_and_kept(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("index.jsonl", "index.rank0.jsonl"):
        manifest = _write_manifest(out / name, _rows(2))
        text = manifest.read_text(encoding="utf-8")
        result = _render(manifest, out, tiny_musicldm_dir)
        assert result.exit_code == 2 and "is one of the files rendering into" in result.output
        assert manifest.read_text(encoding="utf-8") == text
        manifest.unlink()


def test_files_render_did_not_make_are_refused_unless_overwrite(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    manifest = _write_manifest(tmp_path / "two.jsonl", _rows(2))
    (out / "cue01.wav").write_text("precious", encoding="utf-8")
    (out / "cue01.json").write_text('{"mine": 1}', encoding="utf-8")
    (out / "index.jsonl").write_text("notes", encoding="utf-8")
    (out / "index.html").write_text("<html>my page</html>", encoding="utf-8")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = _render(manifest, out, tiny_musicldm_dir)
    assert result.exit_code == 2
    assert "4 files that render did not make" in result.output and "--overwrite" in result.output
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert _render(manifest, out, tiny_musicldm_dir, "--overwrite").exit_code == 0
    assert _statuses(out) == {"cue00": "rendered", "cue01": "rendered"}
    # what render made is render's own: a changed row is rendered again without --overwrite
    changed = _write_manifest(manifest, [{**row, "seed": 9} for row in _rows(2)])
    assert _render(changed, out, tiny_musicldm_dir).exit_code == 0
    assert _statuses(out) == {"cue00": "rendered", "cue01": "rendered"}


def test_a_symlink_is_never_written_through(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(1))
    for name in ("index.rank0.jsonl", "index.jsonl", "cue00.wav"):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        result = _render(manifest, out, tiny_musicldm_dir)
        assert result.exit_code == 2 and name in result.output
        assert _render(manifest, out, tiny_musicldm_dir, "--overwrite").exit_code == 0
        assert victim.read_text(encoding="utf-8") == "keep me"
        assert _statuses(out) == {"cue00": "rendered"}


def test_one_render_per_folder_at_a_time(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    from sada_audio.render.guard import FolderLock

    out = tmp_path / "out"
    out.mkdir()
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(1))
    other = FolderLock(out)
    other.acquire()
    try:
        result = _render(manifest, out, tiny_musicldm_dir)
        assert result.exit_code == 2
        assert f"another render (pid {os.getpid()} on" in result.output and "is writing to" in result.output
        assert sorted(path.name for path in out.iterdir()) == [".sada-audio-render.pid"]
    finally:
        other.release()
    assert _render(manifest, out, tiny_musicldm_dir).exit_code == 0
    assert sorted(path.name for path in out.iterdir()) == ["cue00.json", "cue00.wav", "index.html", "index.jsonl"]


def test_a_run_that_fails_before_rendering_leaves_nothing(tmp_path: Path) -> None:
    empty_model = tmp_path / "empty_dir"
    empty_model.mkdir()
    manifest = _write_manifest(tmp_path / "m.jsonl", _rows(1))
    out = tmp_path / "out"
    result = _render(manifest, out, empty_model)
    assert result.exit_code == 2
    assert not out.exists()


def test_duplicate_fields_and_columns_are_errors(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"name": "a", "prompt": "p", "seed": 1, "seed": 2}\n', encoding="utf-8")
    assert [str(problem) for problem in read_manifest(jsonl).problems] == ["line 1: the field 'seed' is given twice"]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("name,prompt,seed,seed\na,p,1,2\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="has the column 'seed' more than once"):
        read_manifest(csv_path)


def test_names_equal_after_unicode_normalisation_are_duplicates(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    manifest = read_manifest(
        _write_manifest(tmp_path / "m.jsonl", [{"name": composed, "prompt": "p"}, {"name": decomposed, "prompt": "q"}])
    )
    assert [row.name for row in manifest.rows] == [composed]
    assert "duplicate name" in manifest.problems[0].message


def test_a_long_list_of_problems_is_summarised(tmp_path: Path) -> None:
    rows = [{"name": f"../clip{i}", "prompt": "p"} for i in range(10_000)]
    manifest = read_manifest(_write_manifest(tmp_path / "m.jsonl", rows))
    with pytest.raises(ManifestError) as raised:
        manifest.check(skip_invalid=False)
    message = str(raised.value)
    assert message.startswith(f"{manifest.path} has 10000 invalid rows: line 1: unsafe name '../clip0'")
    assert "line 10: " in message and "line 11: " not in message and "and 9990 more problems" in message
    assert len(message) < 2_000


def test_long_rows_need_allow_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded the model"))
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"name": "long", "prompt": "p", "duration": 1000}])
    result = CliRunner().invoke(cli.main, ["render", str(manifest), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (
        "row 'long' (line 1): 1000 s is longer than the 120 s limit" in result.output
        and "--allow-long" in result.output
    )
    assert not (tmp_path / "out").exists()
