"""``sada-audio benchmark`` survives being stopped: each finished block is saved at once, ``--resume`` runs only
the others and gives the results of an uninterrupted run (timings aside); argument errors need no torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sada_audio.cli.main import main
from sada_audio.evaluation import benchmark as benchmark_module
from sada_audio.evaluation.benchmark import BenchmarkSettings, accelerators_for, run_quality
from sada_audio.evaluation.benchmark_checkpoint import PROGRESS_DIR, BenchmarkProgress
from sada_audio.evaluation.step_costs import unet_bench
from tests.support.tiny_pipelines import _musicldm_unet

# what a timing decides; everything else in the results must come out the same
TIMINGS = {"wall_s", "speedup", "speedup_min", "speedup_max", "on_pareto_front", "dominated_by", "first_call_s"}


def _tiny_benches(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Two small step-cost workloads instead of the real-size UNet (two blocks of the step-cost part)."""

    def build(frames: int) -> Any:
        import torch

        torch.manual_seed(0)
        return unet_bench(_musicldm_unet().eval(), frames=frames, batch=1, steps=50, repeats=1)

    return {f"tiny UNet, {frames} frames": lambda frames=frames: build(frames) for frames in (16, 32)}


def _args(tiny_musicldm_dir: Path, out: Path, prompts: Path) -> list[str]:
    return [
        "benchmark",
        "-o",
        str(out),
        "--model",
        str(tiny_musicldm_dir),
        "--scheduler",
        "ddim",
        "--scheduler",
        "dpm++",
        "--steps",
        "8",
        "--duration",
        "0.64",
        "--prompts",
        str(prompts),
        "--seeds",
        "0",
        "--methods",
        "SADA",
    ]


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _table(out: Path) -> dict[str, Any]:
    """The results a timing does not decide: per clip and per method (the results table), the step costs' layout."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    runs = [{key: value for key, value in run.items() if key != "audio"} for run in results["quality"]["runs"]]
    costs = {name: [entry["label"] for entry in bench["entries"]] for name, bench in results["step_costs"].items()}
    return {
        "runs": _without_timings(runs),
        "summary": _without_timings(results["quality"]["summary"]),
        "step_costs": costs,
        "settings": results["settings"],
    }


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.integration  # three benchmark runs through the command line
def test_a_stopped_benchmark_resumes_to_the_results_of_an_uninterrupted_one(
    tiny_musicldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(benchmark_module, "real_size_benches", _tiny_benches)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("slow piano arpeggio\nfast drum groove\n", encoding="utf-8")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    _ok(CliRunner().invoke(main, _args(tiny_musicldm_dir, whole, prompts)))
    assert not (whole / PROGRESS_DIR).exists()  # removed once the results are written

    # stop the run right after its third block (ddim's two clips, dpm++'s first clip) is saved
    saves: list[str] = []
    real_save = BenchmarkProgress.save

    def save_then_stop(self: BenchmarkProgress, part: str, position: int, key: str, block: dict[str, Any]) -> None:
        real_save(self, part, position, key, block)
        saves.append(f"{part}/{key}")
        if len(saves) == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(BenchmarkProgress, "save", save_then_stop)
        result = CliRunner().invoke(main, _args(tiny_musicldm_dir, stopped, prompts))
    assert result.exit_code == 130, result.output
    assert "--resume" in result.stderr
    assert saves == ["ddim/clip 1", "ddim/clip 2", "dpm++/clip 1"]
    assert not (stopped / "results.json").exists()
    ddim_clips = sorted((stopped / "clips" / "ddim").rglob("*.flac"))
    before = {path: path.stat().st_mtime_ns for path in ddim_clips}

    # without --resume the stopped run is neither replaced nor continued
    refused = CliRunner().invoke(main, _args(tiny_musicldm_dir, stopped, prompts))
    assert refused.exit_code == 2 and "holds a stopped benchmark run: --resume continues it" in refused.stderr
    # another command line is refused before anything runs
    other = CliRunner().invoke(main, [*_args(tiny_musicldm_dir, stopped, prompts), "--resume", "--steps", "9"])
    assert other.exit_code == 2 and "other settings (settings.steps)" in other.stderr

    # resumed: the blocks saved are not run again (their clips untouched), the rest are
    ran: list[str] = []
    with monkeypatch.context() as patch:

        def save_and_count(self: BenchmarkProgress, part: str, position: int, key: str, block: dict[str, Any]) -> None:
            real_save(self, part, position, key, block)
            ran.append(f"{part}/{key}")

        patch.setattr(BenchmarkProgress, "save", save_and_count)
        _ok(CliRunner().invoke(main, [*_args(tiny_musicldm_dir, stopped, prompts), "--resume"]))
    assert ran == ["dpm++/clip 2", "step costs/tiny UNet, 16 frames", "step costs/tiny UNet, 32 frames"]
    assert {path: path.stat().st_mtime_ns for path in ddim_clips} == before
    assert not (stopped / PROGRESS_DIR).exists()
    assert _table(stopped) == _table(whole)
    assert len(_table(whole)["runs"]) == 2 * 2 * 5  # samplers x clips x (baseline and 4 SADA settings)


class _Stop(Exception):
    """The injected failure."""


@pytest.mark.parametrize("compile_mode", ["none", "default"], ids=["interleaved", "method by method"])
def test_run_quality_saves_each_block_and_resumes_without_running_it_again(
    tiny_musicldm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile_mode: str
) -> None:
    # "default" only switches to the method-by-method order here: the pipeline's denoiser is not compiled
    # no converged reference: its saving and resuming is tested by itself (tests/test_benchmark.py)
    settings = BenchmarkSettings(
        schedulers=("ddim",),
        steps=8,
        prompts=("slow piano", "fast drums"),
        seeds=(0,),
        duration=0.64,
        methods=("sada",),
        compile_mode=compile_mode,
        converged_steps=None,
    )
    methods, _ = accelerators_for(tiny_musicldm, settings)
    methods = methods[:3]  # the baseline and two SADA settings: three blocks method by method, two clip by clip
    whole = run_quality(tiny_musicldm, methods, settings)
    run = {"settings": settings.to_dict()}
    checkpoint = BenchmarkProgress.start(tmp_path / PROGRESS_DIR, run)
    real_save = BenchmarkProgress.save
    saved: list[str] = []

    def save_then_stop(self: BenchmarkProgress, part: str, position: int, key: str, block: dict[str, Any]) -> None:
        real_save(self, part, position, key, block)
        saved.append(key)
        if len(saved) == 1:
            raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(BenchmarkProgress, "save", save_then_stop)
        with pytest.raises(_Stop):
            run_quality(tiny_musicldm, methods, settings, checkpoint=checkpoint)
    generated: list[str] = []
    real_generate = benchmark_module._generate_attached

    def counting(pipe: Any, attachment: Any, clip: Any, sampling: Any) -> Any:
        generated.append(clip.prompt)
        return real_generate(pipe, attachment, clip, sampling)

    monkeypatch.setattr(benchmark_module, "_generate_attached", counting)
    resumed = run_quality(
        tiny_musicldm, methods, settings, checkpoint=BenchmarkProgress.resume(tmp_path / PROGRESS_DIR, run)
    )
    monkeypatch.undo()
    assert _without_timings(resumed) == _without_timings(whole)
    if compile_mode == "none":  # the first clip (every method on it) was saved: only the second runs, warm-ups aside
        assert saved == ["clip 1"] and generated.count("slow piano") == len(methods)  # the warm-up calls
        assert generated.count("fast drums") == len(methods)
    else:  # the baseline's block was saved: the other two methods run, each with its untimed first call
        assert saved == ["baseline"] and len(generated) == 2 * (1 + 2)


def test_resume_needs_a_stopped_run_and_excludes_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["benchmark", "-o", str(out), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr
    result = CliRunner().invoke(main, ["benchmark", "-o", str(out), "--resume", "--overwrite"])
    assert result.exit_code == 2 and "pass one of them" in result.stderr


@pytest.mark.integration  # subprocesses
def test_argument_errors_answer_without_importing_torch(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("# no prompt\n", encoding="utf-8")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}", encoding="utf-8")
    (tmp_path / "stopped" / PROGRESS_DIR).mkdir(parents=True)
    calls = [
        ["-o", "file"],
        ["-o", "out", "--prompts", "empty.txt"],
        ["-o", "out", "--resume"],
        ["-o", "stopped", "--resume", "--overwrite"],
        ["-o", "stopped"],
        ["-o", "done"],
        ["-o", "out", "--preset", "nosuch"],
        ["-o", "out", "--sada-variant", "lagrange_int=1"],
        ["-o", "out", "--steps", "2"],
    ]
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from sada_audio.cli.main import main\n"
        f"calls = {calls!r}\n"
        "results = [CliRunner().invoke(main, ['benchmark', *args]) for args in calls]\n"
        "print([r.exit_code for r in results])\n"
        "print([len(r.stderr.splitlines()) for r in results])\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    codes, lines, heavy = result.stdout.strip().splitlines()
    assert codes == str([2] * len(calls))
    assert lines == str([1] * len(calls))
    assert heavy == "[]"
    assert not (tmp_path / "out").exists()


@pytest.mark.integration  # a subprocess killed with SIGKILL mid-run
def test_a_killed_benchmark_resumes(tiny_musicldm_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("slow piano arpeggio\nfast drum groove\n", encoding="utf-8")
    out = tmp_path / "out"
    # 12 steps: the step-cost bench times step 10
    args = [*_args(tiny_musicldm_dir, out, prompts)[1:], "--steps", "12", "--frames", "8", "--no-clips"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "sada-audio"), "benchmark", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    blocks = out / PROGRESS_DIR / "ddim"
    deadline = time.monotonic() + 600
    while not (blocks.is_dir() and any(blocks.glob("*.json"))) and process.poll() is None:
        assert time.monotonic() < deadline, "no block finished"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    # killed once a block was saved: the resume says how many of the sampler's blocks an earlier run finished
    assert "ddim (1/2), 5 methods, 1 of 2 blocks done before" in resumed.stderr or "2 of 2 blocks" in resumed.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(results["quality"]["runs"]) == 2 * 2 * 5  # samplers x clips x (baseline and 4 SADA settings)
