"""Shared pytest fixtures.

The tiny pipelines are built once per session (about 0.1 s each, but many tests use them) and lent to each test
(:class:`SharedPipelines`): the scheduler a test swapped in is put back after it, and a pipeline a test left a
hook, wrapper or SADA handle on is discarded -- that test fails, and the next one gets a freshly built pipeline.
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

from sada_audio._compat import HOOK_REGISTRY_ATTRIBUTE
from tests.support.tiny_pipelines import TINY_PIPELINES

TINY_FAMILIES = ("musicldm", "audioldm", "audioldm2")
_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {family: TINY_PIPELINES[family] for family in TINY_FAMILIES}
# What attaching a hook leaves on a module: diffusers' hook registry and the bound forward it wraps, a SADA handle.
_ATTACHMENT_ATTRIBUTES = (HOOK_REGISTRY_ATTRIBUTE, "_sada_handle", "forward")


def _build(builder: Callable[[], DiffusionPipeline]) -> DiffusionPipeline:
    with warnings.catch_warnings():
        # diffusers warns on every construction of its deprecated MusicLDM / AudioLDM pipelines
        warnings.simplefilter("ignore", FutureWarning)
        return builder()


def _attachments(pipe: DiffusionPipeline) -> set[tuple[str, str]]:
    """(module name, attribute) of every hook-like instance attribute on the pipeline's modules."""
    found = set()
    for component_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for name, module in component.named_modules(prefix=component_name):
            found.update((name, attribute) for attribute in _ATTACHMENT_ATTRIBUTES if attribute in vars(module))
    return found


class SharedPipelines:
    """The session's tiny pipelines, built on first use and lent to one test at a time."""

    def __init__(self) -> None:
        self._pipes: dict[str, DiffusionPipeline] = {}

    def lend(self, family: str) -> Iterator[DiffusionPipeline]:
        """Yield the shared pipeline; afterwards restore its scheduler, and discard it if the test left an
        attachment on it (then fail the test, which is where the leak happened)."""
        if family not in self._pipes:
            self._pipes[family] = _build(_BUILDERS[family])
        pipe = self._pipes[family]
        scheduler, before = pipe.scheduler, _attachments(pipe)
        yield pipe
        pipe.scheduler = scheduler
        left = _attachments(pipe) - before
        if left:
            del self._pipes[family]
            pytest.fail(f"the test left {sorted(left)} on the shared tiny {family} pipeline (discarded)")


@pytest.fixture(scope="session")
def shared_pipelines() -> SharedPipelines:
    return SharedPipelines()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the whole run: faster for tiny models, and immune to oversubscription on a busy
    2-core machine (two threads spinning against other processes made a 0.3 s generation take up to 50 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_musicldm(shared_pipelines: SharedPipelines) -> Iterator[MusicLDMPipeline]:
    """Tiny random MusicLDM pipeline, repaired for transformers 5 (shared; see :class:`SharedPipelines`)."""
    yield from shared_pipelines.lend("musicldm")


@pytest.fixture
def tiny_audioldm(shared_pipelines: SharedPipelines) -> Iterator[AudioLDMPipeline]:
    """Tiny random AudioLDM pipeline (shared; see :class:`SharedPipelines`)."""
    yield from shared_pipelines.lend("audioldm")


@pytest.fixture
def tiny_audioldm2(shared_pipelines: SharedPipelines) -> Iterator[AudioLDM2Pipeline]:
    """Tiny random AudioLDM 2 pipeline, repaired for transformers 5 (shared; see :class:`SharedPipelines`)."""
    yield from shared_pipelines.lend("audioldm2")


@pytest.fixture(scope="session")
def tiny_musicldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MusicLDM pipeline, saved once per session like a downloaded checkpoint (a ``--model PATH``)."""
    path = tmp_path_factory.mktemp("tiny-musicldm")
    _build(TINY_PIPELINES["musicldm"]).save_pretrained(path)
    return path


@pytest.fixture(params=TINY_FAMILIES)
def tiny_pipeline(request: pytest.FixtureRequest) -> DiffusionPipeline:
    """Each tiny pipeline in turn (shared; see :class:`SharedPipelines`)."""
    return request.getfixturevalue(f"tiny_{request.param}")


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
