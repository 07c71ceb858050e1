"""The quadrotor frame and motor mapping layer (hw/frames.py) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw.frames import (
    ENU_TO_NED,
    FLU_TO_FRD,
    NED_FRD,
    action_to_setpoint,
    enu_ned,
    flu_frd,
    odometry_to_policy_frame,
    policy_frame_to_odometry,
    policy_to_px4,
    px4_actuator_controls,
    px4_to_policy,
    quat_enu_flu_ned_frd,
    quat_multiply,
    quat_to_rotation,
    reorder,
    setpoint_to_action,
    to_policy_order,
)

S = math.sqrt(0.5)


def yaw(angle: float) -> np.ndarray:
    return np.array([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])


def about_y(angle: float) -> np.ndarray:
    return np.array([math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0])


def random_quats(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_world_and_body_vectors():
    np.testing.assert_array_equal(enu_ned([1.0, 2.0, 3.0]), [2.0, 1.0, -3.0])  # east 1, north 2
    np.testing.assert_array_equal(flu_frd([1.0, 2.0, 3.0]), [1.0, -2.0, -3.0])
    # A counter-clockwise yaw rate (seen from above) is positive about FLU's z, negative in FRD.
    np.testing.assert_array_equal(flu_frd([0.0, 0.0, 1.0]), [0.0, 0.0, -1.0])
    v = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_array_equal(enu_ned(enu_ned(v)), v)
    np.testing.assert_array_equal(flu_frd(flu_frd(v)), v)


def test_level_attitudes():
    # Level, nose east: identity in ENU/FLU, a 90 degree yaw (north -> east) in NED/FRD.
    np.testing.assert_allclose(quat_enu_flu_ned_frd([1.0, 0, 0, 0]), [S, 0, 0, S], atol=1e-15)
    # Level, nose north: a 90 degree yaw in ENU (east -> north), identity in NED.
    np.testing.assert_allclose(quat_enu_flu_ned_frd(yaw(math.pi / 2)), [1, 0, 0, 0], atol=1e-15)
    # Nose west: 180 degrees in ENU, -90 (nose west of north) in NED.
    np.testing.assert_allclose(quat_enu_flu_ned_frd(yaw(math.pi)), [S, 0, 0, -S], atol=1e-15)


def test_a_pitch_nose_down_facing_north():
    # FLU: a positive rotation about y (left) tips the nose down; FRD: about y (right) up.
    q_enu = quat_multiply(yaw(math.pi / 2), about_y(math.radians(30)))
    q_ned = quat_enu_flu_ned_frd(q_enu)
    np.testing.assert_allclose(q_ned, about_y(math.radians(-30)), atol=1e-15)
    nose_enu = quat_to_rotation(q_enu) @ [1.0, 0, 0]
    np.testing.assert_allclose(nose_enu, [0, math.cos(math.pi / 6), -0.5], atol=1e-15)
    nose_ned = quat_to_rotation(q_ned) @ [1.0, 0, 0]
    np.testing.assert_allclose(nose_ned, [math.cos(math.pi / 6), 0, 0.5], atol=1e-15)


def test_attitude_mapping_is_the_change_of_basis_and_an_involution():
    q = random_quats(50)
    mapped = quat_enu_flu_ned_frd(q)
    assert np.all(mapped[:, 0] >= 0)
    np.testing.assert_allclose(
        quat_to_rotation(mapped), ENU_TO_NED @ quat_to_rotation(q) @ FLU_TO_FRD, atol=1e-12
    )
    back = quat_enu_flu_ned_frd(mapped)
    np.testing.assert_allclose(back * np.sign(back[:, :1] * q[:, :1]), q, atol=1e-12)


def test_motor_order():
    # Policy [FR, BR, BL, FL] -> PX4 QuadX [1 FR, 2 BL, 3 FL, 4 BR].
    policy = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(policy_to_px4(policy), [0.1, 0.3, 0.4, 0.2])
    np.testing.assert_array_equal(px4_to_policy([0.1, 0.3, 0.4, 0.2]), policy)
    np.testing.assert_array_equal(reorder(policy, "px4"), [0.1, 0.3, 0.4, 0.2])
    np.testing.assert_array_equal(reorder(policy, "policy"), policy)
    batch = np.random.default_rng(2).uniform(size=(7, 4))
    np.testing.assert_array_equal(to_policy_order(reorder(batch, "px4"), "px4"), batch)
    with pytest.raises(ValueError, match="motor order must be one of"):
        reorder(policy, "betaflight")


def test_action_setpoint_and_px4_controls():
    np.testing.assert_array_equal(action_to_setpoint([-1.0, 0.0, 1.0, 2.0]), [0, 0.5, 1, 1])
    np.testing.assert_array_equal(setpoint_to_action([0.0, 0.25, 1.0, -1.0]), [-1, -0.5, 1, -1])
    control = px4_actuator_controls(action_to_setpoint([-1.0, -0.5, 0.0, 0.5]))
    assert control.dtype == np.float32 and control.shape == (12,)
    np.testing.assert_array_equal(control[:4], [0.0, 0.5, 0.75, 0.25])  # FR, BL, FL, BR
    assert np.isnan(control[4:]).all()  # unused outputs disarmed
    assert np.isnan(px4_actuator_controls(None)).all()  # a cut stops every motor


def test_odometry_conversion_hand_case():
    # Facing north, flying forward at 1 m/s, 2 m up, yawing left at 0.5 rad/s.
    p, q, v, w = odometry_to_policy_frame(
        [0.0, 0.0, -2.0], [1.0, 0, 0, 0], [1.0, 0, 0], [0, 0, -0.5], NED_FRD
    )
    np.testing.assert_allclose(p, [0, 0, 2])
    np.testing.assert_allclose(q, yaw(math.pi / 2), atol=1e-15)
    np.testing.assert_allclose(v, [0, 1, 0], atol=1e-15)  # north, in the world frame
    np.testing.assert_allclose(w, [0, 0, 0.5])
    # PX4's VehicleOdometry carries the velocity in the world (NED) frame instead.
    _, _, v, _ = odometry_to_policy_frame(
        [0.0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0], [0, 0, 0], NED_FRD, twist_in_body=False
    )
    np.testing.assert_allclose(v, [0, 1, 0], atol=1e-15)


@pytest.mark.parametrize("convention", ["enu_flu", "ned_frd"])
@pytest.mark.parametrize("twist_in_body", [True, False])
def test_odometry_round_trip(convention, twist_in_body):
    rng = np.random.default_rng(3)
    for q in random_quats(10, seed=4):
        q = q * np.sign(q[0])
        p, v, w = rng.normal(size=(3, 3))
        wire = policy_frame_to_odometry(p, q, v, w, convention, twist_in_body)
        back = odometry_to_policy_frame(*wire, convention, twist_in_body)
        for want, got in zip((p, q, v, w), back):
            np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="frame must be one of"):
        odometry_to_policy_frame(p, q, v, w, "nwu")
