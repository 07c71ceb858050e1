"""Scripted arm experts: success rates, noisy demonstrations, batching and checkpoints."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sims  # noqa: F401 - registers the gym ids
from robolearn.policy import load_policy
from sims.arm.experts import IMPERFECT_NOISE, ArmExpert, make_expert


def success_rate(env_id: str, noise: float, seeds: range) -> float:
    env = gym.make(env_id)
    expert = make_expert(env_id, noise=noise, seed=0)
    successes = 0
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        expert.reset()
        done = False
        while not done:
            action = expert.act({k: v[None] for k, v in obs.items()})[0]
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        successes += info["success"]
    env.close()
    return successes / len(seeds)


@pytest.mark.parametrize("env_id", list(sims.ARM_ENVS))
def test_clean_expert_succeeds(env_id: str) -> None:
    assert success_rate(env_id, 0.0, range(30)) >= 0.95


@pytest.mark.parametrize("env_id", ["robolearn/ArmPush-v0", "robolearn/ArmPickPlace-v0"])
def test_noisy_expert_is_imperfect(env_id: str) -> None:
    rate = success_rate(env_id, IMPERFECT_NOISE, range(20))
    assert 0.1 <= rate <= 0.85


def test_batched_actions() -> None:
    envs = [gym.make("robolearn/ArmPickPlace-v0") for _ in range(3)]
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    expert = ArmExpert("pick_place", noise=0.3, seed=1)
    expert.reset(batch_size=3)
    actions = expert.act(batch)
    assert actions.shape == (3, 4) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    clean = ArmExpert("pick_place").act(batch)
    single = ArmExpert("pick_place").act({k: v[:1] for k, v in batch.items()})
    np.testing.assert_array_equal(clean[:1], single)


def test_noise_stream_is_seeded() -> None:
    obs, _ = gym.make("robolearn/ArmPush-v0").reset(seed=0)
    batch = {k: v[None] for k, v in obs.items()}
    a, b = ArmExpert("push", noise=0.5, seed=3), ArmExpert("push", noise=0.5, seed=3)
    first = [a.act(batch) for _ in range(5)]
    np.testing.assert_array_equal(first, [b.act(batch) for _ in range(5)])
    a.reset()
    assert not np.array_equal(first, [a.act(batch) for _ in range(5)])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    expert = make_expert("robolearn/ArmPush-v0", noise=0.2, seed=5)
    loaded = load_policy(expert.save(tmp_path / "expert"))
    assert isinstance(loaded, ArmExpert)
    assert loaded.config() == {"task": "push", "noise": 0.2, "seed": 5}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="task"):
        ArmExpert("juggle")
    with pytest.raises(ValueError, match="no arm expert"):
        make_expert("robolearn/Quadrotor-v0")
