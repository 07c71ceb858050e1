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
