"""Quadrotor parameters: a batch of vehicles, the L2F presets and RAPTOR's vehicle sampler.

Every field is a tensor with a leading batch dimension, so one :class:`QuadrotorParams` holds N
different vehicles that the batched dynamics step together. Units: kg, m, s, N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from robolearn.robots.quadrotor import MOTOR_POSITION_SIGNS

GRAVITY = 9.81

# Nominal L2F Crazyflie (parameters/dynamics/crazyflie.h); mass includes the SD-card and flow
# decks. The base vehicle of RAPTOR's sampler.
CF_MASS = 0.027 + 0.0017 + 0.0003 + 0.0016
CF_ROTOR_XY = 0.028
CF_THRUST = (0.00352526, 0.01437313, 0.09223048)
CF_TORQUE_CONSTANT = 4.665e-3
CF_TAU_RISE = 0.0555
CF_TAU_FALL = 0.2494
CF_INERTIA = (9.417e-6, 9.644e-6, 1.746e-5)

# L2F x500 "real" (x500_real.h), already in the Crazyflie motor order. Quirk: that file writes
# J[0][0] as `2.1705-2` (= 0.1705), but its own J_inv literal corresponds to 0.0217, the value
# consistent with J_yy; we use 0.0217.
X500_MASS = 2.0
X500_ROTOR_XY = 0.1768
X500_THRUST = (0.0, 0.0, 15.926)
X500_TORQUE_CONSTANT = 0.10847
X500_TAU = 0.054
X500_INERTIA = (0.0217, 0.0213, 0.0394)

# RAPTOR's sampling ranges (raptor.md section 5).
THRUST_TO_WEIGHT_RANGE = (1.5, 5.0)
MASS_RANGE = (0.02, 5.0)
TORQUE_TO_INERTIA_RANGE = (40.0, 1200.0)
MASS_SIZE_DEVIATION = 0.1
TORQUE_CONSTANT_RANGE = (0.005, 0.05)
TAU_RISE_RANGE = (0.03, 0.10)
TAU_FALL_RANGE = (0.03, 0.30)
DISTURBANCE_FRACTION = 0.3
#: Initial positions lie within this many arm lengths of the target per axis; episodes end
#: beyond TERMINATION_ARMS arm lengths (RAPTOR's scale-dependent MDP).
INIT_POSITION_ARMS = 10.0
TERMINATION_ARMS = 20.0

PRESETS = ("crazyflie", "x500")


@dataclasses.dataclass
class QuadrotorParams:
    """Physical parameters of a batch of N quadrotors (motor order of ``QUADROTOR_SPEC``).

    Attributes:
        mass: ``(N,)`` kg.
        inertia: ``(N, 3)`` diagonal of the body inertia, kg m^2.
        rotor_positions: ``(N, 4, 3)`` rotor positions in the body frame, m.
        thrust_coefficients: ``(N, 4, 3)`` per-motor thrust polynomial ``c0 + c1 u + c2 u^2``
            (N) in the motor state ``u`` in [0, 1].
        torque_constant: ``(N,)`` yaw reaction torque per unit thrust k_m, m.
        tau_rise: ``(N,)`` motor time constant while speeding up, s.
        tau_fall: ``(N,)`` motor time constant while slowing down, s.
        disturbance_std: ``(N,)`` per-axis standard deviation of the constant disturbance force
            drawn at each episode start, N (0 for the nominal presets).
    """

    mass: torch.Tensor
    inertia: torch.Tensor
    rotor_positions: torch.Tensor
    thrust_coefficients: torch.Tensor
    torque_constant: torch.Tensor
    tau_rise: torch.Tensor
    tau_fall: torch.Tensor
    disturbance_std: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.mass.shape[0]

    @property
    def device(self) -> torch.device:
        return self.mass.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mass.dtype

    @property
    def arm_length(self) -> torch.Tensor:
        """``(N,)`` largest rotor distance from the centre in the xy plane, m."""
        return self.rotor_positions[..., :2].norm(dim=-1).amax(dim=-1)

    @property
    def max_thrust(self) -> torch.Tensor:
        """``(N, 4)`` thrust of each motor at full speed (u = 1), N."""
        return self.thrust_coefficients.sum(dim=-1)

    @property
    def thrust_to_weight(self) -> torch.Tensor:
        """``(N,)`` total full-speed thrust over weight."""
        return self.max_thrust.sum(dim=-1) / (self.mass * GRAVITY)

    def hover_command(self) -> torch.Tensor:
        """``(N, 4)`` motor setpoints u in [0, 1] whose thrusts add up to the weight.

        Each motor carries a quarter of the weight (exact for symmetric rotor layouts).
        """
        c0, c1, c2 = self.thrust_coefficients.unbind(-1)
        target = (self.mass * GRAVITY / 4).unsqueeze(-1)
        # Positive root of c2 u^2 + c1 u + (c0 - target) = 0; the linear root where c2 = 0.
        disc = (c1 * c1 - 4 * c2 * (c0 - target)).clamp(min=0)
        quadratic = (-c1 + disc.sqrt()) / (2 * c2).clamp(min=1e-12)
        linear = (target - c0) / c1.clamp(min=1e-12)
        return torch.where(c2 > 0, quadratic, linear)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> QuadrotorParams:
        """A copy on ``device`` with floating dtype ``dtype``."""
        return QuadrotorParams(
            **{
                f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                for f in dataclasses.fields(self)
            }
        )

    def select(self, index: torch.Tensor | slice | list[int]) -> QuadrotorParams:
        """The vehicles at ``index`` (a new batch)."""
        return QuadrotorParams(
            **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        )

    def assign(self, index: torch.Tensor | list[int], other: QuadrotorParams) -> None:
        """Overwrite the vehicles at ``index`` with ``other`` (in place)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[index] = getattr(other, f.name).to(self.device, self.dtype)

    @staticmethod
    def cat(batches: list[QuadrotorParams]) -> QuadrotorParams:
        """Concatenate batches along the batch dimension."""
        return QuadrotorParams(
            **{
                f.name: torch.cat([getattr(b, f.name) for b in batches])
                for f in dataclasses.fields(QuadrotorParams)
            }
        )


def _from_numpy(
    mass: np.ndarray,
    inertia: np.ndarray,
    rotor_xy: np.ndarray,
    thrust: np.ndarray,
    torque_constant: np.ndarray,
    tau_rise: np.ndarray,
    tau_fall: np.ndarray,
    disturbance_std: np.ndarray,
    device: torch.device | str,
    dtype: torch.dtype,
) -> QuadrotorParams:
    """Build a batch from float64 arrays: ``rotor_xy`` (N,) is the per-axis rotor offset and
    ``thrust`` (N, 3) one polynomial shared by the four motors."""
    n = mass.shape[0]
    positions = np.zeros((n, 4, 3))
    positions[..., :2] = rotor_xy[:, None, None] * MOTOR_POSITION_SIGNS
    fields = {
        "mass": mass,
        "inertia": inertia,
        "rotor_positions": positions,
        "thrust_coefficients": np.repeat(thrust[:, None, :], 4, axis=1),
        "torque_constant": torque_constant,
        "tau_rise": tau_rise,
        "tau_fall": tau_fall,
        "disturbance_std": disturbance_std,
    }
    return QuadrotorParams(
        **{k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in fields.items()}
    )


def _preset_numpy(name: str, n: int) -> dict[str, np.ndarray]:
    if name == "crazyflie":
        values = (
            CF_MASS,
            CF_INERTIA,
            CF_ROTOR_XY,
            CF_THRUST,
            CF_TORQUE_CONSTANT,
            CF_TAU_RISE,
            CF_TAU_FALL,
        )
    elif name == "x500":
        values = (
            X500_MASS,
            X500_INERTIA,
            X500_ROTOR_XY,
            X500_THRUST,
            X500_TORQUE_CONSTANT,
            X500_TAU,
            X500_TAU,
        )
    else:
        raise ValueError(f"unknown quadrotor preset {name!r}; known: {PRESETS}")
    mass, inertia, rotor_xy, thrust, k_m, tau_rise, tau_fall = values
    return {
        "mass": np.full(n, mass),
        "inertia": np.tile(np.asarray(inertia), (n, 1)),
        "rotor_xy": np.full(n, rotor_xy),
        "thrust": np.tile(np.asarray(thrust), (n, 1)),
        "torque_constant": np.full(n, k_m),
        "tau_rise": np.full(n, tau_rise),
        "tau_fall": np.full(n, tau_fall),
        "disturbance_std": np.zeros(n),
    }


def preset(
    name: str,
    n: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> QuadrotorParams:
    """``n`` copies of the nominal ``"crazyflie"`` or ``"x500"`` (no disturbance force)."""
    return _from_numpy(**_preset_numpy(name, n), device=device, dtype=dtype)


def crazyflie(n: int = 1, **kwargs: Any) -> QuadrotorParams:
    """The nominal L2F Crazyflie (0.0306 kg with decks, T/W ~ 1.47)."""
    return preset("crazyflie", n, **kwargs)


def x500(n: int = 1, **kwargs: Any) -> QuadrotorParams:
    """The L2F x500 (2 kg, T/W ~ 3.25)."""
    return preset("x500", n, **kwargs)


def sample_params(
    n: int,
    seed: int | np.random.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> QuadrotorParams:
    """``n`` vehicles from RAPTOR's factorised distribution (raptor.md section 5).

    Starting from the nominal Crazyflie: thrust-to-weight ~ U[1.5, 5]; mass ``m = s^3`` with
    ``s ~ U[0.02^(1/3), 5^(1/3)]`` (uniform in the cube root, so small vehicles are as common as
    large ones); the thrust curve scaled by the thrust-to-weight and mass factors; rotor positions
    scaled by ``cbrt(m / m_CF)`` times a size deviation (``d ~ N(-0.1, 0.1)`` mapped to
    ``1 / (1 - d)`` for ``d < 0`` and ``1 + d`` otherwise, as the upstream code does);
    torque-to-inertia ``arm * f_max / J_xx ~ U[40, 1200]`` (``f_max`` per motor) with the
    inertia diagonal rescaled to it; ``k_m ~ U[0.005, 0.05]``; ``tau_rise ~ U[0.03, 0.10]``,
    ``tau_fall ~ U[0.03, 0.30]``; and the disturbance-force std
    ``U(0, 0.3 max(T/W - 1, 0)) * T/W * m / 3``. Deterministic given ``seed``
    (an int or a numpy Generator, which is advanced).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cf = _preset_numpy("crazyflie", n)
    cf_thrust = np.asarray(CF_THRUST)
    cf_tw = 4 * cf_thrust.sum() / (CF_MASS * GRAVITY)

    thrust_to_weight = rng.uniform(*THRUST_TO_WEIGHT_RANGE, n)
    size = rng.uniform(MASS_RANGE[0] ** (1 / 3), MASS_RANGE[1] ** (1 / 3), n)
    mass = size**3
    thrust = cf_thrust * ((thrust_to_weight / cf_tw) * (mass / CF_MASS))[:, None]

    deviation = rng.normal(-MASS_SIZE_DEVIATION, MASS_SIZE_DEVIATION, n)
    deviation_factor = np.where(deviation < 0, 1 / (1 - np.minimum(deviation, 0)), 1 + deviation)
    rotor_xy = CF_ROTOR_XY * np.cbrt(mass / CF_MASS) * deviation_factor

    torque_to_inertia = rng.uniform(*TORQUE_TO_INERTIA_RANGE, n)
    f_max = thrust.sum(axis=1)
    j_xx = rotor_xy * math.sqrt(2) * f_max / torque_to_inertia
    inertia = cf["inertia"] * (j_xx / CF_INERTIA[0])[:, None]

    torque_constant = rng.uniform(*TORQUE_CONSTANT_RANGE, n)
    tau_rise = rng.uniform(*TAU_RISE_RANGE, n)
    tau_fall = rng.uniform(*TAU_FALL_RANGE, n)
    # No g factor: the upstream code scales by T/W * m only.
    disturbance_std = (
        rng.uniform(0.0, 1.0, n)
        * DISTURBANCE_FRACTION
        * np.maximum(thrust_to_weight - 1, 0)
        * thrust_to_weight
        * mass
        / 3
    )
    return _from_numpy(
        mass=mass,
        inertia=inertia,
        rotor_xy=rotor_xy,
        thrust=thrust,
        torque_constant=torque_constant,
        tau_rise=tau_rise,
        tau_fall=tau_fall,
        disturbance_std=disturbance_std,
        device=device,
        dtype=dtype,
    )


def make_params(
    name: str,
    n: int = 1,
    seed: int | np.random.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> QuadrotorParams:
    """A preset by name, or ``"sampled"`` vehicles from :func:`sample_params`."""
    if name == "sampled":
        return sample_params(n, seed, device=device, dtype=dtype)
    return preset(name, n, device=device, dtype=dtype)
