"""The names a user chooses from (model aliases, samplers, compile modes) and the names of what the commands
write: plain data, importable without torch, so that the command line can build its options and answer --help
and argument errors at once."""

from __future__ import annotations

from sada_audio.tiny import TINY_MUSICLDM_PATH

#: Short model names and the Hub ids (or the embedded model's folder) they stand for.
MODEL_ALIASES: dict[str, str] = {
    "musicldm": "ucsd-reach/musicldm",
    "audioldm": "cvssp/audioldm-s-full-v2",
    "audioldm2": "cvssp/audioldm2",
    # shipped inside the package: works offline, no download
    "tiny-musicldm": str(TINY_MUSICLDM_PATH),
}

#: ``--scheduler`` choices (see :func:`sada_audio.pipelines.scheduler_from_config`).
SCHEDULER_CHOICES: tuple[str, ...] = ("ddim", "euler", "euler-karras", "dpm++", "dpm++3m", "unipc")

#: Other names accepted for a sampler: ``edm`` was the first name of Euler on Karras sigmas (it is not diffusers'
#: ``EDMEulerScheduler``, which expects EDM-trained models).
SCHEDULER_ALIASES: dict[str, str] = {"edm": "euler-karras"}


def resolve_scheduler_name(name: str) -> str:
    """The ``--scheduler`` choice ``name`` stands for (case and surrounding spaces ignored; an alias resolved);
    an unknown name comes back as it is, for the caller to refuse."""
    key = name.strip().lower()
    return SCHEDULER_ALIASES.get(key, key)


#: ``--compile`` choices (see :func:`sada_audio.pipelines.compile_denoiser`).
COMPILE_MODES: tuple[str, ...] = ("none", "default", "max-autotune", "reduce-overhead")

#: Audio formats of rendered clips (a manifest row's ``format``).
CLIP_FORMATS: tuple[str, ...] = ("wav", "flac")

#: What ``sada-audio benchmark`` writes inside its output folder, by kind.
BENCHMARK_RESULT_FILES: dict[str, str] = {
    "json": "results.json",
    "markdown": "results.md",
    "plot": "speedup_fidelity.png",
    "html": "report.html",
}
#: Folder of the benchmark's quality-workload clips inside its output folder.
BENCHMARK_CLIPS_DIR = "clips"
