"""Quadrotor: robot spec, motor geometry and the RAPTOR observation.

Simulator-free: the batched torch simulation (``sims.quadrotor``) and the ROS 2 hardware adapter
both build the policy input through :func:`raptor_observation`, so a policy sees the same 22
numbers in simulation and in flight.

Conventions (those of the L2F simulator RAPTOR trains in): world frame z up, body frame FLU
(x forward, y left, z up), quaternions (w, x, y, z) rotate body to world. Motors are ordered
[front-right, back-right, back-left, front-left]; an action is 4 normalised motor commands
``a`` in [-1, 1], applied as motor setpoints ``u = (a + 1) / 2`` in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robolearn.robots.spec import RobotSpec

MOTOR_NAMES = ("front_right", "back_right", "back_left", "front_left")
#: Sign of each rotor's (x, y) position in the body frame, in motor order: rotors sit on the
#: diagonals, at (+-arm/sqrt(2), +-arm/sqrt(2)).
MOTOR_POSITION_SIGNS = np.array([[1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
#: Direction (+z or -z) of each rotor's yaw reaction torque, in motor order.
MOTOR_YAW_DIRECTIONS = np.array([-1.0, 1.0, -1.0, 1.0])
CONTROL_HZ = 100.0
#: Size of the RAPTOR observation.
OBSERVATION_DIM = 22
#: PX4-style clipping of the position (m) and velocity (m/s) errors; the released RAPTOR policy
#: only stays stable far from its target with it (reference: raptor.md section 11).
CLIP_POSITION = 0.5
CLIP_VELOCITY = 1.0

QUADROTOR_SPEC = RobotSpec(
    name="quadrotor",
    joint_names=MOTOR_NAMES,
    # The "joints" are the motors; their state is the normalised motor speed u in [0, 1].
    joint_lower=(0.0, 0.0, 0.0, 0.0),
    joint_upper=(1.0, 1.0, 1.0, 1.0),
    control_hz=CONTROL_HZ,
    action_meaning=tuple(
        f"{name}: normalised motor command a in [-1, 1], setpoint u = (a + 1) / 2"
        for name in MOTOR_NAMES
    ),
    observation_keys={
        "obs": (
            "(22,) float32: position error p - p_ref (3, m, world, clipped to +-0.5 per axis), "
            "rotation matrix body->world row-major (9), velocity error v - v_ref (3, m/s, world, "
            "clipped to +-1 per axis), angular velocity (3, rad/s, body FLU), previous raw action "
            "(4, motor order of joint_names)"
        )
    },
)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def quaternion_to_rotation(q: Any) -> Any:
    """Body-to-world rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)``
    (w, x, y, z). Works on numpy arrays or torch tensors with any leading batch shape (the
    simulator's batch and a driver's single attitude use the same formula) and returns the
    same kind."""
    w, x, y, z = (q[..., i] for i in range(4))
    rows = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    if _is_torch(q):
        import torch

        return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)
    return np.stack(rows, axis=-1).reshape(*q.shape[:-1], 3, 3)


def raptor_observation(
    p_err: Any,
    rotation: Any,
    v_err: Any,
    omega_body: Any,
    prev_action: Any,
    clip_position: float | None = CLIP_POSITION,
    clip_velocity: float | None = CLIP_VELOCITY,
) -> Any:
    """The 22-D RAPTOR observation ``[p_err, R row-major, v_err, omega_body, prev_action]``.

    Works on numpy arrays or torch tensors with any leading batch shape (all inputs of one kind);
    returns the same kind, in the inputs' dtype. The position and velocity errors are clipped
    per axis to ``+-clip_position`` and ``+-clip_velocity`` (``None`` disables a clip), as PX4's
    ``mc_raptor`` does before querying the policy.

    Args:
        p_err: Position minus reference position, ``(..., 3)``, world frame, m.
        rotation: Body-to-world rotation matrix, ``(..., 3, 3)``.
        v_err: Velocity minus reference velocity, ``(..., 3)``, world frame, m/s.
        omega_body: Angular velocity in the body frame, ``(..., 3)``, rad/s.
        prev_action: The raw (unclipped) action last sent to the motors, ``(..., 4)``.
        clip_position: Per-axis bound on the position error, or ``None``.
        clip_velocity: Per-axis bound on the velocity error, or ``None``.
    """
    if _is_torch(p_err):
        import torch

        clamp, cat = torch.clamp, torch.cat
    else:
        clamp, cat = np.clip, np.concatenate
    if clip_position is not None:
        p_err = clamp(p_err, -clip_position, clip_position)
    if clip_velocity is not None:
        v_err = clamp(v_err, -clip_velocity, clip_velocity)
    flat_rotation = rotation.reshape(*rotation.shape[:-2], 9)
    return cat([p_err, flat_rotation, v_err, omega_body, prev_action], -1)
