"""``sada-audio benchmark``: the bookkeeping (Pareto front, implied speedup, targets) on made-up numbers, and
the quick mode end to end once on the embedded model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from sada_audio import SADAConfig
from sada_audio.cli.main import main
from sada_audio.evaluation.benchmark import BenchmarkSettings, accelerators_for, pareto_front, summarise
from sada_audio.evaluation.benchmark_report import target_checks
from sada_audio.evaluation.step_costs import implied_speedup
from sada_audio.levels import resolve_sada_config


def test_pareto_front_keeps_only_undominated_points_sorted_by_speed():
    points = [(1.0, 40.0), (2.0, 30.0), (1.5, 29.0), (3.0, 20.0), (2.0, 30.0), (0.9, 50.0)]
    # (1.5, 29) is dominated by (2, 30); the two equal points dominate neither each other nor anything else
    assert pareto_front(points) == [5, 0, 1, 4, 3]


def test_implied_speedup_prices_each_step_kind():
    costs = {"full": 1.0, "skipped": 0.01, "pruned": 0.5}
    assert implied_speedup({"full": 50}, costs, baseline_full=1.0) == pytest.approx(1.0)
    assert implied_speedup({"full": 20, "skipped": 20, "pruned": 10}, costs, 1.0) == pytest.approx(50 / 25.2)
    # a method whose full step is slower than the baseline's (hooks) is charged for it
    assert implied_speedup({"full": 50}, {"full": 1.1}, 1.0) == pytest.approx(1 / 1.1)
    # fewer steps are priced against the baseline's 50, not against as many steps of the baseline
    assert implied_speedup({"full": 10}, {"full": 1.0}, 1.0, baseline_steps=50) == pytest.approx(5.0)


def _run(label: str, speedup: float, psnr: float | None, ssim: float = 0.9) -> dict:
    """One clip's record; ``psnr=None`` for the baseline, which has no fidelity against itself."""
    method, _, setting = label.partition(" ")
    record = {
        "scheduler": "ddim",
        "method": method,
        "setting": setting,
        "label": label,
        "wall_s": 1.0 / speedup,
        "speedup": speedup,
        "step_kinds": ["full"] * 4,
    }
    if psnr is not None:
        record["metrics"] = {"mel_psnr": psnr, "mel_ssim": ssim, "log_mel_l1": 0.1, "mr_stft": 0.5, "si_sdr": 1.0}
    return record


def test_summary_speedup_is_the_median_of_per_clip_ratios_and_dominance_is_reported():
    runs = [
        _run("baseline", 1.0, None),
        _run("SADA preset", 1.9, 33.0),
        _run("SADA preset", 2.1, 35.0),
        _run("SADA preset", 1.7, 31.0),
        _run("DeepCache 2", 1.6, 36.0),
        _run("DeepCache 5", 1.5, 30.0),
    ]
    summary = {e["label"]: e for e in summarise(runs)}
    sada = summary["SADA preset"]
    assert sada["speedup"] == pytest.approx(1.9)
    assert (sada["speedup_min"], sada["speedup_max"]) == (1.7, 2.1)
    assert sada["fidelity"]["mel_psnr"] == pytest.approx(33.0)
    assert "fidelity" not in summary["baseline"]
    assert sada["on_pareto_front"] and not sada["dominated_by"]
    assert summary["DeepCache 5"]["dominated_by"] == ["SADA preset", "DeepCache 2"]
    assert not summary["DeepCache 5"]["on_pareto_front"]


def test_targets_compare_sada_with_deepcache_at_the_closest_speedup():
    runs = [_run("baseline", 1.0, None), _run("SADA preset", 1.85, 33.0, 0.97)]
    runs += [_run("DeepCache 2", 1.6, 36.0, 0.98), _run("DeepCache 3", 2.0, 32.0, 0.96)]
    checks = target_checks({"quality": {"summary": summarise(runs)}, "step_costs": {}})
    met = {check["target"].split(" (")[0]: check["met"] for check in checks}
    assert met["SADA speedup >= 1.8x"]
    # DeepCache 3 (2.0x) is closer to 1.85x than DeepCache 2 (1.6x)
    assert met["log-mel PSNR >= DeepCache 3"] and met["log-mel SSIM >= DeepCache 3"]
    assert met["SADA on the Pareto front, dominated by no peer"]


def test_bad_seeds_are_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["benchmark", "-o", str(tmp_path / "out"), "--seeds", "a,b"])
    assert result.exit_code == 2
    assert "comma-separated list of integers" in result.output


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("seed=1.5", "seed must be a whole number, got float 1.5"),
        ("acc_range=[10,49,3]", "acc_range must be 2 whole numbers"),
        ('tokenwise="no"', "tokenwise must be true or false"),
    ],
)
def test_bad_sada_variants_are_refused_before_loading(tmp_path, monkeypatch, variant, message):
    from sada_audio.cli import common

    monkeypatch.setattr(common, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded the model"))
    result = CliRunner().invoke(main, ["benchmark", "-o", str(tmp_path / "out"), "--sada-variant", variant])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: SADA overrides {variant!r}: ") and message in line
    assert not (tmp_path / "out").exists()


def test_fewer_steps_below_the_baseline_and_sada_on_shorter_bases(tiny_musicldm):
    settings = BenchmarkSettings(
        steps=20,
        methods=("sada", "steps"),
        sada_variants=("lagrange_int=3",),
        sada_steps=(12,),
        fewer_steps=(8, 20, 30),
    )
    methods, _ = accelerators_for(tiny_musicldm, settings)
    # counts at or above the baseline's are no peer of it; the preset and the variant also run on 12 steps
    assert [(m.label, m.steps) for m in methods if m.steps is not None] == [
        ("SADA (preset musicldm, 12 steps)", 12),
        ("SADA (lagrange_int=3, 12 steps)", 12),
        ("steps (8 steps)", 8),
    ]
    # the default level runs at its own 25 steps when the baseline has more, at the baseline's otherwise
    assert ("SADA (level default)", None) in [(m.label, m.steps) for m in methods]
    methods, _ = accelerators_for(tiny_musicldm, BenchmarkSettings(steps=50, methods=("sada",)))
    (level,) = [m for m in methods if m.setting.startswith("level")]
    assert (level.label, level.steps, level.config) == (
        "SADA (level default, 25 steps)",
        25,
        resolve_sada_config("musicldm"),
    )


@pytest.mark.parametrize(("value", "message"), [("8,x", "comma-separated list of integers"), ("0,8", ">= 1")])
def test_bad_step_counts_are_a_one_line_error(tmp_path, value, message):
    result = CliRunner().invoke(main, ["benchmark", "-o", str(tmp_path / "out"), "--fewer-steps", value])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_bad_seeds_outside_64_bits_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["benchmark", "-o", str(tmp_path / "out"), "--seeds", "0,-1"])
    assert result.exit_code == 2 and "seeds must be in 0..9223372036854775807" in result.output


def test_cuda_graphs_off_cuda_are_refused_before_loading(tmp_path, monkeypatch):
    from sada_audio.cli import common

    monkeypatch.setattr(common, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded the model"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["benchmark", "-o", str(out), "--compile", "reduce-overhead"])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert "reduce-overhead replays CUDA graphs and needs a CUDA device" in line
    assert not out.exists()


def test_unknown_method_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = CliRunner().invoke(main, ["benchmark", "-o", str(tmp_path / "out"), "--quick", "--methods", "tome2"])
    assert result.exit_code != 0
    assert "unknown method(s) tome2" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(main, ["benchmark", "-o", str(output), "--quick"], catch_exceptions=False)
    return output, result


@pytest.mark.integration  # a whole benchmark run through the command line
def test_quick_mode_writes_results_table_and_plot(quick_run):
    output, result = quick_run
    assert result.exit_code == 0, result.output
    results = json.loads((output / "results.json").read_text())
    summary = results["quality"]["summary"]
    labels = {e["label"] for e in summary}
    for family in ("baseline", "SADA", "DeepCache", "ToMe", "AdaptiveDiffusion"):
        assert any(label.startswith(family) for label in labels), (family, labels)
    assert {e["scheduler"] for e in summary} == {"ddim", "dpm++"}
    steps = results["settings"]["steps"]
    for entry in summary:
        assert sum(entry["step_kinds"].values()) == pytest.approx(entry["steps"])
        assert entry["speedup_min"] <= entry["speedup"] <= entry["speedup_max"]
    # the fewer-steps peer ran its own step count; every clip was also compared with the converged run
    (plain,) = [e for e in summary if e["method"] == "steps" and e["scheduler"] == "ddim"]
    assert plain["steps"] == 10 and plain["step_kinds"] == {"full": 10} and plain["label"] == "steps (10 steps)"
    assert all("fidelity_converged" in e for e in summary)
    assert all(e["fidelity_converged_worst_mel_psnr"] <= e["fidelity_converged"]["mel_psnr"] for e in summary)
    assert results["settings"]["converged_steps"] == 40
    sada = next(e for e in summary if e["label"] == "SADA (preset musicldm)" and e["scheduler"] == "ddim")
    assert sada["nfe"] < steps
    # distribution metrics of each method's set against the baseline's, from the kept clips
    assert all("set_metrics" in e for e in summary if e["method"] != "baseline")
    assert sada["set_metrics"]["fad"] >= 0 and sada["set_metrics"]["clap_score"]["clips"] == 2
    assert 20 < sada["fidelity"]["mel_psnr"] < 80
    assert any(e["on_pareto_front"] for e in summary if "fidelity" in e)
    # the step costs of every method that can run on the real-size UNet (here at a short latent)
    (bench,) = results["step_costs"].values()
    assert bench["entries"][0]["label"] == "baseline"
    assert all(cost > 0 for entry in bench["entries"] for cost in entry["costs"].values())
    # the fewer-steps peer is priced against the baseline's step count, not against as many baseline steps
    baseline_full = bench["entries"][0]["costs"]["full"]
    plain_costs = next(e for e in bench["entries"] if e["label"] == "steps (10 steps)")
    expected = steps * baseline_full / (10 * plain_costs["costs"]["full"])
    assert plain_costs["implied_speedup"]["ddim"] == pytest.approx(expected)
    assert (output / "speedup_fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (output / "results.md").read_text()
    assert "| ddim | SADA (preset musicldm) |" in report
    assert "## Targets" in report and "sada-audio benchmark" in report
    # the listening report: every clip kept, the representative clips' players point at them
    runs = results["quality"]["runs"]
    assert all(Path(run["audio"]).is_file() for run in runs)
    page = (output / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<audio class="\w+" controls preload="none" src="([^"]+)"', page)
    assert len(sources) == 2 * (len(summary) - 2)  # a pair per method but the baseline, on each sampler
    assert all((output / unquote(src)).is_file() for src in sources)
    # (the preset's accelerated steps are all skips or Lagrange anchors, which are never pruned, so its step-wise
    # + token-wise ablation prunes nothing; the token-wise-only one prunes)
    sada_clip = next(Path(run["audio"]) for run in runs if run["label"] == "SADA (token-wise only)")
    sidecar = json.loads(sada_clip.with_suffix(".json").read_text())
    pruned = sidecar["sada_stats"]["step_modes"].count("pruned")
    assert pruned > 0 and sidecar["sada_stats"]["sparsity_map"]["pruned_steps"] == pruned


@pytest.mark.integration  # a whole benchmark run through the command line
def test_quick_mode_refuses_to_overwrite_earlier_results(quick_run):
    output, _ = quick_run
    before = (output / "results.json").read_bytes()
    result = CliRunner().invoke(main, ["benchmark", "-o", str(output), "--quick"])
    assert result.exit_code != 0
    assert "--overwrite" in result.output
    assert (output / "results.json").read_bytes() == before


def test_methods_filter_and_sada_variants(tiny_musicldm):
    settings = BenchmarkSettings(methods=("sada",), sada_variants=("max_interval=6; max_lagrange_int=6",))
    methods, preset = accelerators_for(tiny_musicldm, settings)
    assert preset == "musicldm"
    assert [m.label for m in methods] == [
        "baseline",
        "SADA (preset musicldm)",
        "SADA (step-wise + token-wise)",
        "SADA (token-wise only)",
        "SADA (level default, 25 steps)",
        "SADA (max_interval=6; max_lagrange_int=6)",
    ]
    preset = SADAConfig.preset("musicldm")
    assert methods[2].config == preset.replace(tokenwise=True)
    # shallow steps are step-wise sparsity: off without it
    assert methods[3].config == preset.replace(stepwise=False, tokenwise=True, shallow="off")
    assert methods[-1].config == preset.replace(max_interval=6, max_lagrange_int=6)
    everything, _ = accelerators_for(tiny_musicldm, BenchmarkSettings())
    assert [(m.label, m.steps) for m in everything if m.name == "steps"] == [
        (f"steps ({n} steps)", n) for n in (8, 10, 12, 15, 18, 22, 25, 30)
    ]
    assert {"DeepCache", "ToMe", "PAB", "AdaptiveDiffusion", "First Block Cache"} <= {m.name for m in everything}


def test_converged_references_are_saved_and_a_resumed_run_takes_them(tiny_musicldm, tmp_path, monkeypatch):
    from sada_audio.evaluation import benchmark as benchmark_module
    from sada_audio.evaluation.benchmark import converged_references
    from sada_audio.evaluation.benchmark_checkpoint import BenchmarkProgress
    from sada_audio.generation import ClipRequest

    settings = BenchmarkSettings(steps=8, duration=0.64, converged_steps=12, prompts=("slow piano",), seeds=(0, 1))
    clips = [ClipRequest("slow piano", seed) for seed in settings.seeds]
    real_generate, calls = benchmark_module.generate_batch, []

    def counting(pipe, batch, sampling, accelerate):
        calls.append((batch[0].seed, sampling.steps, type(pipe.scheduler).__name__))
        return real_generate(pipe, batch, sampling, accelerate=accelerate)

    monkeypatch.setattr(benchmark_module, "generate_batch", counting)
    run = {"settings": settings.to_dict()}
    first = converged_references(tiny_musicldm, clips, settings, checkpoint=BenchmarkProgress.start(tmp_path, run))
    assert calls == [(0, 12, "DPMSolverMultistepScheduler"), (1, 12, "DPMSolverMultistepScheduler")]
    again = converged_references(tiny_musicldm, clips, settings, checkpoint=BenchmarkProgress.resume(tmp_path, run))
    assert len(calls) == 2  # nothing generated again
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert converged_references(tiny_musicldm, clips, BenchmarkSettings(converged_steps=None)) == []


def test_a_short_run_is_priced_at_a_step_inside_it():
    """``benchmark --steps 8`` used to fail in the step costs: the priced step (10) lay past the run's end."""
    from sada_audio.evaluation.accelerators import Baseline
    from sada_audio.evaluation.step_costs import unet_bench
    from tests.support.tiny_pipelines import _musicldm_unet

    bench = unet_bench(_musicldm_unet().eval(), frames=16, batch=1, steps=8, repeats=1)
    assert bench.step == 4 and len(bench.scheduler.timesteps) == 8
    assert Baseline().step_costs(bench)["full"] > 0
    assert unet_bench(_musicldm_unet().eval(), frames=16, batch=1, steps=50, repeats=1).step == 10
