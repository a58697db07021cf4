"""The oracle study's command line (a research script): its prompt sets and the compare mode's seeds."""

import pytest

from sada_audio import SADAConfig
from sada_audio.evaluation.benchmark import BENCHMARK_PROMPTS
from sada_audio.evaluation.stability_oracle import REPORT_PROMPTS, TUNING_PROMPTS, compare_configs, main, prompt_set


def test_the_benchmark_prompts_are_held_out_from_the_tuning_sets():
    assert prompt_set("benchmark") == BENCHMARK_PROMPTS
    assert prompt_set("all") == (*TUNING_PROMPTS, *REPORT_PROMPTS)
    assert not set(BENCHMARK_PROMPTS) & set(prompt_set("all"))


def test_seeds_without_compare_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "analytic", "--seeds", "0,1"])
    assert exit_info.value.code == 2
    assert "--seeds needs --compare" in capsys.readouterr().err


@pytest.mark.integration  # two 50-step clips and their unaccelerated references on the embedded model
def test_compare_runs_every_prompt_with_every_seed():
    rows = compare_configs(BENCHMARK_PROMPTS[:1], "ddim", {"preset": SADAConfig.preset("musicldm")}, seeds=(0, 1))
    assert [(row["prompt"], row["seed"], row["variant"]) for row in rows] == [
        (BENCHMARK_PROMPTS[0], 0, "preset"),
        (BENCHMARK_PROMPTS[0], 1, "preset"),
    ]
    for row in rows:
        assert len(row["step_modes"]) == 50 and row["calls"] == 50 - row["step_modes"].count("s")
        assert 20 < row["mel_psnr"] < 80


def test_seeds_that_are_not_integers_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--compare", "preset=", "--seeds", "0,one"])
    assert exit_info.value.code == 2
    assert "seeds must be comma-separated integers, got '0,one'" in capsys.readouterr().err


def test_the_analytic_study_refuses_the_benchmark_prompts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "analytic", "--prompt-set", "benchmark"])
    assert exit_info.value.code == 2
    assert "--prompt-set benchmark names prompts" in capsys.readouterr().err
