"""SADAConfig: validation, presets, serialisation, scaling of step indices."""

import pytest

from sada_audio import PRESETS, ConfigError, SADAConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"acc_range": (2, 40)}, "acc_range start must be >= 3"),
        ({"acc_range": (20, 20)}, "end > start"),
        ({"max_interval": 0}, "max_interval must be >= 1"),
        ({"lagrange_int": 1}, "lagrange_int must be >= 2"),
        ({"lagrange_term": 1}, "lagrange_term must be >= 2"),
        ({"sx": 0}, "sx and sy must be >= 1"),
        ({"sy": -1}, "sx and sy must be >= 1"),
        ({"max_downsample": -1}, "max_downsample must be >= 0"),
        ({"max_fix": -5}, "max_fix must be >= 0"),
        ({"reconstruction": "cache"}, "reconstruction must be one of extrapolate, reuse, predicted_state"),
        ({"reference_steps": 2}, "reference_steps must be None or >= 4"),
        ({"criterion": "momentum"}, "criterion must be one of consistent, published, data_change, got 'momentum'"),
        ({"change_threshold": 0.0}, "change_threshold must be > 0"),
        ({"lagrange_step": 5}, "lagrange_step must be >= acc_range start"),
        ({"anchor_tolerance": 0.0}, "anchor_tolerance must be None or > 0, got 0.0"),
        ({"lagrange_latest": 30}, "lagrange_latest and max_lagrange_int need an adaptive Lagrange phase"),
        ({"max_lagrange_int": 5}, "lagrange_latest and max_lagrange_int need an adaptive Lagrange phase"),
        ({"anchor_tolerance": 0.1, "lagrange_latest": 20}, r"lagrange_latest must be >= lagrange_step \(24\), got 20"),
        ({"anchor_tolerance": 0.1, "max_lagrange_int": 3}, r"max_lagrange_int must be >= lagrange_int \(4\), got 3"),
        ({"anchor_tolerance": 0.1, "max_lagrange_int": 6}, "max_lagrange_int must be <= max_interval \\+ 1 = 5, got 6"),
    ],
)
def test_invalid_values_are_rejected_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        SADAConfig(**changes)


def test_presets_and_overrides():
    assert {"musicldm", "audioldm", "audioldm2"} <= set(PRESETS)
    preset = SADAConfig.preset("MusicLDM", max_fix=16)
    assert preset.max_fix == 16 and preset.sy == PRESETS["musicldm"].sy
    with pytest.raises(ConfigError, match="unknown SADA preset 'sd9'; choose one of: audioldm, audioldm2"):
        SADAConfig.preset("sd9")
    with pytest.raises(ConfigError, match="max_interval"):
        SADAConfig.preset("audioldm", max_interval=0)


def test_dict_round_trip_and_unknown_keys():
    config = SADAConfig.preset("audioldm2", tokenwise=False, lagrange_step=None)
    assert SADAConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["acc_range"] == [3, 49]
    with pytest.raises(ConfigError, match="unknown SADA config keys: speed"):
        SADAConfig.from_dict({"speed": 2})


def test_overrides_from_a_command_line():
    config = SADAConfig.preset("musicldm")
    changed = config.with_overrides(" acc_range=[5, 48]; lagrange_step=null;tokenwise=false ; ")
    assert changed == config.replace(acc_range=(5, 48), lagrange_step=None, tokenwise=False)
    assert config.with_overrides("") == config
    for text, message in [
        ("speed=2", "unknown SADA config keys: speed"),
        ("lagrange_step", "is not key=value"),
        ("lagrange_step=six", "is not a JSON value"),
        ('lagrange_step="6"', "SADA overrides"),
        ("acc_range=[2, 40]", "acc_range start must be >= 3"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.with_overrides(text)


def test_step_indices_scale_with_the_number_of_steps():
    config = SADAConfig()
    assert config.bounds(50) == config.bounds(50).__class__(50, 10, 47, 24)
    short = config.bounds(25)
    assert (short.acc_start, short.acc_end, short.lagrange_step) == (5, 24, 12)
    adaptive = config.replace(anchor_tolerance=0.1, lagrange_latest=30).bounds(25)
    assert (adaptive.lagrange_step, adaptive.lagrange_latest) == (12, 15)
    tiny = config.bounds(8)
    assert tiny.acc_start == 3 and tiny.acc_end == 8 and tiny.lagrange_step >= tiny.acc_start
    absolute = SADAConfig(reference_steps=None).bounds(100)
    assert (absolute.acc_start, absolute.acc_end, absolute.lagrange_step) == (10, 47, 24)
    assert SADAConfig(lagrange_step=None).bounds(50).lagrange_step is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tokenwise": "no"}, "tokenwise must be true or false, got str 'no'"),
        ({"stepwise": 1}, "stepwise must be true or false, got int 1"),
        ({"max_interval": 2.5}, "max_interval must be a whole number, got float 2.5"),
        ({"sx": True}, "sx must be a whole number, got bool True"),
        ({"max_fix": 1e9}, "max_fix must be a whole number, got float"),
        ({"lagrange_step": "24"}, "lagrange_step must be a whole number, got str '24'"),
        ({"acc_range": (10, 49, 3)}, r"acc_range must be 2 whole numbers \(start, end\), got \(10, 49, 3\)"),
        ({"acc_range": [10, 49, 3]}, "acc_range must be 2 whole numbers"),  # a list is taken as a pair (issue 27)
        ({"acc_range": (10.0, 49)}, "acc_range item must be a whole number, got float 10.0"),
        ({"seed": -1}, "seed must be in 0..9223372036854775807, got -1"),
        ({"seed": 2**63}, "seed must be in 0..9223372036854775807"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"reconstruction": 3}, "reconstruction must be text, got int 3"),
        ({"anchor_tolerance": "0.1"}, "anchor_tolerance must be a number, got str '0.1'"),
        ({"change_threshold": True}, "change_threshold must be a number, got bool True"),
    ],
)
def test_types_are_checked_strictly_from_every_door(changes, message):
    preset = SADAConfig.preset("musicldm")
    with pytest.raises(ConfigError, match=message):
        SADAConfig(**changes)
    with pytest.raises(ConfigError, match=message):
        preset.replace(**changes)
    with pytest.raises(ConfigError, match=message):
        SADAConfig.preset("musicldm", **changes)
    if not isinstance(changes.get("acc_range"), list):  # JSON has no tuples: a list is how from_dict takes a range
        with pytest.raises(ConfigError, match=message):
            SADAConfig.from_dict({**preset.to_dict(), **changes})


def test_overrides_name_the_type_that_was_given():
    config = SADAConfig.preset("musicldm")
    for text, message in [
        ('tokenwise="no"', "tokenwise must be true or false, got str 'no'"),
        ("max_interval=2.5", "max_interval must be a whole number, got float 2.5"),
        ("seed=-1", "seed must be in 0..9223372036854775807"),
        ("sx=true", "sx must be a whole number, got bool True"),
        ("acc_range=[10, 49, 3]", "acc_range must be 2 whole numbers"),
    ]:
        with pytest.raises(ConfigError, match=message) as raised:
            config.with_overrides(text)
        assert str(raised.value).startswith(f"SADA overrides {text!r}: ")
    assert config.with_overrides("acc_range=[8, 49]; seed=9223372036854775807").seed == 2**63 - 1


@pytest.mark.parametrize(
    ("max_downsample", "latent_hw", "pruned_levels"),
    [
        # the published factor: SD-2's 1 = the full-resolution level only, SDXL's 2 = also the 2x level
        (1, (64, 64), [0]),
        (2, (128, 128), [0, 1]),
        (0, (64, 64), []),
        # the audio presets' 4 on a 128 x 16 spectrogram latent: levels 0-2 (factors 1, 2, 4), not 3 (8)
        (4, (128, 16), [0, 1, 2]),
        # odd sizes round up per level: 7 x 5 -> 4 x 3 (35 // 12 = 2, factor 2) -> 2 x 2 (35 // 4 = 8, factor 3)
        (2, (7, 5), [0, 1]),
        (3, (7, 5), [0, 1, 2]),
        # without the latent size a level is an exact halving
        (2, None, [0, 1]),
    ],
)
def test_max_downsample_is_the_published_downsampling_factor(max_downsample, latent_hw, pruned_levels):
    config = SADAConfig(max_downsample=max_downsample)
    assert [level for level in range(5) if config.prunes_level(level, latent_hw)] == pruned_levels
