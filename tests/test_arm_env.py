"""MuJoCo arm envs: spaces, seeded determinism, success/termination, images, randomisation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sims
from robolearn.robots.panda import PANDA_SPEC, PANDA_YAW_SPEC
from sims.arm.experts import make_expert

IDS = list(sims.ARM_ENVS)
KEYS = {
    "robolearn/ArmReach-v0": ["joint_pos", "ee_pos", "gripper", "goal_pos"],
    "robolearn/ArmPush-v0": ["joint_pos", "ee_pos", "gripper", "object_pos", "goal_pos"],
    "robolearn/ArmPickPlace-v0": ["joint_pos", "ee_pos", "gripper", "object_pos", "goal_pos"],
}
SHAPES = {"joint_pos": (7,), "ee_pos": (3,), "gripper": (1,), "object_pos": (3,), "goal_pos": (3,)}


def test_register_envs_is_idempotent() -> None:
    sims.register_envs()
    for env_id, (_, steps) in sims.ARM_ENVS.items():
        assert gym.spec(env_id).max_episode_steps == steps


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_and_observations(env_id: str) -> None:
    env = gym.make(env_id)
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert set(space.spaces) == set(KEYS[env_id])
    for key, box in space.spaces.items():
        assert box.dtype == np.float32 and box.shape == SHAPES[key]
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert env.unwrapped.robot_spec is PANDA_SPEC
    obs, info = env.reset(seed=0)
    assert space.contains(obs) and info["success"] is False
    env.action_space.seed(0)
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert space.contains(obs)
        assert isinstance(reward, float) and isinstance(info["success"], bool)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_reset_and_actions_reproduce(env_id: str) -> None:
    def rollout(seed: int) -> list[dict[str, np.ndarray]]:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        actions = np.random.default_rng(7).uniform(-1, 1, (15, 4)).astype(np.float32)
        trajectory = [obs]
        for action in actions:
            trajectory.append(env.step(action)[0])
        env.close()
        return trajectory

    first, second, other = rollout(3), rollout(3), rollout(4)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["goal_pos"], other[0]["goal_pos"])


def test_step_moves_tcp_in_commanded_direction() -> None:
    env = gym.make("robolearn/ArmReach-v0")
    obs, _ = env.reset(seed=0)
    for direction in np.eye(3):
        start = obs["ee_pos"].copy()
        for _ in range(3):
            obs = env.step(np.append(-direction, 1.0).astype(np.float32))[0]
        moved = obs["ee_pos"] - start
        assert moved @ -direction > 0.08  # 3 steps of at most 4 cm
        assert np.linalg.norm(moved) < 1.15 * abs(moved @ direction)


def test_terminate_on_success() -> None:
    expert = make_expert("robolearn/ArmReach-v0")
    for terminate in (True, False):
        env = gym.make("robolearn/ArmReach-v0", terminate_on_success=terminate)
        obs, _ = env.reset(seed=1)
        successes, terminated, steps = 0, False, 0
        while not terminated and steps < 30:
            action = expert.act({k: v[None] for k, v in obs.items()})[0]
            obs, _, terminated, _, info = env.step(action)
            successes += info["success"]
            steps += 1
        assert successes >= 1
        assert terminated == terminate


def test_gripper_opens_and_closes() -> None:
    env = gym.make("robolearn/ArmPickPlace-v0")
    obs, _ = env.reset(seed=0)
    assert obs["gripper"][0] == pytest.approx(0.08, abs=1e-3)
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, -1], np.float32))[0]
    assert obs["gripper"][0] < 0.005


def test_yaw_variant() -> None:
    env = gym.make("robolearn/ArmPush-v0", use_yaw=True)
    assert env.action_space.shape == (5,)
    assert env.unwrapped.robot_spec is PANDA_YAW_SPEC
    env.reset(seed=0)
    assert env.observation_space.contains(env.step(np.zeros(5, np.float32))[0])


def test_image_observations_and_render() -> None:
    env = gym.make("robolearn/ArmPush-v0", image=True, image_size=64, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    image = obs["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert image.std() > 5.0  # a scene, not a blank frame
    moved = obs
    for _ in range(5):
        moved = env.step(np.array([0, 0, -1, 1], np.float32))[0]
    assert not np.array_equal(moved["image"], image)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    env.close()


def test_domain_randomisation() -> None:
    knobs = {
        "object_mass": (0.3, 0.3),
        "object_friction": (0.5, 0.5),
        "object_xy": ((0.55, 0.1), (0.55, 0.1)),
        "joint_noise": 0.0,
        "camera_pos_noise": 0.05,
        "camera_angle_noise": 0.05,
    }
    env = gym.make("robolearn/ArmPush-v0", image=True, image_size=32, randomization=knobs)
    base = gym.make("robolearn/ArmPush-v0", image=True, image_size=32)
    obs, _ = env.reset(seed=0)
    base_obs, _ = base.reset(seed=0)
    sim = env.unwrapped
    assert sim.model.body_mass[sim.model.body("block").id] == pytest.approx(0.3)
    assert sim.model.geom_friction[sim.model.geom("block").id, 0] == pytest.approx(0.5)
    np.testing.assert_allclose(obs["object_pos"][:2], (0.55, 0.1), atol=1e-3)
    assert not np.array_equal(obs["image"], base_obs["image"])  # camera moved
    with pytest.raises(TypeError):
        gym.make("robolearn/ArmPush-v0", randomization={"no_such_knob": 1})


def test_observations_are_fresh_arrays() -> None:
    """Callers may keep or modify observations: they never alias MuJoCo's state or each other."""
    env = gym.make("robolearn/ArmPush-v0")
    obs, _ = env.reset(seed=0)
    sim = env.unwrapped
    kept = {k: v.copy() for k, v in obs.items()}
    gripper = sim.data.qpos[7:9].sum(keepdims=True, dtype=np.float32)
    np.testing.assert_array_equal(obs["gripper"], gripper)
    for value in obs.values():
        value[...] = -1.0  # must not leak into the env
    following, *_ = env.step(np.zeros(4, np.float32))
    for key, value in following.items():
        assert not np.shares_memory(value, sim.data.qpos) and value.dtype == np.float32
        assert not any(np.shares_memory(value, obs[k]) for k in obs)
        np.testing.assert_allclose(value, kept[key], atol=0.05)  # one small step from reset
    np.testing.assert_array_equal(following["goal_pos"], kept["goal_pos"])
    # Lists and float64 arrays are accepted and mean the same as float32 arrays.
    env.reset(seed=0)
    a = env.step(np.array([0.5, -0.5, 0.25, 1.0], np.float32))[0]
    env.reset(seed=0)
    b = env.step([0.5, -0.5, 0.25, 1.0])[0]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    env.close()
