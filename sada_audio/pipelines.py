"""Loading audio diffusion pipelines: short names, device / dtype handling, scheduler choice, upstream fixes.

``load_pipeline`` accepts a short name (``musicldm``, ``audioldm``, ``audioldm2``), a Hugging Face Hub id or a
local directory written by ``save_pretrained``. It never hangs without network: a Hub id is first probed with a
short timeout; when the Hub cannot be reached (or ``HF_HUB_OFFLINE=1``) only the local cache is used, and a
model that is not there fails at once with a one-line :class:`~sada_audio.errors.ModelNotFoundError`.

``repair_pipeline`` patches, on the instances only, what transformers 5 broke in diffusers' audio pipelines (the
repairs live in :mod:`sada_audio._compat`, with the other uses of upstream internals):

* ``ClapModel.get_text_features`` / ``get_audio_features`` return an output object instead of the projected,
  L2-normalised embedding tensor; ``MusicLDMPipeline`` calls ``.to()`` on it and crashes. The wrapped methods
  return ``.pooler_output`` (which transformers 5 fills with exactly that tensor).
* ``GPT2Model`` is no longer a ``GenerationMixin``, so ``AudioLDM2Pipeline.generate_language_model`` fails on
  the missing ``_update_model_kwargs_for_generation``. The repair supplies that bookkeeping (carry the KV cache
  forward, extend the attention mask by one position per generated state).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from sada_audio._compat import repair_clap, repair_language_model
from sada_audio.choices import COMPILE_MODES, MODEL_ALIASES, SCHEDULER_CHOICES, resolve_scheduler_name
from sada_audio.errors import ConfigError, ModelNotFoundError
from sada_audio.models import model_adapter_for

__all__ = [
    "MODEL_ALIASES",
    "SCHEDULER_CHOICES",
    "resolve_model_id",
    "parse_dtype",
    "resolve_dtype",
    "compile_denoiser",
    "COMPILE_MODES",
    "parse_device",
    "load_pipeline",
    "repair_pipeline",
    "set_scheduler",
    "scheduler_from_config",
    "check_steps",
    "local_scheduler",
    "hub_offline",
    "looks_like_path",
    "probe_hub",
]

logger = logging.getLogger(__name__)


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Seconds to wait for the Hub before falling back to the local cache.
_HUB_PROBE_TIMEOUT_S = 10.0


def _one_line(text: object, limit: int = 200) -> str:
    """Collapse an upstream error message to one short line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def resolve_model_id(name: str) -> str:
    """Map a short name to its Hub id; anything else (a Hub id or a local directory) is returned unchanged.

    A local directory that holds a saved pipeline wins over an alias of the same name.
    """
    stripped = name.strip()
    key = stripped.lower()
    if key in MODEL_ALIASES and not (Path(stripped).expanduser() / "model_index.json").is_file():
        return MODEL_ALIASES[key]
    return stripped


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or fp32 / fp16 / bf16 / half) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ConfigError(f"unsupported dtype {dtype}; choose one of float32, float16, bfloat16")
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of float32, float16, bfloat16")
    return _DTYPES[key]


# Pipeline classes whose released checkpoints run in float16 (their model cards' own examples); the others
# (SDXL, whose VAE overflows in float16; Flux, trained in bfloat16; anything unknown) get bfloat16 on a GPU.
FLOAT16_SAFE_PIPELINES = frozenset(
    {
        "MusicLDMPipeline",
        "AudioLDMPipeline",
        "AudioLDM2Pipeline",
        "StableAudioPipeline",
        "StableDiffusionPipeline",
        "StableDiffusionControlNetPipeline",
    }
)
_ALIAS_PIPELINES = {
    "musicldm": "MusicLDMPipeline",
    "audioldm": "AudioLDMPipeline",
    "audioldm2": "AudioLDM2Pipeline",
    "tiny-musicldm": "MusicLDMPipeline",
}


def model_file(model: str, relative: str) -> Path | None:
    """The file ``relative`` (e.g. ``scheduler/scheduler_config.json``) of ``model``, where it is on disk: in a
    local pipeline folder (or the embedded model's), else in the local Hub cache; None otherwise. Never downloads."""
    local = Path(resolve_model_id(model)).expanduser() / relative
    if local.is_file() or looks_like_path(model.strip()):
        return local if local.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(resolve_model_id(model), relative)
    except ValueError:  # not a valid repository id
        return None
    return Path(cached) if isinstance(cached, str) else None


def pipeline_class_name(model: str) -> str | None:
    """The pipeline class ``model`` names, where known without a download: a short name (or its Hub id), or the
    ``model_index.json`` of a local folder or of the local Hub cache; None otherwise."""
    key = model.strip().lower()
    for alias, repo_id in MODEL_ALIASES.items():
        if key in (alias, repo_id.lower()):
            return _ALIAS_PIPELINES.get(alias)
    index = model_file(model, "model_index.json")
    if index is not None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    return None


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device, model: str) -> torch.dtype:
    """``dtype``, with ``"auto"`` resolved: float32 off CUDA; on CUDA float16 where ``model``'s family runs in
    float16 (``FLOAT16_SAFE_PIPELINES``), bfloat16 otherwise."""
    if str(dtype).strip().lower() != "auto":
        return parse_dtype(dtype)
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.float16 if pipeline_class_name(model) in FLOAT16_SAFE_PIPELINES else torch.bfloat16


def compile_denoiser(pipe: Any, mode: str) -> None:
    """Compile ``pipe``'s denoiser in place with ``torch.compile`` in ``mode`` (one of ``COMPILE_MODES``;
    ``"none"`` does nothing). Before or after ``apply_sada`` alike: SADA keeps its decisions out of the
    compiled region. ``"reduce-overhead"`` replays CUDA graphs and needs a CUDA device.

    Raises:
        ConfigError: unknown mode, or CUDA graphs asked for off CUDA.
    """
    if mode == "none" and mode in COMPILE_MODES:
        return
    denoiser = model_adapter_for(pipe).denoiser()
    check_compile_mode(mode, next(denoiser.parameters()).device)
    denoiser.compile(**({} if mode == "default" else {"mode": mode}))


def check_compile_mode(mode: str, device: str | torch.device) -> None:
    """Raise ``ConfigError`` for an unknown compile mode, or for CUDA graphs off CUDA."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        raise ConfigError(f"compile mode reduce-overhead replays CUDA graphs and needs a CUDA device, not {device}")


def parse_device(device: str | torch.device) -> torch.device:
    """Check that a device string names a device that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"unknown device {device!r}; use e.g. cpu, cuda, cuda:0 or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda[:N] or mps")
    return dev


def _did_you_mean(name: str) -> str:
    key = name.strip().lower()
    close = difflib.get_close_matches(key, list(MODEL_ALIASES), n=1)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != key else ""


def looks_like_path(ref: str) -> bool:
    """True for references that can only be file-system paths (Hub ids are ``name`` or ``org/name``)."""
    return ref.startswith((".", "~", os.sep)) or os.path.isabs(ref) or "\\" in ref or ref.count("/") > 1


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment again so that setting it
    # later (tests, notebooks) is honoured too.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def probe_hub(repo_id: str) -> str:
    """Ask the Hub about ``repo_id`` with a short timeout: ``"ok"``, ``"missing"``, ``"gated"`` or ``"unreachable"``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=_HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return "gated"
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return "missing"
    except Exception as err:  # any transport failure (DNS, refused, timeout, 5xx) counts as offline
        logger.info("Hugging Face Hub unreachable (%s); using the local cache only", _one_line(err))
        return "unreachable"
    return "ok"


def _from_pretrained(ref: str, dtype: torch.dtype, local_only: bool) -> DiffusionPipeline:
    # use_safetensors=None: prefer .safetensors, fall back to .bin where a repository has no safetensors
    # (diffusers then loads with weights_only). trust_remote_code stays off: only library classes load.
    return DiffusionPipeline.from_pretrained(
        ref,
        dtype=dtype,  # diffusers 0.42 deprecates ``torch_dtype`` in favour of ``dtype``
        local_files_only=local_only,
        use_safetensors=None,
        trust_remote_code=False,
    )


def _import_own_components(directory: Path) -> None:
    """Import the sada_audio modules that ``model_index.json`` names as component libraries.

    diffusers resolves a component class from outside its known libraries only from ``sys.modules`` (importing
    a name read from a file would run arbitrary code); modules of this package are safe to import.
    """
    try:
        index = json.loads((directory / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # diffusers reports an unreadable index itself
    for value in index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("sada_audio."):
            try:
                importlib.import_module(value[0])
            except ImportError:
                continue  # diffusers then says which component it cannot find


def _load_local(path: str, dtype: torch.dtype) -> DiffusionPipeline:
    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ModelNotFoundError(f"{path!r} is a file, not a pipeline directory (one with model_index.json)")
    if not directory.is_dir():
        raise ModelNotFoundError(
            f"model directory {path!r} does not exist; pass a saved pipeline directory, a Hub id or one of "
            f"{', '.join(MODEL_ALIASES)}"
        )
    if not (directory / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"{path!r} has no model_index.json, so it is not a diffusers pipeline directory "
            "(save one with pipe.save_pretrained(dir))"
        )
    _import_own_components(directory)
    try:
        return _from_pretrained(str(directory), dtype, local_only=True)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"cannot load the pipeline in {path!r}: {_one_line(err)}") from err


def _load_hub(name: str, repo_id: str, dtype: torch.dtype) -> DiffusionPipeline:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ModelNotFoundError(
            f"{name!r} is neither a local directory nor a valid Hub id; use a saved pipeline directory, "
            f"an id like org/name or one of {', '.join(MODEL_ALIASES)}"
        ) from err

    state = "unreachable" if hub_offline() else probe_hub(repo_id)
    if state == "missing":
        raise ModelNotFoundError(
            f"model {repo_id!r} does not exist on the Hugging Face Hub{_did_you_mean(name) or ' (misspelt?)'}; "
            f"short names: {', '.join(MODEL_ALIASES)}"
        )
    if state == "gated":
        raise ModelNotFoundError(
            f"model {repo_id!r} is gated: accept its terms on huggingface.co and log in with `hf auth login`"
        )
    local_only = state == "unreachable"
    try:
        return _from_pretrained(repo_id, dtype, local_only=local_only)
    except (OSError, ValueError) as err:
        if local_only:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub is unreachable"
            raise ModelNotFoundError(
                f"model {repo_id!r}{_did_you_mean(name)} is not in the local Hugging Face cache and {why}; "
                f"download it once with network access (`hf download {repo_id}`) or pass a local pipeline "
                "directory"
            ) from err
        raise ModelNotFoundError(f"cannot load model {repo_id!r}: {_one_line(err)}") from err


def _own_aligned_memory(module: torch.nn.Module) -> int:
    """Copy CPU tensors that sit at unaligned addresses into fresh (64-byte aligned) memory.

    Weights memory-mapped from ``.safetensors`` files start at arbitrary offsets; CPU matmul kernels take
    other code paths on unaligned data, so a loaded pipeline differed from the in-memory one it was saved
    from by ~1 ulp (waveform differences ~3e-8). Re-homing them makes loading bit-reproducible.
    """
    moved = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
            moved += 1
    return moved


def _move(pipe: DiffusionPipeline, device: torch.device, dtype: torch.dtype) -> None:
    """Put every module on ``device``, check that it is in ``dtype`` and in eval mode."""
    # The dtype was applied by from_pretrained, which keeps modules' float32 exceptions (e.g. T5's ``wo``
    # in float16); a dtype here would cast those too (and diffusers warns about it). Beware: diffusers
    # silently ignores ``pipe.to(torch_dtype=...)``, hence the check below.
    pipe.to(device)
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        component.eval()
        params = [p for p in component.parameters() if p.is_floating_point()]
        if not params:
            continue
        # judge by the majority of parameters, because of the float32 exceptions above
        wrong = sum(p.numel() for p in params if p.dtype != dtype)
        if wrong * 2 > sum(p.numel() for p in params):
            logger.warning("%s was loaded in %s; casting it to %s", name, params[0].dtype, dtype)
            component.to(dtype)
        if any(p.device.type != device.type for p in params):
            component.to(device)
        if device.type == "cpu":
            _own_aligned_memory(component)


def load_pipeline(
    model: str, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
) -> DiffusionPipeline:
    """Load a pipeline by short name, Hub id or local directory, on ``device`` in ``dtype``, repaired.

    Raises:
        ModelNotFoundError: the name cannot be resolved (missing directory, no ``model_index.json``,
            unknown Hub id, or not cached while offline).
        ConfigError: ``device`` or ``dtype`` is unknown or unavailable here.
    """
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype)
    if torch_device.type == "cpu" and torch_dtype != torch.float32:
        logger.warning("%s on CPU works but is much slower than float32", torch_dtype)
    ref = resolve_model_id(model)
    if not ref:
        raise ModelNotFoundError("empty model name; pass a short name, a Hub id or a local directory")
    is_local = Path(ref).expanduser().exists() or looks_like_path(ref)
    logger.info("loading %s (%s) on %s as %s", model, ref, torch_device, torch_dtype)
    pipe = _load_local(ref, torch_dtype) if is_local else _load_hub(model, ref, torch_dtype)
    _move(pipe, torch_device, torch_dtype)
    return repair_pipeline(pipe)


def repair_pipeline(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Patch, in place and idempotently, what current transformers broke in the audio pipelines.

    Returns the same pipeline object. Only instances are touched, never library classes.
    """
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if hasattr(type(component), "get_text_features") and repair_clap(component):
            logger.debug("repaired CLAP feature methods of %s", name)
        if name == "language_model" and repair_language_model(component):
            logger.debug("repaired generation bookkeeping of %s", name)
    return pipe


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` by the named sampler, built from the current scheduler's config
    (:func:`scheduler_from_config`)."""
    pipe.scheduler = scheduler_from_config(pipe.scheduler.config, name)


def scheduler_from_config(config: Any, name: str) -> Any:
    """The named sampler, built from a scheduler's config.

    ``ddim``: DDIM. ``euler``: Euler. ``euler-karras`` (alias ``edm``): Euler on the EDM (Karras) sigma schedule
    -- the EDM-style sampler for VP-trained models such as MusicLDM (diffusers' ``EDMEulerScheduler`` expects
    EDM-trained models and is not offered). ``dpm++``: 2nd-order multistep DPM-Solver++ (DPM++ 2M). ``dpm++3m``:
    its 3rd-order variant. ``unipc``: UniPC (2nd-order predictor-corrector, B(h) = bh2), the other solver made
    for few steps.

    Every choice uses ``"trailing"`` timestep spacing, so that every step count starts at the end of the
    training schedule: with the released configs' ``"leading"`` spacing each step count starts at another noise
    level, so a run with fewer or more steps is not the same trajectory sampled more coarsely or finely
    (BENCHMARKS.md, "Fair fewer-steps peers"). The training schedule (betas), ``prediction_type`` and other
    explicitly configured values are kept; values the current config only has as defaults become the new
    scheduler's own defaults, as diffusers' ``from_config`` does.

    Raises:
        ConfigError: ``name`` is not one of :data:`SCHEDULER_CHOICES` or their aliases (the message lists them).
    """
    key = resolve_scheduler_name(name)
    # The sigma-schedule flags are set explicitly for every choice, so that switching from "euler-karras" back to
    # "euler" (whose config then carries use_karras_sigmas=True) really gives plain Euler.
    common = {
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_spacing": "trailing",
    }
    if key == "ddim":
        scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    elif key == "euler":
        scheduler = EulerDiscreteScheduler.from_config(config, **common)
    elif key == "euler-karras":
        scheduler = EulerDiscreteScheduler.from_config(config, **{**common, "use_karras_sigmas": True})
    elif key in ("dpm++", "dpm++3m"):
        order = 3 if key == "dpm++3m" else 2
        scheduler = DPMSolverMultistepScheduler.from_config(
            config, **common, algorithm_type="dpmsolver++", solver_order=order
        )
    elif key == "unipc":
        scheduler = UniPCMultistepScheduler.from_config(
            config, **common, solver_order=2, predict_x0=True, solver_type="bh2", disable_corrector=[]
        )
    else:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_CHOICES)}")
    return scheduler


def check_steps(scheduler: Any, steps: int) -> None:
    """Check that ``scheduler`` can run ``steps`` steps: every timestep it would visit lies inside its training
    schedule (past that, diffusers' schedulers index out of range or repeat timesteps). ``scheduler`` is not
    touched: a fresh one is built from its config (a copy would carry wrappers, such as SADA's, bound to it).

    Raises:
        ConfigError: the steps do not fit; the message gives the training schedule's length.
    """
    trial = type(scheduler).from_config(scheduler.config)
    trained = trial.config.num_train_timesteps
    problem = None
    try:
        trial.set_timesteps(steps)
    except (ValueError, IndexError) as error:
        problem = _one_line(error)
    else:
        timesteps = trial.timesteps.float()
        if len(timesteps) != steps or timesteps.max() >= trained or len(set(timesteps.tolist())) != len(timesteps):
            problem = "its timesteps would leave the training schedule"
    if problem:
        raise ConfigError(
            f"{steps} steps do not fit {type(scheduler).__name__}, trained with {trained} timesteps ({problem}); "
            f"use fewer steps (e.g. {min(steps - 1, trained // 2)})"
        )


def local_scheduler(model: str, name: str | None) -> Any | None:
    """The scheduler a local pipeline directory (or the embedded model, or a model in the local Hub cache) would run
    with ``--scheduler name``, built from its config alone, without loading any weights; None for a Hub model not
    in the cache or an unreadable config."""
    config_path = model_file(model, "scheduler/scheduler_config.json")
    try:
        if config_path is None:
            return None
        config = json.loads(config_path.read_text(encoding="utf-8"))
        scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return scheduler if name is None else scheduler_from_config(scheduler.config, name)
