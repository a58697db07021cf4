"""Shared pytest fixtures.

The tiny pipelines are built once per session (about 0.1 s each, but many tests use them) and are SHARED:
a test that changes one (scheduler, hooks, attributes) must undo it -- or use ``tiny_pipeline``, which
restores the scheduler after each test.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AudioLDM2Pipeline, AudioLDMPipeline, DiffusionPipeline, MusicLDMPipeline

from tests.support.tiny_pipelines import tiny_audioldm2_pipeline, tiny_audioldm_pipeline, tiny_musicldm_pipeline

TINY_FAMILIES = ("musicldm", "audioldm", "audioldm2")


def _build(builder: Callable[[], DiffusionPipeline]) -> DiffusionPipeline:
    with warnings.catch_warnings():
        # diffusers warns on every construction of its deprecated MusicLDM / AudioLDM pipelines
        warnings.simplefilter("ignore", FutureWarning)
        return builder()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the whole run: faster for tiny models, and immune to oversubscription on a busy
    2-core machine (two threads spinning against other processes made a 0.3 s generation take up to 50 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_musicldm() -> MusicLDMPipeline:
    """Tiny random MusicLDM pipeline, repaired for transformers 5 (shared: restore what you change)."""
    return _build(tiny_musicldm_pipeline)


@pytest.fixture(scope="session")
def tiny_audioldm() -> AudioLDMPipeline:
    """Tiny random AudioLDM pipeline (shared: restore what you change)."""
    return _build(tiny_audioldm_pipeline)


@pytest.fixture(scope="session")
def tiny_audioldm2() -> AudioLDM2Pipeline:
    """Tiny random AudioLDM 2 pipeline, repaired for transformers 5 (shared: restore what you change)."""
    return _build(tiny_audioldm2_pipeline)


@pytest.fixture(scope="session")
def tiny_musicldm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_musicldm: MusicLDMPipeline) -> Path:
    """The tiny MusicLDM pipeline, saved once per session like a downloaded checkpoint (a ``--model PATH``)."""
    path = tmp_path_factory.mktemp("tiny-musicldm")
    tiny_musicldm.save_pretrained(path)
    return path


@pytest.fixture(params=TINY_FAMILIES)
def tiny_pipeline(request: pytest.FixtureRequest) -> Iterator[DiffusionPipeline]:
    """Each tiny pipeline in turn; its scheduler is put back after the test."""
    pipe = request.getfixturevalue(f"tiny_{request.param}")
    scheduler = pipe.scheduler
    yield pipe
    pipe.scheduler = scheduler


@pytest.fixture
def read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty directory without write permission -- also for root, who ignores permission bits, through
    an ``os.access`` that reports it unwritable."""
    path = tmp_path / "read-only"
    path.mkdir(mode=0o500)
    access = os.access

    def no_write_access(target: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(target) == path:
            return False
        return access(target, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", no_write_access)
    yield path
    path.chmod(0o700)
