"""The Panda arm scene of :mod:`sims.arm` in PyBullet: arm, gripper, table and block.

A second physics engine for the same robot and task geometry: the stand-in arm hardware node
(:mod:`hw.standin_arm`) runs it behind ros2_control-style topics, so a policy trained in the
MuJoCo scene meets different contact, friction and actuator models when it is rehearsed over
ROS 2. The kinematics are identical (the URDF comes from the same numbers as the MJCF); the
joint servos are PyBullet's velocity-constraint position motors instead of MuJoCo's PD
actuators, and the arm is gravity-loaded instead of gravity-compensated.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from robolearn.robots.panda import FINGER_JOINT_NAMES, GRIPPER_MAX_OPENING, JOINT_NAMES
from sims.pybullet.panda_urdf import JOINT_EFFORT, TCP_LINK, build_urdf

#: Half edge of the block and the table's top surface height (as in :mod:`sims.arm.model`).
BLOCK_HALF = 0.02
TABLE_CENTER = (0.4, 0.0, -0.025)
TABLE_HALF = (0.6, 0.7, 0.025)
#: Nominal mass of the block (kg), scaled by :attr:`ArmPhysics.object_mass_scale`.
BLOCK_MASS = 0.1
FINGER_FRICTION = 1.5
TABLE_FRICTION = 1.0


@dataclasses.dataclass(frozen=True)
class ArmPhysics:
    """Physics knobs of the PyBullet twin, including deliberate offsets from the training sim.

    Attributes:
        timestep: Physics step in seconds.
        position_gain: PyBullet position-motor gain of the arm joints (fraction of the position
            error corrected per step by the velocity constraint). 0.07 makes a joint target
            streamed at 20 Hz lag by about a sixth of a step, as the MuJoCo servo does.
        velocity_gain: Velocity-motor gain of the arm joints.
        effort_scale: Joint torque limits as a multiple of the Panda's datasheet efforts. Above
            1 because the real controller compensates gravity on top of its servo torque.
        finger_force: Force limit of each finger's motor, in N (the grip force on a block).
        object_mass_scale: Multiplies the block's mass (a parameter offset vs. the scene).
        object_friction_scale: Multiplies the block's sampled sliding friction.
        link_mass_scale: Multiplies the arm links' masses (gravity load on the servos).
        joint_damping: Viscous damping of the arm joints, in N m s / rad.
    """

    timestep: float = 0.002
    position_gain: float = 0.07
    velocity_gain: float = 1.0
    effort_scale: float = 4.0
    finger_force: float = 20.0
    object_mass_scale: float = 1.0
    object_friction_scale: float = 1.0
    link_mass_scale: float = 1.0
    joint_damping: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"ArmPhysics.{field.name} must be finite and >= 0, got {value}")
        if self.timestep <= 0:
            raise ValueError(f"ArmPhysics.timestep must be positive, got {self.timestep}")


class PyBulletArm:
    """The arm scene in its own PyBullet (DIRECT) instance.

    Args:
        with_block: Add the block (push and pick-place).
        physics: Physics parameters and offsets; ``None`` for the defaults.
    """

    def __init__(self, with_block: bool = True, physics: ArmPhysics | None = None) -> None:
        import pybullet
        from pybullet_utils.bullet_client import BulletClient

        self.physics = physics or ArmPhysics()
        self.with_block = with_block
        self._p = BulletClient(connection_mode=pybullet.DIRECT)
        p = self._p
        p.setGravity(0.0, 0.0, -9.81)
        p.setTimeStep(self.physics.timestep)
        # loadURDF needs a file; the URDF is generated, so write it to a temporary one.
        fd, path = tempfile.mkstemp(suffix=".urdf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(build_urdf())
            self.robot = p.loadURDF(
                path, useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE
            )
        finally:
            os.unlink(path)
        joints = {
            p.getJointInfo(self.robot, j)[1].decode(): j for j in range(p.getNumJoints(self.robot))
        }
        links = {
            p.getJointInfo(self.robot, j)[12].decode(): j for j in range(p.getNumJoints(self.robot))
        }
        self._arm = [joints[name] for name in JOINT_NAMES]
        self._fingers = [joints[name] for name in FINGER_JOINT_NAMES]
        self._tcp = links[TCP_LINK]
        for link in range(-1, p.getNumJoints(self.robot)):
            mass = p.getDynamicsInfo(self.robot, link)[0]
            p.changeDynamics(self.robot, link, mass=mass * self.physics.link_mass_scale)
        for j in self._arm:
            p.changeDynamics(self.robot, j, jointDamping=self.physics.joint_damping)
        for j in self._fingers:
            p.changeDynamics(self.robot, j, lateralFriction=FINGER_FRICTION)
        self._efforts = [e * self.physics.effort_scale for e in JOINT_EFFORT]

        table_shape = p.createCollisionShape(pybullet.GEOM_BOX, halfExtents=TABLE_HALF)
        self.table = p.createMultiBody(0.0, table_shape, basePosition=TABLE_CENTER)
        p.changeDynamics(self.table, -1, lateralFriction=TABLE_FRICTION)
        self.block: int | None = None
        if with_block:
            block_shape = p.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[BLOCK_HALF] * 3)
            self.block = p.createMultiBody(
                BLOCK_MASS, block_shape, basePosition=(0.5, 0.0, BLOCK_HALF)
            )
        self._q_target = np.zeros(7)
        self._finger_target = GRIPPER_MAX_OPENING / 2

    def reset(
        self,
        joint_pos: np.ndarray,
        object_xy: np.ndarray | None = None,
        object_mass: float | None = None,
        object_friction: float | None = None,
    ) -> None:
        """Teleport the arm to ``joint_pos`` (at rest, gripper open) and place the block.

        ``object_mass`` and ``object_friction`` are the scene's nominal values; the physics
        offsets (:class:`ArmPhysics`) scale them.
        """
        p = self._p
        for j, q in zip(self._arm, np.asarray(joint_pos, dtype=np.float64)):
            p.resetJointState(self.robot, j, float(q), 0.0)
        for j in self._fingers:
            p.resetJointState(self.robot, j, GRIPPER_MAX_OPENING / 2, 0.0)
        self.set_targets(joint_pos, GRIPPER_MAX_OPENING)
        if self.block is not None:
            if object_xy is None:
                raise ValueError("the scene has a block: reset needs object_xy")
            x, y = (float(v) for v in object_xy)
            p.resetBasePositionAndOrientation(self.block, (x, y, BLOCK_HALF), (0, 0, 0, 1))
            p.resetBaseVelocity(self.block, (0, 0, 0), (0, 0, 0))
            dynamics = {}
            if object_mass is not None:
                dynamics["mass"] = object_mass * self.physics.object_mass_scale
            if object_friction is not None:
                dynamics["lateralFriction"] = object_friction * self.physics.object_friction_scale
            p.changeDynamics(self.block, -1, **dynamics)

    def set_targets(self, joint_pos: np.ndarray, opening: float) -> None:
        """Servo targets: arm joint positions (7,) and the finger opening in m (both fingers)."""
        self._q_target = np.asarray(joint_pos, dtype=np.float64).copy()
        self._finger_target = 0.5 * float(np.clip(opening, 0.0, GRIPPER_MAX_OPENING))

    def step(self, n: int = 1) -> None:
        """Advance the physics by ``n`` timesteps, servoing to the current targets."""
        import pybullet

        p = self._p
        physics = self.physics
        for _ in range(n):
            p.setJointMotorControlArray(
                self.robot,
                self._arm,
                pybullet.POSITION_CONTROL,
                targetPositions=self._q_target.tolist(),
                forces=self._efforts,
                positionGains=[physics.position_gain] * 7,
                velocityGains=[physics.velocity_gain] * 7,
            )
            p.setJointMotorControlArray(
                self.robot,
                self._fingers,
                pybullet.POSITION_CONTROL,
                targetPositions=[self._finger_target] * 2,
                forces=[physics.finger_force] * 2,
            )
            p.stepSimulation()

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions, velocities and applied efforts of the arm joints then the finger joints."""
        states = self._p.getJointStates(self.robot, self._arm + self._fingers)
        return (
            np.array([s[0] for s in states]),
            np.array([s[1] for s in states]),
            np.array([s[3] for s in states]),
        )

    def tcp_position(self) -> np.ndarray:
        """World position of the tool centre point."""
        return np.array(
            self._p.getLinkState(self.robot, self._tcp, computeForwardKinematics=True)[4]
        )

    def block_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The block's position and orientation quaternion (x, y, z, w)."""
        if self.block is None:
            raise ValueError("the scene has no block")
        pos, quat = self._p.getBasePositionAndOrientation(self.block)
        return np.array(pos), np.array(quat)

    def close(self) -> None:
        """Disconnect the PyBullet instance."""
        if self._p is not None:
            self._p.disconnect()
            self._p = None
