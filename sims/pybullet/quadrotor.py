"""A quadrotor in PyBullet: the rigid body of a :mod:`sims.quadrotor` preset, driven by four
rotor forces, for the stand-in quadrotor hardware node (:mod:`hw.standin_quadrotor`).

A second engine for the same vehicle: PyBullet integrates the rigid body (its own integrator,
not the training simulator's RK4); this module adds what PyBullet lacks, the L2F motor model.
Every physics step (``timestep``, 400 Hz by default):

* each motor state moves towards its setpoint by the exact solution of the first-order lag
  ``du/dt = (u_cmd - u) / tau`` over the step, with ``tau_rise`` when speeding up and
  ``tau_fall`` when slowing down;
* each rotor's thrust ``f_i = c0 + c1 u_i + c2 u_i^2`` pushes along the body z axis at the
  rotor's position, plus the yaw reaction torque ``d_i k_m f_i`` about body z;
* gravity is 9.81 m/s^2 down; PyBullet's default velocity damping is switched off; there is no
  ground (free space, as in the training simulator).

Frames as in :mod:`sims.quadrotor.dynamics`: world ENU (z up), body FLU, motors
[FR, BR, BL, FL]. Forces are applied in the world frame (PyBullet's ``LINK_FRAME`` flag for a
base has had frame bugs across versions; world-frame forces at world-frame points do not).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from robolearn.robots.quadrotor import MOTOR_YAW_DIRECTIONS
from sims.quadrotor.params import GRAVITY, PRESETS, preset


@dataclasses.dataclass(frozen=True)
class QuadrotorPhysics:
    """Deliberate offsets of the stand-in vehicle from the preset it is built from.

    Attributes:
        mass_scale: Multiplies the mass.
        inertia_scale: Multiplies the inertia diagonal.
        thrust_scale: Multiplies every rotor's thrust curve (motor constants, or a sagging
            battery).
        torque_constant_scale: Multiplies the yaw reaction torque per unit thrust.
        tau_scale: Multiplies both motor time constants (rise and fall).
        timestep: Physics step in seconds.
    """

    mass_scale: float = 1.0
    inertia_scale: float = 1.0
    thrust_scale: float = 1.0
    torque_constant_scale: float = 1.0
    tau_scale: float = 1.0
    timestep: float = 0.0025

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"QuadrotorPhysics.{field.name} must be a positive number, got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class Vehicle:
    """The numbers of one quadrotor (float64 numpy, motor order [FR, BR, BL, FL]).

    Attributes:
        mass: kg.
        inertia: (3,) diagonal of the body inertia, kg m^2.
        rotor_positions: (4, 3) in the body frame, m.
        thrust_coefficients: (4, 3) per-motor ``c0, c1, c2`` (N).
        torque_constant: Yaw reaction torque per unit thrust, m.
        tau_rise: Motor time constant while speeding up, s.
        tau_fall: Motor time constant while slowing down, s.
    """

    mass: float
    inertia: np.ndarray
    rotor_positions: np.ndarray
    thrust_coefficients: np.ndarray
    torque_constant: float
    tau_rise: float
    tau_fall: float

    @classmethod
    def from_preset(cls, name: str, physics: QuadrotorPhysics | None = None) -> Vehicle:
        """The ``crazyflie`` or ``x500`` preset of :mod:`sims.quadrotor.params`, offset by
        ``physics``."""
        import torch

        if name not in PRESETS:
            raise ValueError(f"vehicle must be one of {PRESETS}, got {name!r}")
        physics = physics or QuadrotorPhysics()
        p = preset(name, 1, dtype=torch.float64)
        return cls(
            mass=float(p.mass[0]) * physics.mass_scale,
            inertia=p.inertia[0].numpy() * physics.inertia_scale,
            rotor_positions=p.rotor_positions[0].numpy(),
            thrust_coefficients=p.thrust_coefficients[0].numpy() * physics.thrust_scale,
            torque_constant=float(p.torque_constant[0]) * physics.torque_constant_scale,
            tau_rise=float(p.tau_rise[0]) * physics.tau_scale,
            tau_fall=float(p.tau_fall[0]) * physics.tau_scale,
        )

    def thrust(self, u: np.ndarray) -> np.ndarray:
        """(4,) rotor thrusts (N) at motor states ``u``."""
        c = self.thrust_coefficients
        return c[:, 0] + c[:, 1] * u + c[:, 2] * u * u

    def setpoint_for_thrust(self, fraction: float) -> float:
        """The equal motor setpoint whose four thrusts carry ``fraction`` of the weight."""
        c0, c1, c2 = self.thrust_coefficients[0]
        target = fraction * self.mass * GRAVITY / 4
        if c2 > 0:
            return float((-c1 + math.sqrt(max(c1 * c1 - 4 * c2 * (c0 - target), 0.0))) / (2 * c2))
        return float((target - c0) / c1)


class PyBulletQuadrotor:
    """One quadrotor in its own PyBullet (DIRECT) instance.

    Args:
        vehicle: The vehicle's numbers (see :meth:`Vehicle.from_preset`).
        timestep: Physics step in seconds.
    """

    def __init__(self, vehicle: Vehicle, timestep: float = 0.0025) -> None:
        import pybullet
        from pybullet_utils.bullet_client import BulletClient

        self.vehicle = vehicle
        self.timestep = float(timestep)
        self._p = BulletClient(connection_mode=pybullet.DIRECT)
        p = self._p
        p.setGravity(0.0, 0.0, -GRAVITY)
        p.setTimeStep(self.timestep)
        # No collision shape: free space, and the inertia is the vehicle's, not a shape's.
        self.body = p.createMultiBody(baseMass=vehicle.mass, baseCollisionShapeIndex=-1)
        p.changeDynamics(
            self.body,
            -1,
            localInertiaDiagonal=vehicle.inertia.tolist(),
            linearDamping=0.0,
            angularDamping=0.0,
        )
        self._world = pybullet.WORLD_FRAME
        self._yaw = MOTOR_YAW_DIRECTIONS * vehicle.torque_constant
        self.motors = np.zeros(4)
        self.command = np.zeros(4)

    def reset(self, state: np.ndarray) -> None:
        """Teleport to a 17-D state ``[p, q (w, x, y, z), v, omega_body, motors]`` (world ENU,
        body FLU); the motor command is set to the motor state until the next command."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (17,) or not np.all(np.isfinite(state)):
            raise ValueError(f"a state is 17 finite numbers, got shape {state.shape}")
        q = state[3:7] / np.linalg.norm(state[3:7])
        xyzw = [q[1], q[2], q[3], q[0]]
        self._p.resetBasePositionAndOrientation(self.body, state[0:3].tolist(), xyzw)
        rotation = np.asarray(self._p.getMatrixFromQuaternion(xyzw)).reshape(3, 3)
        self._p.resetBaseVelocity(
            self.body, state[7:10].tolist(), (rotation @ state[10:13]).tolist()
        )
        self.motors = np.clip(state[13:17], 0.0, 1.0)
        self.command = self.motors.copy()

    def set_command(self, setpoint: np.ndarray) -> None:
        """Motor setpoints (4,) in [0, 1], policy order (clipped)."""
        self.command = np.clip(np.asarray(setpoint, dtype=np.float64), 0.0, 1.0)

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps under the current command."""
        p, v, dt = self._p, self.vehicle, self.timestep
        for _ in range(n):
            tau = np.where(self.command >= self.motors, v.tau_rise, v.tau_fall)
            self.motors += (1.0 - np.exp(-dt / tau)) * (self.command - self.motors)
            thrust = v.thrust(self.motors)
            position, xyzw = p.getBasePositionAndOrientation(self.body)
            rotation = np.asarray(p.getMatrixFromQuaternion(xyzw)).reshape(3, 3)
            up = rotation[:, 2]
            for i in range(4):
                at = np.asarray(position) + rotation @ v.rotor_positions[i]
                p.applyExternalForce(
                    self.body, -1, (thrust[i] * up).tolist(), at.tolist(), self._world
                )
            yaw_torque = float(self._yaw @ thrust)
            p.applyExternalTorque(self.body, -1, (yaw_torque * up).tolist(), self._world)
            p.stepSimulation()

    def state(self) -> np.ndarray:
        """The 17-D state ``[p, q (w, x, y, z), v, omega_body, motors]``."""
        position, xyzw = self._p.getBasePositionAndOrientation(self.body)
        velocity, omega_world = self._p.getBaseVelocity(self.body)
        rotation = np.asarray(self._p.getMatrixFromQuaternion(xyzw)).reshape(3, 3)
        x, y, z, w = xyzw
        return np.concatenate(
            [
                position,
                [w, x, y, z],
                velocity,
                rotation.T @ np.asarray(omega_world),
                self.motors,
            ]
        )

    def close(self) -> None:
        """Disconnect the PyBullet instance."""
        if self._p is not None:
            self._p.disconnect()
            self._p = None
