"""``sada-audio render`` knows what made each clip: the resolved SADA config is part of a clip's request, so a
resumed render renders again exactly the clips made with other settings, and says how many."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sada_audio import SADAConfig
from sada_audio.cli import common as cli_common
from sada_audio.cli import main as cli
from sada_audio.config import PRESETS
from sada_audio.levels import DEFAULT_LEVEL, levels_for, resolve_sada_config
from sada_audio.render import RenderDefaults, RenderRun, changed_settings, plan_render, read_manifest

STEPS, DURATION = "8", "0.64"
PROMPTS = ["slow piano arpeggio", "fast techno drum groove", "rain on a tin roof", "ambient synth pads"]


def _manifest(path: Path, names: list[str]) -> Path:
    rows = [{"name": name, "prompt": PROMPTS[ord(name) % 4], "seed": ord(name)} for name in names]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _render(manifest: Path, out: Path, model: Path, *args: str) -> Result:
    argv = ["render", str(manifest), "-o", str(out), "--model", str(model), "--steps", STEPS, "--duration", DURATION]
    result = CliRunner().invoke(cli.main, [*argv, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _statuses(out: Path) -> dict[str, str]:
    lines = (out / "index.jsonl").read_text(encoding="utf-8").splitlines()
    return {entry["name"]: entry["status"] for entry in map(json.loads, lines)}


def _sidecar(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("nothing to render: the model must not be loaded")


def test_a_changed_preset_renders_again_exactly_the_clips_it_made(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, names = tmp_path / "out", ["a", "b", "c", "d"]
    new = resolve_sada_config("musicldm")
    old_preset = SADAConfig.preset("musicldm", lagrange_int=3, max_lagrange_int=5)
    old = old_preset.with_overrides(levels_for("musicldm")[DEFAULT_LEVEL].overrides)
    # a and b rendered by an older release whose preset differed, c and d by this one
    with monkeypatch.context() as patch:
        patch.setitem(PRESETS, "musicldm", old_preset)
        _render(_manifest(tmp_path / "ab.jsonl", names[:2]), out, tiny_musicldm_dir)
    assert _sidecar(out, "a")["render_request"]["sada_config"] == old.to_dict()
    _render(_manifest(tmp_path / "cd.jsonl", names[2:]), out, tiny_musicldm_dir)
    manifest = _manifest(tmp_path / "all.jsonl", names)
    rows = {row.name: row for row in read_manifest(manifest, RenderDefaults(steps=8, duration=0.64)).rows}
    before = {name: (out / f"{name}.wav").stat().st_mtime_ns for name in names}

    result = _render(manifest, out, tiny_musicldm_dir)
    assert _statuses(out) == {"a": "rendered", "b": "rendered", "c": "skipped", "d": "skipped"}
    assert "Rendering 2 clips again: their settings changed (sada_config: 2)" in result.stderr
    after = {name: (out / f"{name}.wav").stat().st_mtime_ns for name in names}
    assert [name for name in names if after[name] != before[name]] == ["a", "b"]
    for name in names:  # the sidecars record the config each clip ran with
        meta = _sidecar(out, name)
        assert meta["sada_config"] == meta["render_request"]["sada_config"] == new.to_dict()
        assert (meta["sada_level"], meta["sada_overrides"]) == ("default", "")
    model = str(tiny_musicldm_dir)
    sampler = _sidecar(out, "a")["render_request"]["sampler"]
    # the default level runs on UniPC: the request names it as --scheduler would
    run = RenderRun(model, model, "unipc", True, "cpu", "float32", sada_config=new.to_dict(), sampler=sampler)
    assert changed_settings(_sidecar(out, "a"), rows["a"], run) == []
    assert changed_settings(_sidecar(out, "a"), rows["a"], run.__class__(**{**run.__dict__, "sada_config": None})) == [
        "sada_config"
    ]

    # nothing changed: nothing is rendered and the model is not loaded
    monkeypatch.setattr(cli_common, "load_pipeline", _no_load)
    result = _render(manifest, out, tiny_musicldm_dir)
    assert set(_statuses(out).values()) == {"skipped"} and "again" not in result.stderr
    # a level is a setting too: every clip renders again (the model is needed now)
    monkeypatch.undo()
    result = _render(manifest, out, tiny_musicldm_dir, "--sada-level", "published")
    assert set(_statuses(out).values()) == {"rendered"}
    assert "Rendering 4 clips again: their settings changed (sada_config: 4, sampler: 4, scheduler: 4)" in result.stderr
    published = resolve_sada_config("musicldm", "published")
    assert _sidecar(out, "c")["sada_config"] == published.to_dict() and _sidecar(out, "c")["sada_level"] == "published"
    assert _sidecar(out, "c")["scheduler_class"] == "DDIMScheduler"  # the published level runs the model's own


def test_sidecars_from_before_the_config_was_requested_count_with_the_config_they_ran_with(
    tiny_musicldm_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "cues.jsonl", ["a", "b"])
    _render(manifest, out, tiny_musicldm_dir)
    # a as an earlier release wrote it: the request without the config, the config it ran with beside it
    meta = _sidecar(out, "a")
    del meta["render_request"]["sada_config"]
    (out / "a.json").write_text(json.dumps(meta), encoding="utf-8")
    meta = _sidecar(out, "b")
    del meta["render_request"]["sada_config"]
    meta["sada_config"] = SADAConfig.preset("musicldm", lagrange_int=3, max_lagrange_int=5).to_dict()
    (out / "b.json").write_text(json.dumps(meta), encoding="utf-8")
    rows = read_manifest(manifest, RenderDefaults(steps=8, duration=0.64)).rows
    run = RenderRun(
        str(tiny_musicldm_dir),
        str(tiny_musicldm_dir),
        "unipc",
        True,
        "cpu",
        "float32",
        sada_config=resolve_sada_config("musicldm").to_dict(),
        sampler=_sidecar(out, "a")["render_request"]["sampler"],
    )
    plan = plan_render(rows, run, out, batch_size=1)
    assert list(plan.done) == ["a"] and plan.changed == {"b": ["sada_config"]}


def test_the_sampler_is_part_of_the_request(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "cues.jsonl", ["a", "b", "c"])
    _render(manifest, out, tiny_musicldm_dir, "--scheduler", "dpm++")
    for name in ("a", "b", "c"):  # known before loading, the sampler is the one the clip ran with
        meta = _sidecar(out, name)
        assert meta["render_request"]["sampler"] == {"class": meta["scheduler_class"], **meta["scheduler_config"]}
        assert meta["render_request"]["sampler"]["class"] == "DPMSolverMultistepScheduler"
    # a: rendered by a release whose dpm++ spaced its timesteps otherwise; b: by one that did not record the
    # sampler in the request (it counts with the scheduler_config it recorded)
    meta = _sidecar(out, "a")
    meta["render_request"]["sampler"]["timestep_spacing"] = "an older spacing"
    (out / "a.json").write_text(json.dumps(meta), encoding="utf-8")
    meta = _sidecar(out, "b")
    del meta["render_request"]["sampler"]
    (out / "b.json").write_text(json.dumps(meta), encoding="utf-8")
    result = _render(manifest, out, tiny_musicldm_dir, "--scheduler", "dpm++")
    assert _statuses(out) == {"a": "rendered", "b": "skipped", "c": "skipped"}
    assert "Rendering 1 clip again: their settings changed (sampler: 1)" in result.stderr
    # another sampler is another request for every clip
    result = _render(manifest, out, tiny_musicldm_dir, "--scheduler", "ddim")
    assert set(_statuses(out).values()) == {"rendered"}
    assert "Rendering 3 clips again: their settings changed (sampler: 3, scheduler: 3)" in result.stderr


def test_a_model_in_the_local_hub_cache_is_resolved_without_loading(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from sada_audio.levels import family_of_model
    from sada_audio.pipelines import local_scheduler

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--sada-audio-tests--tiny-musicldm"
    (repo / "snapshots" / revision / "scheduler").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    for name in ("model_index.json", "scheduler/scheduler_config.json"):
        (repo / "snapshots" / revision / name).write_bytes((tiny_musicldm_dir / name).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert family_of_model("sada-audio-tests/tiny-musicldm") == "musicldm"
    scheduler = local_scheduler("sada-audio-tests/tiny-musicldm", "dpm++")
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert family_of_model("sada-audio-tests/not-cached") is None
    assert local_scheduler("sada-audio-tests/not-cached", None) is None
