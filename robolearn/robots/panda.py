"""Franka Panda: robot spec, kinematics and the end-effector action layer.

Pure numpy, no simulator: the MuJoCo env and the ROS 2 hardware adapter both turn a normalised
action into joint targets through :class:`ArmIK`, so a policy means the same thing on both.

Kinematics use the public (Craig / modified) DH parameters of the Panda. Frame ``i`` relative to
frame ``i-1`` is ``RotX(alpha_i) TransX(a_i) RotZ(q_i) TransZ(d_i)``, which equals a fixed
transform (position ``(a_i, 0, 0) + RotX(alpha_i) (0, 0, d_i)``, rotation ``RotX(alpha_i)``)
followed by a rotation ``q_i`` about the local z axis; the MJCF model is built from the same
numbers, so this FK and MuJoCo agree to numerical precision.

Frames: the world frame is the robot base frame (z up, x forward). The hand is mounted on the
flange rotated by -45 degrees about z (as on the real robot), and the tool centre point (TCP)
sits between the fingertips, :data:`TCP_OFFSET` beyond the hand's mounting face.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from robolearn.robots.spec import RobotSpec

#: Modified DH parameters of joints 1..7.
DH_A = np.array([0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088])
DH_D = np.array([0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0])
DH_ALPHA = np.array([0.0, -np.pi / 2, np.pi / 2, np.pi / 2, -np.pi / 2, np.pi / 2, np.pi / 2])
#: Distance from joint 7's frame to the flange along its z axis.
FLANGE_D = 0.107
#: Rotation of the hand about the flange z axis.
HAND_YAW = -np.pi / 4
#: Distance from the flange to the tool centre point (between the fingertips), along z.
TCP_OFFSET = 0.1034

JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))
#: The gripper's two finger joints as ros2_control names them; each opens by half the opening.
FINGER_JOINT_NAMES = ("panda_finger_joint1", "panda_finger_joint2")
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
HOME_QPOS = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])

#: Maximum opening of the parallel gripper (distance between the fingers), in metres.
GRIPPER_MAX_OPENING = 0.08
#: Commanded TCP positions are clipped to this box (metres, base frame): above the table.
WORKSPACE_LOW = np.array([0.2, -0.4, 0.015])
WORKSPACE_HIGH = np.array([0.75, 0.4, 0.55])
CONTROL_HZ = 20.0

_ACTION_MEANING = (
    "dx: TCP translation along base x, scaled by max_step (m per control step)",
    "dy: TCP translation along base y, scaled by max_step",
    "dz: TCP translation along base z, scaled by max_step",
    "gripper: finger opening target, -1 closed .. +1 fully open (0.08 m)",
)
_OBSERVATION_KEYS = {
    "joint_pos": "(7,) joint positions in rad, order of joint_names",
    "ee_pos": "(3,) tool centre point position in m, base frame (= world frame in sim)",
    "gripper": "(1,) finger opening in m (distance between the fingers)",
    "object_pos": "(3,) object (block) centre in m, base frame; push and pick-place only",
    "goal_pos": "(3,) task goal position in m, base frame",
    "image": "(H, W, 3) uint8 RGB camera image; only when requested",
}

#: Spec of the Panda with the default 4-D action (TCP translation + gripper).
PANDA_SPEC = RobotSpec(
    name="panda",
    joint_names=JOINT_NAMES,
    joint_lower=tuple(float(x) for x in JOINT_LOWER),
    joint_upper=tuple(float(x) for x in JOINT_UPPER),
    control_hz=CONTROL_HZ,
    action_meaning=_ACTION_MEANING,
    observation_keys=_OBSERVATION_KEYS,
)

#: Spec of the Panda with the 5-D action: TCP translation, gripper and a yaw delta.
PANDA_YAW_SPEC = RobotSpec(
    name="panda",
    joint_names=JOINT_NAMES,
    joint_lower=PANDA_SPEC.joint_lower,
    joint_upper=PANDA_SPEC.joint_upper,
    control_hz=CONTROL_HZ,
    action_meaning=_ACTION_MEANING
    + ("dyaw: rotation of the gripper about base z, scaled by max_yaw_step (rad per step)",),
    observation_keys=_OBSERVATION_KEYS,
)


def joint_offsets() -> np.ndarray:
    """Position (7, 3) of each joint's frame in its parent's, before the joint's rotation."""
    return np.stack([DH_A, -np.sin(DH_ALPHA) * DH_D, np.cos(DH_ALPHA) * DH_D], axis=1)


def rot_z(angle: float) -> np.ndarray:
    """Rotation matrix about z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def down_rotation(yaw: float) -> np.ndarray:
    """TCP orientation pointing straight down (tool z = -world z), rotated by ``yaw`` about z.

    At yaw 0 the tool x axis is the base x axis, and the fingers open along base y.
    """
    return rot_z(yaw) @ np.diag([1.0, -1.0, -1.0])


def _solve_spd6(a: list[list[float]], b: Sequence[float], damp: float) -> list[float]:
    """Solve ``(A + damp I) x = b`` for a symmetric positive semi-definite 6x6 ``A`` (``damp > 0``).

    Cholesky factorisation ``L L^T`` and two triangular substitutions, unrolled over Python
    floats: for one 6x6 system per control step this is about twice as fast as
    ``np.linalg.solve``, whose per-call overhead far exceeds its arithmetic. ``A`` is the
    leading 6x6 block of the nested lists ``a`` (which may be larger); only its lower triangle
    is read.
    """
    row0, row1, row2, row3, row4, row5 = a[:6]
    a00 = row0[0]
    a10, a11 = row1[:2]
    a20, a21, a22 = row2[:3]
    a30, a31, a32, a33 = row3[:4]
    a40, a41, a42, a43, a44 = row4[:5]
    a50, a51, a52, a53, a54, a55 = row5[:6]
    # L[i][j] = (a[i][j] - sum_k<j L[i][k] L[j][k]) / L[j][j]; inv_j = 1 / L[j][j].
    inv0 = 1.0 / math.sqrt(a00 + damp)
    l10 = a10 * inv0
    inv1 = 1.0 / math.sqrt(a11 + damp - l10 * l10)
    l20 = a20 * inv0
    l21 = (a21 - l20 * l10) * inv1
    inv2 = 1.0 / math.sqrt(a22 + damp - l20 * l20 - l21 * l21)
    l30 = a30 * inv0
    l31 = (a31 - l30 * l10) * inv1
    l32 = (a32 - l30 * l20 - l31 * l21) * inv2
    inv3 = 1.0 / math.sqrt(a33 + damp - l30 * l30 - l31 * l31 - l32 * l32)
    l40 = a40 * inv0
    l41 = (a41 - l40 * l10) * inv1
    l42 = (a42 - l40 * l20 - l41 * l21) * inv2
    l43 = (a43 - l40 * l30 - l41 * l31 - l42 * l32) * inv3
    inv4 = 1.0 / math.sqrt(a44 + damp - l40 * l40 - l41 * l41 - l42 * l42 - l43 * l43)
    l50 = a50 * inv0
    l51 = (a51 - l50 * l10) * inv1
    l52 = (a52 - l50 * l20 - l51 * l21) * inv2
    l53 = (a53 - l50 * l30 - l51 * l31 - l52 * l32) * inv3
    l54 = (a54 - l50 * l40 - l51 * l41 - l52 * l42 - l53 * l43) * inv4
    inv5 = 1.0 / math.sqrt(a55 + damp - l50 * l50 - l51 * l51 - l52 * l52 - l53 * l53 - l54 * l54)
    # Forward substitution L z = b, then back substitution L^T x = z.
    b0, b1, b2, b3, b4, b5 = b
    z0 = b0 * inv0
    z1 = (b1 - l10 * z0) * inv1
    z2 = (b2 - l20 * z0 - l21 * z1) * inv2
    z3 = (b3 - l30 * z0 - l31 * z1 - l32 * z2) * inv3
    z4 = (b4 - l40 * z0 - l41 * z1 - l42 * z2 - l43 * z3) * inv4
    z5 = (b5 - l50 * z0 - l51 * z1 - l52 * z2 - l53 * z3 - l54 * z4) * inv5
    x5 = z5 * inv5
    x4 = (z4 - l54 * x5) * inv4
    x3 = (z3 - l43 * x4 - l53 * x5) * inv3
    x2 = (z2 - l32 * x3 - l42 * x4 - l52 * x5) * inv2
    x1 = (z1 - l21 * x2 - l31 * x3 - l41 * x4 - l51 * x5) * inv1
    x0 = (z0 - l10 * x1 - l20 * x2 - l30 * x3 - l40 * x4 - l50 * x5) * inv0
    return [x0, x1, x2, x3, x4, x5]


class ArmIK:
    """Turns a normalised end-effector action into joint position and gripper targets.

    ``action = (dx, dy, dz, gripper[, dyaw])`` in [-1, 1]. The TCP target is the current TCP
    position plus ``max_step * (dx, dy, dz)``, clipped to the workspace box; the orientation
    target points the gripper down at a fixed yaw (0: fingers open along base y), or, with
    ``use_yaw``, at the current yaw plus ``max_yaw_step * dyaw``. One damped-least-squares step
    on the 6-D pose error, plus a null-space pull towards the home posture, gives the joint
    targets, which are clipped to the joint limits. Being a function of the measured joint
    positions only (no internal state), it behaves identically in simulation and on hardware.

    Args:
        max_step: TCP translation per control step at action 1, in metres.
        use_yaw: Whether the action has a fifth, yaw-delta, dimension.
        max_yaw_step: Yaw change per control step at action 1, in radians.
        damping: DLS damping factor (larger: smoother near singularities, less accurate).
        nullspace_gain: Fraction of the distance to the home posture pulled per step in the
            Jacobian's null space (resolves the arm's redundancy towards a comfortable posture).
        max_joint_step: Per-joint bound on the target change per step, in radians.
        workspace_low: Lower corner of the box the TCP target is clipped to.
        workspace_high: Upper corner of that box.
    """

    def __init__(
        self,
        max_step: float = 0.04,
        use_yaw: bool = False,
        max_yaw_step: float = 0.2,
        damping: float = 0.03,
        nullspace_gain: float = 0.1,
        max_joint_step: float = 0.4,
        workspace_low: np.ndarray = WORKSPACE_LOW,
        workspace_high: np.ndarray = WORKSPACE_HIGH,
    ) -> None:
        self.max_step = max_step
        self.use_yaw = use_yaw
        self.max_yaw_step = max_yaw_step
        self.max_joint_step = max_joint_step
        self.nullspace_gain = nullspace_gain
        self.workspace_low = np.asarray(workspace_low, dtype=np.float64)
        self.workspace_high = np.asarray(workspace_high, dtype=np.float64)
        self._ws_low = self.workspace_low.tolist()
        self._ws_high = self.workspace_high.tolist()
        self.action_dim = 5 if use_yaw else 4
        # The Panda's link twists are 0 and +-pi/2, for which RotX(alpha) only swaps (and
        # negates) the y and z axes: store the twist as its sign and skip the multiplications.
        self._links: list[tuple[int, float, float]] = []
        for a, d, alpha in zip(DH_A.tolist(), DH_D.tolist(), DH_ALPHA.tolist()):
            twist = round(alpha / (math.pi / 2))
            if twist not in (-1, 0, 1) or abs(alpha - twist * math.pi / 2) > 1e-12:
                raise ValueError(f"link twist {alpha} is not 0 or +-pi/2")
            self._links.append((twist, a, d))
        self._tcp_reach = FLANGE_D + TCP_OFFSET
        self._hand_cs = (math.cos(HAND_YAW), math.sin(HAND_YAW))
        self._home_pull = (nullspace_gain * HOME_QPOS).tolist()
        self._damping_sq = damping**2
        self._joint_lower = JOINT_LOWER.tolist()
        self._joint_upper = JOINT_UPPER.tolist()

    # The kinematics below work on plain Python floats: on 3-vectors numpy's per-call overhead
    # costs more than the arithmetic, and this runs once per control step inside env.step.

    def _kinematics(
        self, q: list[float]
    ) -> tuple[list[tuple[float, ...]], list[float], tuple[float, ...]]:
        """Per joint (z axis, origin) as 6 floats, the TCP position, and the TCP rotation's
        columns (x, y, z) flattened to 9 floats, for joint angles ``q`` (7 floats)."""
        x0, x1, x2, y0, y1, y2, z0, z1, z2 = 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0
        p0 = p1 = p2 = 0.0
        cos, sin = math.cos, math.sin
        frames = []
        for (twist, a, d), qi in zip(self._links, q):
            # Columns of R RotX(alpha): x, u = cos(alpha) y + sin(alpha) z and
            # z' = cos(alpha) z - sin(alpha) y; the joint's origin is a step a along x then d
            # along z'.
            if twist == 0:
                u0, u1, u2 = y0, y1, y2
            elif twist > 0:
                u0, u1, u2, z0, z1, z2 = z0, z1, z2, -y0, -y1, -y2
            else:
                u0, u1, u2, z0, z1, z2 = -z0, -z1, -z2, y0, y1, y2
            if a:
                p0, p1, p2 = p0 + a * x0, p1 + a * x1, p2 + a * x2
            if d:
                p0, p1, p2 = p0 + d * z0, p1 + d * z1, p2 + d * z2
            # Then RotZ(q): x' = c x + s u, y' = c u - s x.
            c, s = cos(qi), sin(qi)
            x0, x1, x2, y0, y1, y2 = (
                c * x0 + s * u0,
                c * x1 + s * u1,
                c * x2 + s * u2,
                c * u0 - s * x0,
                c * u1 - s * x1,
                c * u2 - s * x2,
            )
            frames.append((z0, z1, z2, p0, p1, p2))
        r = self._tcp_reach
        tcp = [p0 + r * z0, p1 + r * z1, p2 + r * z2]
        # The hand is rotated by HAND_YAW about the flange z axis.
        c, s = self._hand_cs
        axes = (
            c * x0 + s * y0,
            c * x1 + s * y1,
            c * x2 + s * y2,
            c * y0 - s * x0,
            c * y1 - s * x1,
            c * y2 - s * x2,
            z0,
            z1,
            z2,
        )
        return frames, tcp, axes

    @staticmethod
    def _joint_list(q: np.ndarray) -> list[float]:
        return np.asarray(q, dtype=np.float64).tolist()

    @staticmethod
    def _rotation(axes: tuple[float, ...]) -> np.ndarray:
        return np.array(axes).reshape(3, 3).T

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation matrix (3, 3) in the base frame for joint angles ``q``."""
        _, tcp, axes = self._kinematics(self._joint_list(q))
        return np.array(tcp), self._rotation(axes)

    @staticmethod
    def _jacobian_t(frames: list[tuple[float, ...]], tcp: list[float]) -> np.ndarray:
        """The transposed (7, 6) geometric Jacobian: one row per joint."""
        t0, t1, t2 = tcp
        rows = []
        for a0, a1, a2, o0, o1, o2 in frames:
            # Revolute joint: linear part z_i x (p_tcp - o_i), angular part z_i.
            d0, d1, d2 = t0 - o0, t1 - o1, t2 - o2
            rows.append((a1 * d2 - a2 * d1, a2 * d0 - a0 * d2, a0 * d1 - a1 * d0, a0, a1, a2))
        return np.array(rows)

    def jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TCP position, rotation and the (6, 7) geometric Jacobian (linear rows first)."""
        frames, tcp, axes = self._kinematics(self._joint_list(q))
        return np.array(tcp), self._rotation(axes), self._jacobian_t(frames, tcp).T

    @staticmethod
    def yaw(rotation: np.ndarray) -> float:
        """Yaw of a (roughly downward-pointing) TCP rotation about base z: angle of its x axis."""
        return math.atan2(rotation[1, 0], rotation[0, 0])

    def target_pose(self, q: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The TCP position and rotation that ``action`` commands from joint angles ``q``."""
        _, tcp, axes = self._kinematics(self._joint_list(q))
        target, yaw = self._target(tcp, axes, self._check_action(action))
        return np.array(target), down_rotation(yaw)

    def _check_action(self, action: np.ndarray) -> list[float]:
        """The action as clipped Python floats; rejects a wrong shape, NaN and inf."""
        if not (
            type(action) is np.ndarray
            and action.dtype.kind == "f"
            and action.shape == (self.action_dim,)
        ):
            # Lists, integer arrays, ...: the fast path above is the float arrays policies give.
            action = np.asarray(action, dtype=np.float64)
            if action.shape != (self.action_dim,):
                raise ValueError(f"action must have shape ({self.action_dim},), got {action.shape}")
        act = action.tolist()
        # A finite sum means every entry is finite (NaN and inf propagate); only an overflowing
        # sum of huge finite values needs the per-entry check.
        if not math.isfinite(sum(act)) and not all(map(math.isfinite, act)):
            raise ValueError(f"action contains NaN or inf: {act}")
        # Conditional expressions rather than min/max: builtin calls cost more here.
        return [1.0 if a > 1.0 else -1.0 if a < -1.0 else a for a in act]

    def _target(
        self, tcp: list[float], axes: tuple[float, ...], act: list[float]
    ) -> tuple[list[float], float]:
        """Commanded TCP position (clipped to the workspace) and yaw."""
        step = self.max_step
        target = []
        for p, a, lo, hi in zip(tcp, act, self._ws_low, self._ws_high):
            t = p + step * a
            target.append(hi if t > hi else lo if t < lo else t)
        if self.use_yaw:
            return target, math.atan2(axes[1], axes[0]) + self.max_yaw_step * act[4]
        return target, 0.0

    def action_to_targets(self, q: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, float]:
        """Joint position targets (7,) and a finger opening target (m) for one action.

        Args:
            q: Measured joint positions (7,), in the order of ``PANDA_SPEC.joint_names``.
            action: Normalised action (4,) or (5,) with ``use_yaw``; values outside [-1, 1] are
                clipped, NaN or inf raise ``ValueError``.
        """
        act = self._check_action(action)
        q_list = np.asarray(q, dtype=np.float64).tolist()
        frames, tcp, axes = self._kinematics(q_list)
        (t0, t1, t2), yaw = self._target(tcp, axes, act)
        # Rotation error 0.5 * sum_i (a_i x b_i) over current (a) and target (b) axes: sin(angle)
        # times the axis, accurate for the small per-step rotations used here. Target axes of
        # down_rotation(yaw): x = (c, s, 0), y = (s, -c, 0), z = (0, 0, -1).
        c, s = math.cos(yaw), math.sin(yaw)
        ax0, ax1, ax2, ay0, ay1, ay2, az0, az1, az2 = axes
        err = (
            t0 - tcp[0],
            t1 - tcp[1],
            t2 - tcp[2],
            0.5 * (-ax2 * s + ay2 * c - az1),
            0.5 * (ax2 * c + ay2 * s + az0),
            0.5 * (ax0 * s - ax1 * c - ay0 * c - ay1 * s),
        )
        # dq = J+ err + (I - J+ J) pull = J^T (J J^T + damp)^-1 (err - J pull) + pull, with J+
        # the damped pseudo-inverse and pull = nullspace_gain * (home - q): one 6x6 solve for
        # both the task and the null-space term. The rows [J^T | pull] (7 x 7) go through numpy
        # once: S^T S holds J J^T in its leading 6x6 block and J pull in its last column. The
        # rest stays on Python floats, where numpy's per-call cost would dominate.
        gain = self.nullspace_gain
        k0, k1, k2 = tcp
        rows = []
        flat: list[float] = []
        for (a0, a1, a2, o0, o1, o2), home, qi in zip(frames, self._home_pull, q_list):
            # Row i of J^T as in _jacobian_t, then joint i's pull.
            d0, d1, d2 = k0 - o0, k1 - o1, k2 - o2
            row = (
                a1 * d2 - a2 * d1,
                a2 * d0 - a0 * d2,
                a0 * d1 - a1 * d0,
                a0,
                a1,
                a2,
                home - gain * qi,
            )
            rows.append(row)
            flat += row
        stacked = np.array(flat).reshape(7, 7)
        gram = stacked.T.dot(stacked).tolist()  # ndarray.dot: less call overhead than @
        y0, y1, y2, y3, y4, y5 = _solve_spd6(
            gram, [e - g[6] for e, g in zip(err, gram)], self._damping_sq
        )
        # Bound the step per joint, then keep the target inside the joint limits.
        limit = self.max_joint_step
        q_target = []
        for (v0, v1, v2, a0, a1, a2, p), qi, lo, hi in zip(
            rows, q_list, self._joint_lower, self._joint_upper
        ):
            dq = v0 * y0 + v1 * y1 + v2 * y2 + a0 * y3 + a1 * y4 + a2 * y5 + p
            dq = limit if dq > limit else -limit if dq < -limit else dq
            qt = qi + dq
            q_target.append(hi if qt > hi else lo if qt < lo else qt)
        return np.array(q_target), 0.5 * (act[3] + 1.0) * GRIPPER_MAX_OPENING
