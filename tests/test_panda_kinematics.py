"""Panda kinematics and IK action layer: numpy FK against MuJoCo, Jacobian, IK step direction."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from robolearn.robots.panda import (
    GRIPPER_MAX_OPENING,
    HOME_QPOS,
    JOINT_LOWER,
    JOINT_UPPER,
    PANDA_SPEC,
    PANDA_YAW_SPEC,
    ArmIK,
    _solve_spd6,
    down_rotation,
)
from sims.arm.model import load_model


def test_spec() -> None:
    assert PANDA_SPEC.joint_names == tuple(f"panda_joint{i}" for i in range(1, 8))
    assert PANDA_SPEC.action_dim == 4 and PANDA_YAW_SPEC.action_dim == 5
    assert PANDA_SPEC.control_hz == 20
    np.testing.assert_array_equal(PANDA_SPEC.clip_joints(HOME_QPOS), HOME_QPOS)
    assert {"joint_pos", "ee_pos", "gripper", "object_pos", "goal_pos"} <= set(
        PANDA_SPEC.observation_keys
    )


def test_fk_matches_mujoco_tcp_site() -> None:
    model = load_model()
    data = mujoco.MjData(model)
    ik = ArmIK()
    tcp = model.site("tcp").id
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        data.qpos[:7] = q
        mujoco.mj_kinematics(model, data)
        pos, rot = ik.fk(q)
        np.testing.assert_allclose(pos, data.site_xpos[tcp], atol=1e-6)
        np.testing.assert_allclose(rot, data.site_xmat[tcp].reshape(3, 3), atol=1e-6)


def test_home_points_down() -> None:
    pos, rot = ArmIK().fk(HOME_QPOS)
    np.testing.assert_allclose(rot, down_rotation(0.0), atol=2e-3)
    assert 0.25 < pos[0] < 0.35 and abs(pos[1]) < 1e-6 and 0.4 < pos[2] < 0.55


def test_jacobian_matches_finite_differences() -> None:
    ik = ArmIK()
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        _, _, jac = ik.jacobian(q)
        numeric = np.empty((3, 7))
        for i in range(7):
            dq = np.zeros(7)
            dq[i] = 1e-6
            numeric[:, i] = (ik.fk(q + dq)[0] - ik.fk(q - dq)[0]) / 2e-6
        np.testing.assert_allclose(jac[:3], numeric, atol=1e-6)


def _joints_at(ik: ArmIK, pos: np.ndarray) -> np.ndarray:
    """Joint angles with the TCP at ``pos``, found by iterating the IK action layer."""
    q = HOME_QPOS.copy()
    for _ in range(30):
        q, _ = ik.action_to_targets(q, np.append((pos - ik.fk(q)[0]) / ik.max_step, 1.0))
    np.testing.assert_allclose(ik.fk(q)[0], pos, atol=1e-3)
    return q


@pytest.mark.parametrize(
    "direction", [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1), (1, 1, -1)]
)
def test_ik_step_moves_in_commanded_direction(direction: tuple[int, int, int]) -> None:
    ik = ArmIK()
    q = _joints_at(ik, np.array([0.45, 0.0, 0.3]))
    d = np.asarray(direction, dtype=np.float64)
    for _ in range(3):
        pos, _ = ik.fk(q)
        q_next, _ = ik.action_to_targets(q, np.append(d, 1.0))
        moved = ik.fk(q_next)[0] - pos
        commanded = ik.max_step * d
        # The displacement points along the command and covers most of it.
        assert moved @ commanded / (np.linalg.norm(moved) * np.linalg.norm(commanded)) > 0.97
        assert np.linalg.norm(moved) > 0.8 * np.linalg.norm(commanded)
        q = q_next
    # The gripper keeps pointing down.
    assert ik.fk(q)[1][2, 2] < -0.99


def test_targets_respect_limits_and_gripper_mapping() -> None:
    ik = ArmIK()
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        q_target, opening = ik.action_to_targets(q, rng.uniform(-1.5, 1.5, 4))
        assert np.all(q_target >= JOINT_LOWER) and np.all(q_target <= JOINT_UPPER)
        assert 0.0 <= opening <= GRIPPER_MAX_OPENING
    assert ik.action_to_targets(HOME_QPOS, np.array([0, 0, 0, -1.0]))[1] == 0.0
    assert ik.action_to_targets(HOME_QPOS, np.array([0, 0, 0, 1.0]))[1] == GRIPPER_MAX_OPENING


def test_workspace_clips_target() -> None:
    ik = ArmIK()
    q = HOME_QPOS.copy()
    for _ in range(40):
        q, _ = ik.action_to_targets(q, np.array([0.0, 0.0, -1.0, 1.0]))
    assert ik.fk(q)[0][2] == pytest.approx(ik.workspace_low[2], abs=2e-3)


def test_yaw_action_rotates_gripper() -> None:
    ik = ArmIK(use_yaw=True)
    q_next, _ = ik.action_to_targets(HOME_QPOS, np.array([0.0, 0.0, 0.0, 1.0, 1.0]))
    yaw = ik.yaw(ik.fk(q_next)[1])
    assert yaw == pytest.approx(ik.max_yaw_step, abs=0.03)


def test_rejects_bad_actions() -> None:
    ik = ArmIK()
    with pytest.raises(ValueError, match="NaN"):
        ik.action_to_targets(HOME_QPOS, np.array([np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="shape"):
        ik.action_to_targets(HOME_QPOS, np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        ik.action_to_targets(HOME_QPOS, np.array([0.0, np.inf, 0.0, 0.0], np.float32))
    # Huge finite values overflow a plain sum but are valid (clipped) actions.
    assert ik.action_to_targets(HOME_QPOS, [1e308, 1e308, 0, 0])[0].shape == (7,)


def test_spd6_solve_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    for scale in (1.0, 1e-3):
        for _ in range(20):
            jac = scale * rng.normal(size=(6, 7))
            jac[5] = jac[4]  # rank-deficient J J^T: the damping keeps the system solvable
            gram, b = jac @ jac.T, rng.normal(size=6)
            x = _solve_spd6(gram.tolist(), tuple(b.tolist()), 0.03**2)
            expected = np.linalg.solve(gram + 0.03**2 * np.eye(6), b)
            np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("use_yaw", [False, True])
def test_action_to_targets_matches_numpy_reference(use_yaw: bool) -> None:
    """The float-level implementation against the damped least-squares step written in numpy."""
    ik = ArmIK(use_yaw=use_yaw)
    rng = np.random.default_rng(5)
    for _ in range(30):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        action = rng.uniform(-1.2, 1.2, ik.action_dim).astype(np.float32)
        pos, rot, jac = ik.jacobian(q)
        target, target_rot = ik.target_pose(q, action)
        rot_err = 0.5 * sum(np.cross(rot[:, i], target_rot[:, i]) for i in range(3))
        err = np.concatenate([target - pos, rot_err])
        pull = ik.nullspace_gain * (HOME_QPOS - q)
        damped = jac @ jac.T + 0.03**2 * np.eye(6)
        dq = jac.T @ np.linalg.solve(damped, err - jac @ pull) + pull
        dq = np.clip(dq, -ik.max_joint_step, ik.max_joint_step)
        expected = np.clip(q + dq, JOINT_LOWER, JOINT_UPPER)
        q_target, opening = ik.action_to_targets(q, action)
        np.testing.assert_allclose(q_target, expected, atol=1e-9)
        assert opening == pytest.approx(0.5 * (np.clip(action[3], -1, 1) + 1) * 0.08)
