"""Quadrotor envs: spaces, seeded determinism, single vs vector twins, termination, reset_mask."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sims
from robolearn.envs import make_vector_env
from robolearn.robots.quadrotor import QUADROTOR_SPEC
from sims.quadrotor.env import QuadrotorVectorEnv

ENV_ID = "robolearn/Quadrotor-v0"


def _actions(steps: int, n: int = 1, seed: int = 7) -> np.ndarray:
    # Near-hover commands with noise, so most episodes keep flying for a while.
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.3, 0.9, (steps, n, 4)).astype(np.float32)


def test_registration_and_spaces() -> None:
    sims.register_envs()
    spec = gym.spec(ENV_ID)
    assert spec.max_episode_steps == 500 and spec.vector_entry_point is not None
    env = gym.make(ENV_ID)
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (22,), np.float32)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert env.unwrapped.robot_spec is QUADROTOR_SPEC
    assert env.unwrapped.params.mass.shape == (1,)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(info["success"], bool) and isinstance(info["position_error"], float)
    np.testing.assert_array_equal(obs[18:], 0.0)  # no previous action after reset
    action = np.array([2.0, -0.5, 0.1, 0.3], dtype=np.float32)
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_array_equal(obs[18:], action)  # the raw, unclipped action
    assert isinstance(reward, float) and not truncated


@pytest.mark.parametrize("params", ["crazyflie", "x500", "sampled"])
def test_seeded_resets_reproduce(params: str) -> None:
    def run(seed: int) -> np.ndarray:
        env = gym.make(ENV_ID, params=params)
        obs = [env.reset(seed=seed)[0]]
        for action in _actions(20)[:, 0]:
            obs.append(env.step(action)[0])
        return np.array(obs)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3)[0], run(4)[0])


def test_sampled_vehicle_changes_with_seed() -> None:
    env = gym.make(ENV_ID, params="sampled")
    env.reset(seed=1)
    first = env.unwrapped.params.mass.clone()
    env.reset(seed=2)
    assert not np.isclose(first.item(), env.unwrapped.params.mass.item())
    env.reset(seed=1)
    assert first.item() == env.unwrapped.params.mass.item()


@pytest.mark.parametrize(
    "kwargs",
    [{"params": "sampled"}, {"params": "x500", "reference": "figure_eight", "init": "hover"}],
)
def test_vector_sub_env_matches_single_env(kwargs: dict) -> None:
    seeds = [10, 11, 12, 13]
    vec = make_vector_env(ENV_ID, 4, kwargs)
    assert isinstance(vec, QuadrotorVectorEnv)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.DISABLED
    actions = _actions(60, 4)
    obs, _ = vec.reset(seed=seeds)
    vec_obs, vec_rew = [obs], []
    for action in actions:
        obs, reward, *_ = vec.step(action)
        vec_obs.append(obs)
        vec_rew.append(reward)
    for i, seed in enumerate(seeds):
        env = gym.make(ENV_ID, **kwargs)
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, vec_obs[0][i])
        for t, action in enumerate(actions):
            obs, reward, *_ = env.step(action[i])
            np.testing.assert_array_equal(obs, vec_obs[t + 1][i])
            assert reward == vec_rew[t][i]


def test_vector_reset_mask_resets_only_masked_envs() -> None:
    vec = QuadrotorVectorEnv(4, params="sampled")
    obs0, _ = vec.reset(seed=[0, 1, 2, 3])
    masses = vec.params.mass.clone()
    for action in _actions(5, 4):
        stepped, *_ = vec.step(action)
    mask = np.array([True, False, True, False])
    obs, info = vec.reset(seed=[0, 5, 9, 5], options={"reset_mask": mask})
    np.testing.assert_array_equal(obs[0], obs0[0])  # env 0 replayed seed 0
    assert not np.array_equal(obs[2], obs0[2])  # env 2 drew seed 9
    np.testing.assert_array_equal(obs[[1, 3]], stepped[[1, 3]])  # untouched
    assert vec.batch.steps.tolist() == [0, 5, 0, 5]
    assert vec.params.mass[1] == masses[1] and vec.params.mass[3] == masses[3]
    assert info["_success"].all() and info["success"].shape == (4,)


def test_vector_truncates_after_max_steps() -> None:
    vec = QuadrotorVectorEnv(2, max_episode_steps=5, init="hover", disturbance=False)
    vec.reset(seed=0)
    for t in range(5):
        *_, truncated, _ = vec.step(np.zeros((2, 4), np.float32))
        assert truncated.all() == (t == 4)


def test_hover_init_succeeds_and_motors_off_dips() -> None:
    env = gym.make(ENV_ID, init="hover")
    env.reset(seed=0)
    hover = 2 * env.unwrapped.params.hover_command()[0].numpy() - 1
    for _ in range(100):
        obs, reward, terminated, _, info = env.step(hover.astype(np.float32))
    assert info["success"] and not terminated and info["position_error"] < 1e-3
    assert reward == pytest.approx(1.5, abs=1e-3)

    env = gym.make(ENV_ID, init="motors_off")
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs[:3], 0.0)
    np.testing.assert_array_equal(obs[3:12], np.eye(3).ravel())
    for _ in range(20):
        obs, _, terminated, _, info = env.step(hover.astype(np.float32))
    assert obs[2] < -0.01 and not terminated  # spinning up from rest loses height


def test_termination_and_penalty() -> None:
    env = gym.make(ENV_ID, init="hover")
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        obs, reward, terminated, _, info = env.step(-np.ones(4, np.float32))  # motors off
        if terminated:
            break
    assert reward == -100.0 and not info["success"]
    # Falls at g: |v_z| reaches 2 m/s (the velocity limit) before 20 arm lengths (0.79 m).
    assert steps < 40 and obs[14] == -1.0  # the clipped velocity error

    env = gym.make(ENV_ID, init="hover", terminate_on_velocity=False, clip_observation=False)
    env.reset(seed=0)
    for _ in range(100):
        obs, reward, terminated, *_ = env.step(-np.ones(4, np.float32))
        if terminated:
            break
    assert terminated and obs[2] < -0.79 and obs[14] < -2.0  # the position bound, unclipped errors
