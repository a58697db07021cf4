"""Spectrogram-LPIPS: network shapes, every weight-loading path (weights built in the test), the distance's
properties and the scaling convention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sada_audio.evaluation import lpips as lpips_module
from sada_audio.evaluation.lpips import LPIPS, AlexNetFeatures, load_lpips, spectrogram_images, spectrogram_lpips
from sada_audio.evaluation.metrics import MetricUnavailableError


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty torch hub cache, and a download URL that cannot reach the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(lpips_module, "ALEXNET_URL", (tmp_path / "offline" / "alexnet-owt-7be5be79.pth").as_uri())
    yield tmp_path


def _torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random AlexNet state dict in torchvision's key layout, with (shrunken) classifier entries to ignore."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(value.shape, generator=generator) * 0.05
        for key, value in AlexNetFeatures().state_dict().items()
    }
    state["classifier.6.weight"] = torch.randn(10, 4, generator=generator)
    state["classifier.6.bias"] = torch.zeros(10)
    return state


@pytest.fixture
def backbone_file(tmp_path: Path) -> Path:
    path = tmp_path / "alexnet-random.pth"
    torch.save(_torchvision_state_dict(), path)
    return path


@pytest.fixture
def model(backbone_file: Path) -> LPIPS:
    return load_lpips(backbone=str(backbone_file))


def _spectrograms(seed: int, frames: int = 100) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5.0, 2.0, size=(64, frames)).astype(np.float32)


def test_alexnet_layout_and_shapes() -> None:
    net = AlexNetFeatures()
    assert sum(p.numel() for p in net.parameters()) == 2_469_696
    conv_keys = {k for k in net.state_dict() if k.endswith("weight")}
    assert conv_keys == {f"features.{i}.weight" for i in (0, 3, 6, 8, 10)}
    taps = net(torch.zeros(2, 3, 64, 200))
    assert [tuple(t.shape) for t in taps] == [
        (2, 64, 15, 49),
        (2, 192, 7, 24),
        (2, 384, 3, 11),
        (2, 256, 3, 11),
        (2, 256, 3, 11),
    ]


def test_loads_a_torchvision_file_and_ignores_the_classifier(backbone_file: Path, model: LPIPS) -> None:
    expected = torch.load(backbone_file, weights_only=True)
    assert torch.equal(model.net.features[3].weight, expected["features.3.weight"])
    assert not model.training
    # the default heads are LPIPS v0.1's, shipped with torchmetrics: non-negative weights
    assert [tuple(h.model[1].weight.shape) for h in model.heads.values()] == [
        (1, c, 1, 1) for c in (64, 192, 384, 256, 256)
    ]
    assert all((h.model[1].weight >= 0).all() and h.model[1].weight.sum() > 0 for h in model.heads.values())


def test_loads_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "alexnet.safetensors"
    state = _torchvision_state_dict(seed=1)
    save_file(state, path)
    assert torch.equal(load_lpips(backbone=str(path)).net.features[0].bias, state["features.0.bias"])


def test_default_source_is_the_torch_hub_cache(_isolated_hub: Path) -> None:
    with pytest.raises(MetricUnavailableError, match="cannot read the AlexNet backbone from file:.*offline"):
        load_lpips()
    cached = _isolated_hub / "torch-home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)  # the failed download made the folder
    state = _torchvision_state_dict(seed=2)
    torch.save(state, cached)
    assert torch.equal(load_lpips().net.features[10].weight, state["features.10.weight"])


def test_url_is_downloaded_into_the_hub_cache(_isolated_hub: Path, backbone_file: Path) -> None:
    model = load_lpips(backbone=backbone_file.as_uri())
    assert (_isolated_hub / "torch-home" / "hub" / "checkpoints" / backbone_file.name).is_file()
    assert torch.equal(model.net.features[6].weight, torch.load(backbone_file, weights_only=True)["features.6.weight"])


def test_user_heads_file(tmp_path: Path, backbone_file: Path) -> None:
    heads = {f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), 0.5) for i, c in enumerate((64, 192, 384, 256, 256))}
    path = tmp_path / "heads.pth"
    torch.save(heads, path)
    model = load_lpips(backbone=str(backbone_file), heads=str(path))
    assert torch.equal(model.heads["lin2"].model[1].weight, heads["lin2.model.1.weight"])


def test_unusable_weights_are_reported_in_one_line(tmp_path: Path, backbone_file: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(MetricUnavailableError, match="no such file"):
        load_lpips(backbone=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailableError, match="cannot read the AlexNet backbone"):
        load_lpips(backbone=str(garbage))
    wrong = tmp_path / "wrong.pth"
    state = _torchvision_state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 11, 11)
    torch.save(state, wrong)
    with pytest.raises(MetricUnavailableError, match="does not fit the AlexNet backbone") as info:
        load_lpips(backbone=str(wrong))
    assert "\n" not in str(info.value)
    with pytest.raises(MetricUnavailableError, match="does not fit the LPIPS linear heads"):
        load_lpips(backbone=str(backbone_file), heads=str(backbone_file))


def test_distance_properties(model: LPIPS) -> None:
    a, b = _spectrograms(0), _spectrograms(1)
    assert spectrogram_lpips(model, a, a) == 0.0
    ab, ba = spectrogram_lpips(model, a, b), spectrogram_lpips(model, b, a)
    assert ab > 0
    # symmetric on images (the spectrogram scaling uses the reference's range, so compare the network directly)
    x, y = torch.rand(1, 3, 64, 80) * 2 - 1, torch.rand(1, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        assert float(model(x, y)[0]) == pytest.approx(float(model(y, x)[0]), rel=1e-6)
    assert ba > 0


def test_distance_is_the_head_weighted_mean_of_unit_feature_differences(model: LPIPS) -> None:
    """Only the first head on, with weights 1: the distance is the spatial mean of the squared distance of
    the unit-normalised first-layer feature vectors."""
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for name, head in model.heads.items():
            head.model[1].weight.fill_(1.0 if name == "lin0" else 0.0)
        fx = model.net((x - model.shift) / model.scale)[0]
        fy = model.net((y - model.shift) / model.scale)[0]
        unit_x = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        unit_y = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        expected = (unit_x - unit_y).pow(2).sum(dim=1).mean()
        assert float(model(x, y)[0]) == pytest.approx(float(expected), rel=1e-5)
        # the heads are linear: doubling them doubles the distance
        model.heads["lin0"].model[1].weight.fill_(2.0)
        assert float(model(x, y)[0]) == pytest.approx(2 * float(expected), rel=1e-5)


def test_scaling_convention_uses_the_reference_range() -> None:
    reference = _spectrograms(0)
    test = reference * 1.5
    ref_image, test_image = spectrogram_images(reference, test)
    assert ref_image.shape == (1, 3, 64, 100)
    assert torch.equal(ref_image[:, 0], ref_image[:, 2])
    assert float(ref_image.min()) == -1.0 and float(ref_image.max()) == pytest.approx(1.0)
    low, high = reference.min(), reference.max()
    expected = np.clip(2 * (test - low) / (high - low) - 1, -1, 1)
    np.testing.assert_allclose(test_image[0, 1].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="constant"):
        spectrogram_images(np.zeros_like(reference), test)


def test_shape_mismatch(model: LPIPS) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        spectrogram_lpips(model, _spectrograms(0, 100), _spectrograms(1, 90))
