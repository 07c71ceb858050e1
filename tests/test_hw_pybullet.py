"""The PyBullet twin of the arm scene: same kinematics and episode sampling as MuJoCo, servo
lag close to the MuJoCo actuators'."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")

from robolearn.robots.panda import HOME_QPOS, JOINT_LOWER, JOINT_UPPER, ArmIK  # noqa: E402
from sims.arm.env import ArmPickPlaceEnv, ArmPushEnv, ArmRandomization, ArmReachEnv  # noqa: E402
from sims.pybullet.arm import ArmPhysics, PyBulletArm  # noqa: E402


@pytest.fixture(scope="module")
def arm():
    arm = PyBulletArm(with_block=True)
    yield arm
    arm.close()


def test_tcp_matches_the_shared_forward_kinematics(arm):
    ik = ArmIK()
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        arm.reset(q, object_xy=np.array([0.5, 0.0]))
        np.testing.assert_allclose(arm.tcp_position(), ik.fk(q)[0], atol=1e-6)
        positions = arm.joint_state()[0]
        np.testing.assert_allclose(positions[:7], q, atol=1e-9)
        assert positions[7:].sum() == pytest.approx(0.08)  # the gripper starts open


def test_streamed_joint_targets_lag_like_the_mujoco_servos(arm):
    """A target moving 0.05 rad per 50 ms step is followed within a fifth of a step."""
    arm.reset(HOME_QPOS, object_xy=np.array([0.5, 0.0]))
    substeps = round(0.05 / arm.physics.timestep)
    for k in range(1, 7):
        arm.set_targets(HOME_QPOS + 0.05 * k, 0.08)
        arm.step(substeps)
    lag = (HOME_QPOS + 0.3 - arm.joint_state()[0][:7]) / 0.05
    # MuJoCo's actuators lag 0.06-0.18 of a step on this ramp (joints 7..1).
    assert np.all((lag > 0.03) & (lag < 0.3)), lag


def test_block_rests_on_the_table_with_offset_mass(arm):
    heavy = PyBulletArm(with_block=True, physics=ArmPhysics(object_mass_scale=2.0))
    try:
        heavy.reset(HOME_QPOS, np.array([0.55, 0.1]), object_mass=0.1, object_friction=1.0)
        heavy.step(250)
        position, _ = heavy.block_pose()
        np.testing.assert_allclose(position, [0.55, 0.1, 0.02], atol=2e-3)
    finally:
        heavy.close()


@pytest.mark.parametrize("env_class", [ArmReachEnv, ArmPushEnv, ArmPickPlaceEnv])
def test_sample_scene_is_the_sim_reset(env_class):
    """The stand-in draws episodes with the sim's own sampler: same seed, same start."""
    from gymnasium.utils.seeding import np_random

    env = env_class()
    try:
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            scene = env_class.sample_scene(np_random(seed)[0], ArmRandomization())
            np.testing.assert_allclose(obs["joint_pos"], scene.joint_pos, atol=1e-6)
            np.testing.assert_allclose(obs["goal_pos"], scene.goal, atol=1e-6)
            if env_class.has_object:
                np.testing.assert_allclose(obs["object_pos"][:2], scene.object_xy, atol=1e-6)
    finally:
        env.close()


def test_physics_config_rejects_bad_values():
    with pytest.raises(ValueError, match="object_mass_scale"):
        ArmPhysics(object_mass_scale=-1.0)
    with pytest.raises(ValueError, match="timestep"):
        ArmPhysics(timestep=0.0)
