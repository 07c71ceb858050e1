"""Batched quadrotor dynamics in torch: the L2F equations, RK4 at 100 Hz.

State of N quadrotors: one ``(N, 17)`` tensor, columns ``[p (3), q (4), v (3), omega (3),
motors (4)]``: position (world, z up, m), unit quaternion (w, x, y, z) body FLU -> world, velocity
(world, m/s), angular velocity (body, rad/s), normalised motor speeds u in [0, 1]. Every vehicle
has its own parameters; nothing loops over vehicles, and the same code runs on CPU or CUDA.

Equations (quadrotor_sims_and_ros2.md section 1): per rotor thrust ``f_i = c0 + c1 u_i + c2 u_i^2``
on the motor *state*, along body +z; torque ``sum r_i x F_i + d_i k_m f_i z`` (``d_i`` the yaw
directions); ``dv/dt = R F / m + g + F_dist / m``; ``domega/dt = J^-1 (tau - omega x J omega)``;
``dq/dt = q (x) (0, omega) / 2``; motors ``du/dt = (u_cmd - u) / tau`` with ``tau_rise`` when
``u_cmd >= u`` and ``tau_fall`` otherwise, decided at every RK4 stage as L2F does. After each
step the quaternion is renormalised and the state clamped to +-1e5.
"""

from __future__ import annotations

import torch

from robolearn.robots.quadrotor import MOTOR_YAW_DIRECTIONS
from sims.quadrotor.params import GRAVITY, QuadrotorParams

STATE_DIM = 17
POSITION = slice(0, 3)
QUATERNION = slice(3, 7)
VELOCITY = slice(7, 10)
OMEGA = slice(10, 13)
MOTORS = slice(13, 17)
DT = 0.01
STATE_LIMIT = 1e5


def initial_state(
    n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(n, 17)`` states at the origin, level, at rest, motors off."""
    state = torch.zeros(n, STATE_DIM, device=device, dtype=dtype)
    state[:, 3] = 1.0
    return state


class QuadrotorDynamics:
    """RK4 integrator of N quadrotors with per-vehicle parameters.

    Args:
        params: The vehicles; their device and dtype are the simulation's.
        dt: Integration (and control) step, s.

    Call :meth:`set_params` after changing ``params`` in place: the integrator caches derived
    per-vehicle constants (inverse mass and inertia, torque mixing) so a step does not
    recompute them.
    """

    def __init__(self, params: QuadrotorParams, dt: float = DT) -> None:
        self.dt = dt
        self.set_params(params)

    def set_params(self, params: QuadrotorParams) -> None:
        """Use ``params`` (and refresh the cached constants derived from them)."""
        self.params = params
        # Constants are stored vehicle-last, matching the vehicle-last layout the integrator
        # works in (see step).
        yaw = torch.as_tensor(MOTOR_YAW_DIRECTIONS, device=params.device, dtype=params.dtype)
        self._c0, self._c1, self._c2 = (
            c.T.contiguous() for c in params.thrust_coefficients.unbind(-1)
        )
        rx, ry = params.rotor_positions[..., 0].T, params.rotor_positions[..., 1].T
        # Torque per unit thrust of each rotor: r x (0, 0, f) = (r_y f, -r_x f, 0), plus the yaw
        # reaction d_i k_m f about z. Shape (3, 4, N).
        self._mix = torch.stack([ry, -rx, yaw[:, None] * params.torque_constant], 0).contiguous()
        self._inv_mass = 1.0 / params.mass
        self._inertia = params.inertia.T.contiguous()
        self._inv_inertia = (1.0 / params.inertia).T.contiguous()
        self._inv_tau_rise = 1.0 / params.tau_rise
        self._inv_tau_fall = 1.0 / params.tau_fall

    def derivative(
        self, state: torch.Tensor, u_cmd: torch.Tensor, force: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, 17)`` time derivative of ``state`` under motor setpoints ``u_cmd`` (N, 4) and an
        external world-frame force ``force`` (N, 3) (None: no force)."""
        force_t = None if force is None else force.T.contiguous()
        return self._derivative(state.T.contiguous(), u_cmd.T.contiguous(), force_t).T

    def _derivative(
        self, x: torch.Tensor, u_cmd: torch.Tensor, force: torch.Tensor | None
    ) -> torch.Tensor:
        # Vehicle-last layout: x is (17, N), u_cmd (4, N), force (3, N), so every state
        # component is a contiguous row and each elementwise op streams through memory.
        qw, qx, qy, qz = x[3], x[4], x[5], x[6]
        wx, wy, wz = x[10], x[11], x[12]
        u = x[MOTORS]

        f = self._c0 + self._c1 * u + self._c2 * u * u
        # Explicit sums over the 4 rotors: a reduction kernel could add in a batch-size
        # dependent order, and a single env must match its twin in a vector env bit for bit.
        thrust = f[0] + f[1] + f[2] + f[3]
        g = self._mix * f
        torque = g[:, 0] + g[:, 1] + g[:, 2] + g[:, 3]

        # R (0, 0, T) / m: the third column of R scaled by T / m.
        a = thrust * self._inv_mass
        acc_x = 2 * (qx * qz + qw * qy) * a
        acc_y = 2 * (qy * qz - qw * qx) * a
        acc_z = (1 - 2 * (qx * qx + qy * qy)) * a - GRAVITY
        if force is not None:
            acc_x = acc_x + force[0] * self._inv_mass
            acc_y = acc_y + force[1] * self._inv_mass
            acc_z = acc_z + force[2] * self._inv_mass

        jx, jy, jz = self._inertia[0], self._inertia[1], self._inertia[2]
        # omega x J omega for diagonal J.
        gyro_x = wy * (jz * wz) - wz * (jy * wy)
        gyro_y = wz * (jx * wx) - wx * (jz * wz)
        gyro_z = wx * (jy * wy) - wy * (jx * wx)
        inv_j = self._inv_inertia

        rate = torch.where(u_cmd >= u, self._inv_tau_rise, self._inv_tau_fall)
        rows = (
            x[7],
            x[8],
            x[9],
            -0.5 * (qx * wx + qy * wy + qz * wz),
            0.5 * (qw * wx + qy * wz - qz * wy),
            0.5 * (qw * wy - qx * wz + qz * wx),
            0.5 * (qw * wz + qx * wy - qy * wx),
            acc_x,
            acc_y,
            acc_z,
            (torque[0] - gyro_x) * inv_j[0],
            (torque[1] - gyro_y) * inv_j[1],
            (torque[2] - gyro_z) * inv_j[2],
        )
        return torch.cat((torch.stack(rows, 0), (u_cmd - u) * rate), 0)

    def step(
        self, state: torch.Tensor, action: torch.Tensor, force: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The state one ``dt`` later under normalised actions ``action`` (N, 4) in [-1, 1]
        (clamped), held constant over the step; returns a new ``(N, 17)`` tensor."""
        # Integrate in the vehicle-last layout; one transpose in and one out per step.
        x = state.T.contiguous()
        u_cmd = ((action.clamp(-1.0, 1.0) + 1.0) * 0.5).T.contiguous()
        f = None if force is None else force.T.contiguous()
        dt = self.dt
        k1 = self._derivative(x, u_cmd, f)
        k2 = self._derivative(x + (0.5 * dt) * k1, u_cmd, f)
        k3 = self._derivative(x + (0.5 * dt) * k2, u_cmd, f)
        k4 = self._derivative(x + dt * k3, u_cmd, f)
        nxt = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        # Explicit sum of squares (not a norm reduction), for the reason given above.
        q = nxt[QUATERNION]
        nxt[QUATERNION] = q / (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt()
        return nxt.clamp_(-STATE_LIMIT, STATE_LIMIT).T.contiguous()
