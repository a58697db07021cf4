"""The GPU whole-pipeline benchmark (tools/pipeline_wall_time.py), run on the CPU at tiny size."""

import warnings

import pytest
import torch

from tools.pipeline_wall_time import audio_pipeline, measure, parse_plan, table

# integration tier: whole-pipeline runs of a research script (tools/)
pytestmark = pytest.mark.integration


def _quiet(build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


def test_plan_parsing():
    assert parse_plan("none:1,8 reduce-overhead:1") == [("none", [1, 8]), ("reduce-overhead", [1])]
    with pytest.raises(SystemExit):
        parse_plan("fast:1")


def test_measure_times_every_setup_and_restores_the_unet():
    pipe = _quiet(lambda: audio_pipeline("tiny"))
    unet = pipe.unet
    rows = measure(
        pipe, parse_plan("none:1,2"), methods=("baseline", "SADA"), seconds=0.64, steps=12, repeats=1, log=str
    )
    assert [(row.batch, row.method) for row in rows] == [(1, "baseline"), (1, "SADA"), (2, "baseline"), (2, "SADA")]
    assert all(row.error is None and len(row.times_s) == 1 and row.first_call_s > 0 for row in rows)
    assert [row.model_calls for row in rows if row.method == "SADA"] == [8, 8]  # the preset's schedule at 12 steps
    assert pipe.unet is unet and not hasattr(unet, "_sada_handle")
    assert len(table(rows)) == 2 + len(rows)


def test_a_spent_budget_leaves_later_setups_unrun():
    pipe = _quiet(lambda: audio_pipeline("tiny"))
    rows = measure(pipe, parse_plan("none:1,2"), methods=("baseline",), seconds=0.64, steps=2, budget_s=0, log=str)
    assert all(row.error.startswith("not run") for row in rows)


def test_the_real_size_pipeline_runs():
    """The released architectures fit together (a short clip, two steps): what the GPU run relies on."""
    pipe = _quiet(lambda: audio_pipeline("real"))
    assert sum(p.numel() for p in pipe.unet.parameters()) > 180e6
    with torch.no_grad():
        audio = pipe("piano", num_inference_steps=2, audio_length_in_s=0.64, output_type="np").audios
    assert audio.shape[-1] == pytest.approx(0.64 * 16000, abs=320) and bool(
        torch.isfinite(torch.from_numpy(audio)).all()
    )
