"""Watching a pipeline's denoiser calls, for any accelerator: which calls make up a sampling step and a run
(:class:`StepClock`), and what kind of step each one was (:class:`StepKinds`). Which pipeline module is the
denoiser is :func:`sada_audio.models.denoiser_of`.

The peers (:mod:`.peers`) and AdaptiveDiffusion (:mod:`.adaptive_diffusion`) report their step kinds through
these; nothing here depends on a method.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["StepClock", "StepKinds"]


def _timestep_value(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("t"))
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0]) if timestep.numel() else None
    return float(timestep)


class StepClock:
    """Groups a pipeline's denoiser calls into sampling steps and sampling runs.

    A new run starts when the scheduler's ``timesteps`` tensor is a new object (``set_timesteps`` was
    called again); a new step starts when the timestep the denoiser gets changes. Calls with the same
    timestep belong to one step (e.g. separate conditional and unconditional calls).
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._timesteps: Any = None
        self._last_timestep: float | None = None
        self.step = -1
        self.call_in_step = 0
        self.timestep: float | None = None

    def tick(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Account for one denoiser call; True when it opens a new sampling run."""
        timesteps = getattr(self._pipe.scheduler, "timesteps", None)
        timestep = _timestep_value(args, kwargs)
        new_run = timesteps is not self._timesteps or self.step < 0
        if new_run:
            self._timesteps = timesteps
            self.step, self.call_in_step = 0, 0
        elif timestep != self._last_timestep or timestep is None:
            self.step, self.call_in_step = self.step + 1, 0
        else:
            self.call_in_step += 1
        self._last_timestep = self.timestep = timestep
        return new_run

    @property
    def progress(self) -> float:
        """Position of the current step in the run, 0 (first) to 1 (last)."""
        timesteps = getattr(self._pipe.scheduler, "timesteps", None)
        count = len(timesteps) if timesteps is not None else 0
        return self.step / max(count - 1, 1)


class StepKinds:
    """Kind of every sampling step of the last run; a step with several calls is ``"full"`` if any was."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.calls: list[str] = []

    def reset(self) -> None:
        self.kinds, self.calls = [], []

    def record(self, clock: StepClock, kind: str) -> None:
        self.calls.append(kind)
        if clock.call_in_step == 0 or not self.kinds:
            self.kinds.append(kind)
        elif kind == "full":
            self.kinds[-1] = "full"
