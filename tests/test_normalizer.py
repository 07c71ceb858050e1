"""Normalizer: limits/gaussian fits, numpy and torch round trips, state dict and file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robolearn.data import Normalizer


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.uniform(-3, 5, (500, 4)).astype(np.float32)
    obs[:, 2] = 7.0  # a constant feature
    return {
        "obs": obs,
        "action": rng.standard_normal((50, 10, 2)).astype(np.float32) * 4 + 1,
        "reward": rng.uniform(0, 2, 500),
    }


def test_limits_maps_range_to_unit_interval(data: dict[str, np.ndarray]) -> None:
    norm = Normalizer.fit(data)
    assert norm.keys == ["action", "obs", "reward"]
    x = norm.normalize("obs", data["obs"])
    moving = [0, 1, 3]
    np.testing.assert_allclose(x[:, moving].min(axis=0), -1, atol=1e-6)
    np.testing.assert_allclose(x[:, moving].max(axis=0), 1, atol=1e-6)
    np.testing.assert_allclose(x[:, 2], 0)  # constant dim passes through, centred
    a = norm.normalize("action", data["action"])  # statistics over both leading dims
    assert a.shape == (50, 10, 2)
    np.testing.assert_allclose(a.reshape(-1, 2).min(0), -1, atol=1e-6)
    np.testing.assert_allclose(a.reshape(-1, 2).max(0), 1, atol=1e-6)
    r = norm.normalize("reward", data["reward"])
    assert r.shape == (500,) and r.dtype == np.float64
    assert r.min() == pytest.approx(-1) and r.max() == pytest.approx(1)


def test_gaussian_and_per_key_modes(data: dict[str, np.ndarray]) -> None:
    norm = Normalizer.fit(data, mode={"action": "gaussian"})
    assert norm.modes == {"obs": "limits", "action": "gaussian", "reward": "limits"}
    a = norm.normalize("action", data["action"]).reshape(-1, 2)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        Normalizer.fit(data, mode="minmax")
    with pytest.raises(KeyError, match="image"):
        norm.normalize("image", data["obs"])


def test_round_trip_numpy_and_torch(data: dict[str, np.ndarray]) -> None:
    norm = Normalizer.fit(data)
    for dtype in (np.float32, np.float64):
        x = data["obs"].astype(dtype)
        y = norm.normalize("obs", x)
        assert isinstance(y, np.ndarray) and y.dtype == dtype
        np.testing.assert_allclose(norm.unnormalize("obs", y), x, rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(data["action"])
    y = norm.normalize("action", t)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device == t.device
    np.testing.assert_allclose(y.numpy(), norm.normalize("action", data["action"]), atol=1e-6)
    back = norm.unnormalize("action", y)
    torch.testing.assert_close(back, t, rtol=1e-5, atol=1e-5)
    y64 = norm.normalize("action", t.double())
    assert y64.dtype == torch.float64


def test_state_dict_and_file_restore_exactly(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    norm = Normalizer.fit(data, mode={"reward": "gaussian"})
    state = norm.state_dict()
    assert set(state) >= {"obs/scale", "obs/offset", "obs/mode", "reward/mean"}
    restored = Normalizer.from_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}  # as it comes back from torch.load
    )
    path = tmp_path / "normalizer.safetensors"
    norm.save(path)
    loaded = Normalizer.load(path)
    for other in (restored, loaded):
        assert other.keys == norm.keys and other.modes == norm.modes
        for key in norm.keys:
            for stat, value in norm.stats(key).items():
                np.testing.assert_array_equal(other.stats(key)[stat], value)
            np.testing.assert_array_equal(
                other.normalize(key, data[key]), norm.normalize(key, data[key])
            )
