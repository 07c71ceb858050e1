"""Diffusion policy: the DDIM sampler, multimodal fitting, the Policy API, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.algos.diffusion import (
    DiffusionConfig,
    DiffusionPolicy,
    NoiseSchedule,
    ObservationHistory,
    train_diffusion,
)
from robolearn.policy import load_policy
from robolearn.training import EMA
from tests.conftest import TINY_DIFFUSION as TINY


def bimodal_data(episodes: int = 200, length: int = 10, seed: int = 0):
    """Every episode commits to one of two actions, (+0.7, -0.7) or (-0.7, +0.7)."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (episodes * length, 2)).astype(np.float32)
    sign = np.repeat(rng.choice([-1.0, 1.0], episodes), length)
    action = (0.7 * np.stack([sign, -sign], 1)).astype(np.float32)
    ends = np.arange(1, episodes + 1) * length
    return {"obs": obs, "action": action}, ends


def test_ddim_matches_diffusers_step_for_step():
    diffusers = pytest.importorskip("diffusers")
    ours = NoiseSchedule(100, clip_sample=True)
    theirs = diffusers.DDIMScheduler(
        num_train_timesteps=100,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
    )
    theirs.set_timesteps(8)
    assert ours.ddim_timesteps(8) == theirs.timesteps.tolist()
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod)

    net = torch.nn.Linear(3, 3)
    torch.manual_seed(0)

    def denoise(x, t):
        return torch.tanh(net(x)) * (1 + t / 100)

    noise = torch.randn(5, 4, 3)
    with torch.no_grad():
        x = noise
        for t in theirs.timesteps:
            x = theirs.step(denoise(x, int(t)), t, x).prev_sample
        torch.testing.assert_close(ours.ddim_sample(denoise, noise, 8), x, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def bimodal_policy(tmp_path_factory) -> DiffusionPolicy:
    data, ends = bimodal_data()
    cfg = DiffusionConfig(**TINY, steps=1500, checkpoint_every=1500)
    return train_diffusion(
        data, ends, ["obs"], cfg, tmp_path_factory.mktemp("bimodal"), progress=False
    )


def test_ddim_is_deterministic_given_noise_and_differs_across_noise(bimodal_policy):
    obs = {"obs": np.zeros((64, 2), np.float32)}
    noise = np.random.default_rng(0).standard_normal((64, 4, 2)).astype(np.float32)
    bimodal_policy.reset(64)
    first = bimodal_policy.act_chunk(obs, noise)
    bimodal_policy.reset(64)
    again = bimodal_policy.act_chunk(obs, noise)
    np.testing.assert_array_equal(first, again)
    bimodal_policy.reset(64)
    other = bimodal_policy.act_chunk(obs, -noise)
    assert np.abs(first - other).max() > 0.5


def test_fits_both_modes_of_a_multimodal_dataset(bimodal_policy):
    bimodal_policy.reset(400)
    chunk = bimodal_policy.act_chunk({"obs": np.zeros((400, 2), np.float32)})
    first = chunk[:, 0]
    near_plus = np.linalg.norm(first - [0.7, -0.7], axis=1) < 0.25
    near_minus = np.linalg.norm(first - [-0.7, 0.7], axis=1) < 0.25
    # Both modes, in roughly the data's proportions, and little averaged in between (a
    # regressor would put every action at the mean, (0, 0), near neither mode).
    assert 0.25 < near_plus.mean() < 0.75 and 0.25 < near_minus.mean() < 0.75
    assert (near_plus | near_minus).mean() > 0.8
    # A chunk commits to one mode: its steps agree with each other.
    assert np.abs(chunk - chunk[:, :1]).max(axis=(1, 2)).mean() < 0.2


def test_checkpoint_round_trip(bimodal_policy, tmp_path):
    loaded = load_policy(bimodal_policy.save(tmp_path / "policy"))
    assert isinstance(loaded, DiffusionPolicy)
    obs = {"obs": np.random.default_rng(1).uniform(-1, 1, (8, 2)).astype(np.float32)}
    noise = np.random.default_rng(2).standard_normal((8, 4, 2)).astype(np.float32)
    bimodal_policy.reset(8)
    loaded.reset(8)
    expected = bimodal_policy.act_chunk(obs, noise)
    np.testing.assert_array_equal(loaded.act_chunk(obs, noise), expected)
    assert loaded.normalizer.keys == bimodal_policy.normalizer.keys


def test_act_replans_every_action_steps(bimodal_policy, monkeypatch):
    calls = []
    original = bimodal_policy.decode
    monkeypatch.setattr(
        bimodal_policy, "decode", lambda cond, noise=None: calls.append(1) or original(cond, noise)
    )
    bimodal_policy.reset(3)
    for _ in range(9):
        action = bimodal_policy.act({"obs": np.zeros((3, 2), np.float32)})
        assert action.shape == (3, 2)
    assert len(calls) == 3  # steps 0, 4 and 8 with Ta = 4


def test_observation_history_pads_with_the_first_frame():
    history = ObservationHistory(["x"], steps=3)
    stacked = history.push({"x": np.array([[1.0]])})
    np.testing.assert_array_equal(stacked["x"][0, :, 0], [1, 1, 1])
    stacked = history.push({"x": np.array([[2.0]])})
    np.testing.assert_array_equal(stacked["x"][0, :, 0], [1, 1, 2])
    with pytest.raises(KeyError, match="lacks keys"):
        history.push({"y": np.array([[2.0]])})


def test_unet_policy_with_image_observations_trains_and_acts(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    data = {
        "image": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
    }
    cfg = DiffusionConfig(
        denoiser="unet",
        obs_steps=2,
        horizon=8,
        action_steps=4,
        down_dims=(16, 32),
        step_embed_dim=16,
        image_feature_dim=8,
        crop_shape=(12, 12),
        steps=4,
        batch_size=8,
        warmup_steps=1,
        log_every=2,
        checkpoint_every=4,
    )
    policy = train_diffusion(
        data, np.array([30, 60]), ["image", "state"], cfg, tmp_path, progress=False
    )
    policy.reset(2)
    obs = {"image": data["image"][:2], "state": data["state"][:2]}
    assert policy.act(obs).shape == (2, 2)
    assert policy.act_chunk(obs).shape == (2, 4, 2)
    assert policy.noise_shape == (8, 2)
    assert "image" not in policy.normalizer  # images are scaled by the encoder, not fitted


def test_resume_continues_bit_exactly(tmp_path):
    data, ends = bimodal_data(episodes=20)
    cfg = DiffusionConfig(**{**TINY, "log_every": 10}, steps=40, checkpoint_every=20)
    straight = train_diffusion(data, ends, ["obs"], cfg, tmp_path / "a", progress=False)

    interrupted = DiffusionConfig(**{**TINY, "log_every": 10}, steps=20, checkpoint_every=20)
    train_diffusion(data, ends, ["obs"], interrupted, tmp_path / "b", progress=False)
    resumed = train_diffusion(data, ends, ["obs"], cfg, tmp_path / "b", progress=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ema_starts_at_the_weights_and_then_lags():
    model = torch.nn.Linear(1, 1, bias=False)
    target = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(target, power=0.75)
    for value in (1.0, 2.0):  # Diffusion Policy's warm-up: the first two updates copy
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        assert target.weight.item() == value
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # decay 1 - 2 ** -0.75 = 0.405
    assert target.weight.item() == pytest.approx(0.405 * 2 + 0.595 * 3, abs=1e-3)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"action_steps": 20}, "algo.action_steps"),
        ({"horizon": 10}, "algo.horizon"),
        ({"denoiser": "transformer"}, "algo.denoiser"),
        ({"inference_steps": 200}, "algo.inference_steps"),
        ({"crop_shape": [3]}, "algo.crop_shape"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        DiffusionConfig(**override)
