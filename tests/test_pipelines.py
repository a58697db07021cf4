"""Tiny pipelines, scheduler choice, upstream repairs and ``load_pipeline`` (no network, no downloads)."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from huggingface_hub.errors import RepositoryNotFoundError

from sada_audio import pipelines
from sada_audio.choices import resolve_scheduler_name
from sada_audio.errors import ConfigError, ModelNotFoundError, SADAError
from sada_audio.pipelines import (
    MODEL_ALIASES,
    SCHEDULER_CHOICES,
    load_pipeline,
    parse_device,
    parse_dtype,
    repair_pipeline,
    resolve_model_id,
    set_scheduler,
)
from tests.support.tiny_pipelines import (
    LATENT_CHANNELS,
    SAMPLE_RATE,
    real_size_audioldm_unet_config,
    tiny_audioldm2_pipeline,
    tiny_audioldm_pipeline,
    tiny_musicldm_pipeline,
)

PROMPT = "a calm piano melody"
SECONDS = 2.56
SAMPLES = int(SECONDS * SAMPLE_RATE)
BUILDERS = {
    "musicldm": tiny_musicldm_pipeline,
    "audioldm": tiny_audioldm_pipeline,
    "audioldm2": tiny_audioldm2_pipeline,
}
SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-karras": EulerDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "dpm++3m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


def generate(
    pipe: DiffusionPipeline,
    steps: int = 4,
    guidance: float = 2.5,
    seconds: float = SECONDS,
    seed: int = 0,
    **kwargs: object,
) -> np.ndarray:
    return pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        audio_length_in_s=seconds,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ).audios


def build(family: str, seed: int = 0, repair: bool = True) -> DiffusionPipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return BUILDERS[family](seed, repair=repair)


def state_digest(pipe: DiffusionPipeline) -> str:
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, value in component.state_dict().items():
                digest.update(f"{name}.{key}".encode())
                digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- tiny pipelines


@pytest.mark.integration
@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("scheduler", SCHEDULER_CHOICES)
def test_every_scheduler_runs_and_repeats_exactly(
    tiny_pipeline: DiffusionPipeline, scheduler: str, guidance: float
) -> None:
    set_scheduler(tiny_pipeline, scheduler)
    assert type(tiny_pipeline.scheduler) is SCHEDULER_CLASSES[scheduler]
    first = generate(tiny_pipeline, steps=4, guidance=guidance, seconds=1.28)
    second = generate(tiny_pipeline, steps=4, guidance=guidance, seconds=1.28)
    assert first.shape == (1, int(1.28 * SAMPLE_RATE))
    assert np.isfinite(first).all()
    assert 1e-4 < float(np.sqrt(np.mean(first**2))) < 1.0, "audio-like level expected"
    np.testing.assert_array_equal(first, second)


def test_guidance_and_seed_change_the_output(tiny_pipeline: DiffusionPipeline) -> None:
    base = generate(tiny_pipeline, steps=3)
    assert not np.array_equal(base, generate(tiny_pipeline, steps=3, guidance=1.0))
    assert not np.array_equal(base, generate(tiny_pipeline, steps=3, seed=1))


def test_tiny_pipelines_are_eval_float32_ddim(tiny_pipeline: DiffusionPipeline) -> None:
    modules = {k: v for k, v in tiny_pipeline.components.items() if isinstance(v, torch.nn.Module)}
    assert {"vae", "unet", "vocoder", "text_encoder"} <= set(modules)
    for name, module in modules.items():
        assert not any(m.training for m in module.modules()), f"{name} is in train mode"
        assert all(p.dtype == torch.float32 for p in module.parameters()), name
    assert type(tiny_pipeline.scheduler) is DDIMScheduler
    assert tiny_pipeline.scheduler.config.prediction_type == "epsilon"
    assert tiny_pipeline.vocoder.config.sampling_rate == SAMPLE_RATE


@pytest.mark.parametrize(
    ("seconds", "latent_frames"),
    [(SECONDS, 64), (1.0, 25), (0.36, 9)],  # 64 is the real models' shape; 25 and 9 are odd lengths
)
def test_latent_is_rectangular_and_odd_lengths_work(
    tiny_pipeline: DiffusionPipeline, seconds: float, latent_frames: int
) -> None:
    shapes: list[tuple[int, ...]] = []
    audio = generate(
        tiny_pipeline, steps=2, seconds=seconds, callback=lambda i, t, latents: shapes.append(tuple(latents.shape))
    )
    assert shapes[0] == (1, LATENT_CHANNELS, latent_frames, 16)  # time x frequency
    assert audio.shape == (1, int(seconds * SAMPLE_RATE))
    assert np.isfinite(audio).all()


@pytest.mark.parametrize("family", list(BUILDERS))
def test_builders_are_deterministic_and_keep_global_rng(family: str) -> None:
    rng = torch.random.get_rng_state()
    first, again, other = build(family, 0), build(family, 0), build(family, 1)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert state_digest(first) == state_digest(again)
    assert state_digest(first) != state_digest(other)


# Digests of the trained tokenizer models (not of the whole backend: calling a tokenizer changes its
# padding / truncation state). Run in this process and in a fresh one, started in the repository root (where
# tests.support is importable).
ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIGESTS = """
import hashlib, json, warnings
warnings.simplefilter("ignore")
from tests.support.tiny_pipelines import _roberta_tokenizer, _t5_tokenizer
DIGESTS = [
    hashlib.sha256(json.dumps(json.loads(t.backend_tokenizer.to_str())["model"]).encode()).hexdigest()
    for t in (_roberta_tokenizer(), _t5_tokenizer())
]
print(*DIGESTS)
"""


@pytest.mark.integration
def test_tokenizers_are_identical_in_a_fresh_process(capsys: pytest.CaptureFixture[str]) -> None:
    # tokenizers' UnigramTrainer gave different scores in every process; the T5 vocabulary is counted instead
    out = subprocess.run(
        [sys.executable, "-c", TOKENIZER_DIGESTS], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT
    )
    exec(TOKENIZER_DIGESTS, {})
    assert out.stdout.split() == capsys.readouterr().out.split()


def test_tokenizers_use_the_expected_special_ids(tiny_audioldm2: DiffusionPipeline) -> None:
    roberta, t5 = tiny_audioldm2.tokenizer, tiny_audioldm2.tokenizer_2
    assert roberta.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
    assert [t5.pad_token_id, t5.eos_token_id, t5.unk_token_id] == [0, 1, 2]
    text_config = tiny_audioldm2.text_encoder.config.text_config
    assert (text_config.bos_token_id, text_config.pad_token_id, text_config.eos_token_id) == (0, 1, 2)
    ids = roberta(PROMPT).input_ids
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert t5(PROMPT).input_ids[-1] == 1


# ------------------------------------------------------------------------------------------ upstream repairs


@pytest.mark.parametrize("family", ["musicldm", "audioldm2"])
def test_scoring_path_with_two_waveforms(
    family: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = request.getfixturevalue(f"tiny_{family}")
    scored: list[int] = []
    score = pipe.score_waveforms

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        scored.append(1)
        return score(*args, **kwargs)

    monkeypatch.setattr(pipe, "score_waveforms", spy)
    first = generate(pipe, steps=3, num_waveforms_per_prompt=2)
    second = generate(pipe, steps=3, num_waveforms_per_prompt=2)
    assert scored == [1, 1]
    assert first.shape == (2, SAMPLES) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_clap_features_are_projected_normalised_tensors(tiny_musicldm: DiffusionPipeline) -> None:
    clap = tiny_musicldm.text_encoder
    tokens = tiny_musicldm.tokenizer([PROMPT, "drums"], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = clap.get_text_features(tokens.input_ids, attention_mask=tokens.attention_mask)
        pooled = clap.text_model(tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        expected = F.normalize(clap.text_projection(pooled), dim=-1)
        waveform = np.random.default_rng(0).standard_normal((2, SAMPLES)).astype(np.float32) * 0.1
        features = tiny_musicldm.feature_extractor(list(waveform), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        audio = clap.get_audio_features(features.input_features)
    assert isinstance(text, torch.Tensor) and text.shape == (2, clap.config.projection_dim)
    torch.testing.assert_close(text, expected)
    assert isinstance(audio, torch.Tensor) and audio.shape == (2, clap.config.projection_dim)
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    ("family", "message"),
    [("musicldm", "has no attribute 'to'"), ("audioldm2", "_update_model_kwargs_for_generation")],
)
def test_unrepaired_pipelines_break_upstream(family: str, message: str) -> None:
    # Documents why repair_pipeline exists. If this starts failing, upstream fixed the bug: check whether
    # the repair is still needed.
    with pytest.raises(AttributeError, match=message):
        generate(build(family, repair=False), steps=1)


def test_repair_is_idempotent_and_survives_deepcopy() -> None:
    pipe = build("musicldm", repair=False)
    repair_pipeline(pipe)
    clap = pipe.text_encoder
    installed = {name: clap.__dict__[name] for name in ("get_text_features", "get_audio_features")}
    first = generate(pipe, steps=2)
    assert repair_pipeline(pipe) is pipe
    assert {name: clap.__dict__[name] for name in installed} == installed
    np.testing.assert_array_equal(first, generate(pipe, steps=2))
    # the installed methods are bound to their module, so a copy calls itself, not the original
    twin = copy.deepcopy(clap)
    assert twin.get_text_features.__self__ is twin


def test_repair_leaves_audioldm_alone() -> None:
    pipe = build("audioldm", repair=False)
    before = {name: dict(vars(c)) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    repair_pipeline(pipe)
    after = {name: dict(vars(c)) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert before.keys() == after.keys()
    assert all(before[name].keys() == after[name].keys() for name in before)


def test_audioldm2_cached_generation_matches_full_recompute(tiny_audioldm2: DiffusionPipeline) -> None:
    # The repaired bookkeeping carries GPT-2's KV cache between steps; recomputing the whole sequence at
    # every step without a cache must give the same states.
    lm = tiny_audioldm2.language_model
    embeds = torch.randn(2, 5, lm.config.n_embd, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]])
    with torch.no_grad():
        cached = tiny_audioldm2.generate_language_model(embeds, attention_mask=mask, max_new_tokens=4)
        states, full_mask = embeds, mask
        for _ in range(4):
            out = lm(inputs_embeds=states, attention_mask=full_mask, use_cache=False, output_hidden_states=True)
            states = torch.cat([states, out.hidden_states[-1][:, -1:]], dim=1)
            full_mask = torch.cat([full_mask, full_mask.new_ones((2, 1))], dim=1)
    torch.testing.assert_close(cached, states[:, -4:], atol=1e-5, rtol=1e-5)
    assert tiny_audioldm2.language_model.config.max_new_tokens == 8


# ------------------------------------------------------------------------------------------------ scheduler


def test_set_scheduler_keeps_training_config_and_resets_sigma_flags() -> None:
    holder = types.SimpleNamespace(
        scheduler=DDIMScheduler(
            beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", prediction_type="v_prediction"
        )
    )
    for name in ("euler-karras", "euler", "dpm++", "edm", "ddim"):
        set_scheduler(holder, name)  # type: ignore[arg-type]
        config = holder.scheduler.config
        assert type(holder.scheduler) is SCHEDULER_CLASSES[resolve_scheduler_name(name)]
        assert (config.prediction_type, config.beta_start, config.beta_end) == ("v_prediction", 0.0015, 0.0195)
        assert config.beta_schedule == "scaled_linear"
        if name != "ddim":
            assert config.use_karras_sigmas is (name in ("euler-karras", "edm")), name
    set_scheduler(holder, "DPM++")  # type: ignore[arg-type]
    assert holder.scheduler.config.algorithm_type == "dpmsolver++"
    assert holder.scheduler.config.solver_order == 2


def test_unknown_scheduler_lists_the_choices() -> None:
    holder = types.SimpleNamespace(scheduler=DDIMScheduler())
    with pytest.raises(ConfigError) as info:
        set_scheduler(holder, "heun")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and isinstance(info.value, SADAError)
    assert all(choice in str(info.value) for choice in SCHEDULER_CHOICES)
    assert type(holder.scheduler) is DDIMScheduler


# ------------------------------------------------------------------------------------------- load_pipeline


def test_load_pipeline_round_trip_is_bit_exact(tiny_pipeline: DiffusionPipeline, tmp_path: Path) -> None:
    tiny_pipeline.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(tiny_pipeline)
    assert state_digest(loaded) == state_digest(tiny_pipeline)
    # bit-exact thanks to re-homing memory-mapped weights (unaligned weights differ by ~1 ulp)
    np.testing.assert_array_equal(generate(loaded, steps=3), generate(tiny_pipeline, steps=3))


def test_load_pipeline_applies_dtype(tiny_audioldm: DiffusionPipeline, tmp_path: Path) -> None:
    tiny_audioldm.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path.as_posix(), dtype="bfloat16")
    for name, component in loaded.components.items():
        if isinstance(component, torch.nn.Module):
            assert component.dtype == torch.bfloat16, name
            assert not component.training, name


def test_resolve_model_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_id("musicldm") == "ucsd-reach/musicldm"
    assert resolve_model_id(" AudioLDM2 ") == "cvssp/audioldm2"
    assert {resolve_model_id(alias) for alias in MODEL_ALIASES} == set(MODEL_ALIASES.values())
    assert resolve_model_id("org/model") == "org/model"
    assert resolve_model_id(str(tmp_path)) == str(tmp_path)
    # a saved pipeline in a directory named like an alias wins over the alias
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audioldm").mkdir()
    assert resolve_model_id("audioldm") == "cvssp/audioldm-s-full-v2"
    (tmp_path / "audioldm" / "model_index.json").write_text("{}")
    assert resolve_model_id("audioldm") == "audioldm"


def _one_line_not_found(model: str, *fragments: str) -> str:
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(model)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_directory_is_not_found(tmp_path: Path) -> None:
    _one_line_not_found(str(tmp_path / "missing"), str(tmp_path / "missing"), "does not exist")
    _one_line_not_found("./no/such/model-dir", "./no/such/model-dir")
    (tmp_path / "weights.bin").write_bytes(b"")
    _one_line_not_found(str(tmp_path / "weights.bin"), "is a file")


def test_directory_without_model_index_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    _one_line_not_found(str(tmp_path), "model_index.json")


def test_bad_names_are_not_found() -> None:
    _one_line_not_found("a b", "'a b'", "valid Hub id")
    _one_line_not_found("  ", "empty")


@pytest.fixture
def no_hub_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(repo_id: str) -> str:
        raise AssertionError(f"the Hub was contacted for {repo_id}")

    monkeypatch.setattr(pipelines, "probe_hub", fail)


@pytest.mark.usefixtures("no_hub_probe")
def test_unknown_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: must still be honoured
    _one_line_not_found("sada-audio-tests/no-such-model", "sada-audio-tests/no-such-model", "HF_HUB_OFFLINE")
    message = _one_line_not_found("musicldmm", "musicldmm")
    assert "did you mean 'musicldm'" in message


@pytest.mark.parametrize(
    ("state", "fragment"),
    [("missing", "does not exist on the Hugging Face Hub"), ("unreachable", "Hub is unreachable"), ("gated", "gated")],
)
def test_online_hub_answers_become_one_line_errors(monkeypatch: pytest.MonkeyPatch, state: str, fragment: str) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pipelines, "probe_hub", lambda repo_id: state)
    _one_line_not_found("sada-audio-tests/no-such-model", "sada-audio-tests/no-such-model", fragment)


def test_probe_classifies_hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    class Missing(RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404")

    def answer(error: Exception | None) -> object:
        def model_info(self: object, repo_id: str, **kwargs: object) -> object:
            assert kwargs.get("timeout"), "the probe must bound its wait"
            if error is not None:
                raise error
            return object()

        return model_info

    for error, state in [
        (None, "ok"),
        (Missing(), "missing"),
        (ConnectionError("dns"), "unreachable"),
        (TimeoutError(), "unreachable"),
    ]:
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", answer(error))
        assert pipelines.probe_hub("org/model") == state


def test_parse_dtype_and_device() -> None:
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("fp16") is torch.float16
    assert parse_dtype("torch.bfloat16") is torch.bfloat16
    assert parse_dtype(torch.float16) is torch.float16
    assert parse_device("cpu") == torch.device("cpu")
    for bad in ("float64", "int8", torch.float64):
        with pytest.raises(ConfigError, match="float32, float16, bfloat16"):
            parse_dtype(bad)
    with pytest.raises(ConfigError, match="toaster"):
        parse_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            parse_device("cuda")


def test_load_pipeline_checks_device_and_dtype_first(tmp_path: Path) -> None:
    # before touching the (here missing) model
    with pytest.raises(ConfigError):
        load_pipeline(str(tmp_path / "missing"), device="toaster")
    with pytest.raises(ConfigError):
        load_pipeline(str(tmp_path / "missing"), dtype="float64")


# ------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_real_size_unet_config_builds() -> None:
    unet = UNet2DConditionModel(**real_size_audioldm_unet_config())
    params = sum(p.numel() for p in unet.parameters())
    assert 180e6 < params < 190e6, params


def test_an_alias_that_is_not_cached_offline_gets_no_did_you_mean_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline("musicldm")
    assert "ucsd-reach/musicldm" in str(info.value) and "did you mean" not in str(info.value)
