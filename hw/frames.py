"""Frame and motor conventions between robolearn's quadrotor policy and ROS 2 / PX4 drivers.

Pure numpy (no ROS), so every mapping is tested against hand-computed cases.

**Frames.** The policy (and the L2F simulator it trains in) lives in ROS's convention: world ENU
(x east, y north, z up) and body FLU (x forward, y left, z up); quaternions (w, x, y, z) rotate
body to world. PX4 uses world NED (x north, y east, z down) and body FRD (x forward, y right,
z down). The two world frames differ by swapping x and y and negating z; the two body frames by
negating y and z. Both changes of basis are proper rotations, so an attitude maps to an
attitude: ``R_ned_frd = P R_enu_flu F`` with ``P`` the ENU->NED and ``F`` the FRD->FLU matrix,
as in ``px4_ros_com``'s ``frame_transforms``. Every map here is its own inverse.

**Motors.** The policy orders its four motors [front-right, back-right, back-left, front-left]
(:data:`robolearn.robots.quadrotor.MOTOR_NAMES`). PX4's QuadX airframe numbers them motor 1
front-right, 2 back-left, 3 front-left, 4 back-right, so PX4's ``mc_raptor`` sends
``out0 = a0, out1 = a2, out2 = a3, out3 = a1`` (:data:`POLICY_TO_PX4`). The spin directions
agree: front-right and back-left turn counter-clockwise seen from above in both.

**Commands.** A policy action ``a`` in [-1, 1] is the motor setpoint ``u = (a + 1) / 2`` in
[0, 1] (0 = off, 1 = full speed), which is also what PX4's ``ActuatorMotors.control`` means for
non-reversible motors; there ``NaN`` stops a motor (disarmed), which is how
:func:`px4_actuator_controls` encodes a cut and unused outputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robolearn.robots.quadrotor import quaternion_to_rotation

#: Frame conventions of an odometry stream / motor interface.
ENU_FLU = "enu_flu"
NED_FRD = "ned_frd"
FRAME_CONVENTIONS = (ENU_FLU, NED_FRD)
#: Motor orders of a command vector: the policy's [FR, BR, BL, FL] or PX4 QuadX's [1, 2, 3, 4].
POLICY_ORDER = "policy"
PX4_ORDER = "px4"
MOTOR_ORDERS = (POLICY_ORDER, PX4_ORDER)
#: ``px4[i] = policy[POLICY_TO_PX4[i]]`` (mc_raptor: out0 = a0, out1 = a2, out2 = a3, out3 = a1).
POLICY_TO_PX4 = np.array([0, 2, 3, 1])
#: ``policy[i] = px4[PX4_TO_POLICY[i]]``.
PX4_TO_POLICY = np.argsort(POLICY_TO_PX4)
#: Size of ``px4_msgs/ActuatorMotors.control``.
PX4_ACTUATOR_SLOTS = 12

#: ENU <-> NED world change of basis (x <-> y, z -> -z); a rotation by pi about (1, 1, 0).
ENU_TO_NED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
#: FLU <-> FRD body change of basis (y -> -y, z -> -z); a rotation by pi about x.
FLU_TO_FRD = np.diag([1.0, -1.0, -1.0])
_Q_ENU_TO_NED = np.array([0.0, math.sqrt(0.5), math.sqrt(0.5), 0.0])
_Q_FRD_TO_FLU = np.array([0.0, 1.0, 0.0, 0.0])


def check_convention(convention: str, what: str = "frame") -> str:
    """``convention`` if it is a known frame convention, else a ValueError naming ``what``."""
    if convention not in FRAME_CONVENTIONS:
        raise ValueError(f"{what} must be one of {FRAME_CONVENTIONS}, got {convention!r}")
    return convention


def enu_ned(vector: Any) -> np.ndarray:
    """A world-frame vector ``(..., 3)`` from ENU to NED, or from NED to ENU (an involution)."""
    v = np.asarray(vector, dtype=np.float64)
    return np.stack((v[..., 1], v[..., 0], -v[..., 2]), axis=-1)


def flu_frd(vector: Any) -> np.ndarray:
    """A body-frame vector ``(..., 3)`` from FLU to FRD, or from FRD to FLU (an involution)."""
    v = np.asarray(vector, dtype=np.float64)
    return np.stack((v[..., 0], -v[..., 1], -v[..., 2]), axis=-1)


def quat_multiply(a: Any, b: Any) -> np.ndarray:
    """Hamilton product ``a b`` of quaternions ``(..., 4)`` (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        axis=-1,
    )


def quat_to_rotation(q: Any) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` (w, x, y, z), normalised
    first (a driver's quaternion is only unit to its float precision)."""
    q = np.asarray(q, dtype=np.float64)
    return quaternion_to_rotation(q / np.linalg.norm(q, axis=-1, keepdims=True))


def quat_enu_flu_ned_frd(q: Any) -> np.ndarray:
    """An attitude quaternion (w, x, y, z) between body FLU -> world ENU and body FRD -> world
    NED, either way (an involution up to the quaternion's sign, which is normalised to w >= 0)."""
    out = quat_multiply(quat_multiply(_Q_ENU_TO_NED, q), _Q_FRD_TO_FLU)
    return np.where(out[..., :1] < 0, -out, out)


def policy_to_px4(values: Any) -> np.ndarray:
    """Four per-motor values from the policy's [FR, BR, BL, FL] order to PX4 QuadX order."""
    return np.asarray(values)[..., POLICY_TO_PX4]


def px4_to_policy(values: Any) -> np.ndarray:
    """Four per-motor values from PX4 QuadX order to the policy's [FR, BR, BL, FL] order."""
    return np.asarray(values)[..., PX4_TO_POLICY]


def reorder(values: Any, order: str) -> np.ndarray:
    """Policy-ordered per-motor values in ``order`` (``"policy"`` or ``"px4"``)."""
    if order == POLICY_ORDER:
        return np.asarray(values)
    if order == PX4_ORDER:
        return policy_to_px4(values)
    raise ValueError(f"motor order must be one of {MOTOR_ORDERS}, got {order!r}")


def to_policy_order(values: Any, order: str) -> np.ndarray:
    """Per-motor values in ``order`` back in the policy's order (inverse of :func:`reorder`)."""
    if order == POLICY_ORDER:
        return np.asarray(values)
    if order == PX4_ORDER:
        return px4_to_policy(values)
    raise ValueError(f"motor order must be one of {MOTOR_ORDERS}, got {order!r}")


def action_to_setpoint(action: Any) -> np.ndarray:
    """Policy actions in [-1, 1] (clipped) as motor setpoints ``u = (a + 1) / 2`` in [0, 1]."""
    return (np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) + 1.0) * 0.5


def setpoint_to_action(setpoint: Any) -> np.ndarray:
    """Motor setpoints in [0, 1] (clipped) as policy actions ``a = 2 u - 1``."""
    return 2.0 * np.clip(np.asarray(setpoint, dtype=np.float64), 0.0, 1.0) - 1.0


def px4_actuator_controls(setpoint: Any | None) -> np.ndarray:
    """``px4_msgs/ActuatorMotors.control`` (12 float32) for policy-ordered setpoints in [0, 1].

    The four motors go to slots 0-3 in PX4 QuadX order; the unused slots are NaN (disarmed), and
    ``setpoint=None`` (a cut) makes all four motors NaN too: PX4 stops a motor on NaN, whereas
    0 keeps an armed motor at idle speed.
    """
    control = np.full(PX4_ACTUATOR_SLOTS, np.nan, dtype=np.float32)
    if setpoint is not None:
        control[:4] = policy_to_px4(np.clip(np.asarray(setpoint, dtype=np.float64), 0.0, 1.0))
    return control


def odometry_to_policy_frame(
    position: Any,
    quaternion: Any,
    linear_velocity: Any,
    angular_velocity: Any,
    convention: str,
    twist_in_body: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An odometry sample in ENU/FLU: position and velocity in world ENU, the body FLU -> world
    ENU quaternion (w, x, y, z), and the angular velocity in body FLU.

    Args:
        position: World position in ``convention``'s world frame.
        quaternion: Body -> world attitude (w, x, y, z) in ``convention``.
        linear_velocity: Linear velocity, in the body frame when ``twist_in_body`` (the
            ``nav_msgs/Odometry`` convention: twist in ``child_frame_id``), else in the world
            frame (PX4's ``VehicleOdometry``).
        angular_velocity: Angular velocity in ``convention``'s body frame.
        convention: ``"enu_flu"`` or ``"ned_frd"``.
        twist_in_body: Whether ``linear_velocity`` is expressed in the body frame.
    """
    check_convention(convention)
    p = np.asarray(position, dtype=np.float64)
    q = np.asarray(quaternion, dtype=np.float64)
    v = np.asarray(linear_velocity, dtype=np.float64)
    w = np.asarray(angular_velocity, dtype=np.float64)
    if convention == NED_FRD:
        p, q, w = enu_ned(p), quat_enu_flu_ned_frd(q), flu_frd(w)
        v = flu_frd(v) if twist_in_body else enu_ned(v)
    if twist_in_body:
        v = quat_to_rotation(q) @ v
    return p, q, v, w


def policy_frame_to_odometry(
    position: Any,
    quaternion: Any,
    velocity: Any,
    angular_velocity: Any,
    convention: str,
    twist_in_body: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of :func:`odometry_to_policy_frame`: a state in ENU/FLU (world velocity) as
    ``convention``'s position, quaternion, linear velocity (body or world) and body rates."""
    check_convention(convention)
    p = np.asarray(position, dtype=np.float64)
    q = np.asarray(quaternion, dtype=np.float64)
    v = np.asarray(velocity, dtype=np.float64)
    w = np.asarray(angular_velocity, dtype=np.float64)
    if twist_in_body:
        v = quat_to_rotation(q).T @ v  # world ENU -> body FLU
    if convention == NED_FRD:
        p, q, w = enu_ned(p), quat_enu_flu_ned_frd(q), flu_frd(w)
        v = flu_frd(v) if twist_in_body else enu_ned(v)
    return p, q, v, w
