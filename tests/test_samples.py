"""The runnable examples in samples/ work against a locally saved pipeline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# integration tier: the examples run as subprocesses
pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_accelerate_pipeline_example_runs_on_a_saved_pipeline(tiny_musicldm, tmp_path):
    model = tmp_path / "model"
    tiny_musicldm.save_pretrained(model)
    result = subprocess.run(
        [
            sys.executable,
            str(SAMPLES / "accelerate_pipeline.py"),
            str(model),
            "--steps",
            "30",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "model calls" in result.stdout
    assert (tmp_path / "out" / "sada.wav").stat().st_size > 0 and (tmp_path / "out" / "baseline.wav").exists()


def test_sample_prompts_are_non_empty_lines():
    prompts = (SAMPLES / "prompts.txt").read_text().splitlines()
    assert prompts and all(line.strip() for line in prompts)
