"""Quadrotor envs over the batched torch dynamics: one vehicle, or a batch of different ones.

The MDP is RAPTOR's teacher MDP (raptor.md section 6): 100 Hz, 500-step (5 s) episodes, the 22-D
observation of :func:`robolearn.robots.quadrotor.raptor_observation`, reward
``1.5 - (||p - p_ref|| + 0.2 acos(1 - |q_z|) + ||a_t - a_{t-1}||)`` and -100 on termination.
``q_z`` is the quaternion's z component, exactly as the reference states the formula, and the
action term uses the clamped actions (the ones the motors receive).

The previous-action slot of the observation holds the raw action last passed to ``step`` and is
zero after a reset. (L2F instead fills its action history at reset with the initial motor states
in action units, ``2 u_0 - 1``; with ``init="motors_off"`` that is -1.)

``info["success"]``: the vehicle has not been terminated and is within 0.1 m of the reference.
``info["position_error"]``: ``||p - p_ref||`` in m.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding

from robolearn.robots.quadrotor import (
    CLIP_POSITION,
    CLIP_VELOCITY,
    OBSERVATION_DIM,
    QUADROTOR_SPEC,
    quaternion_to_rotation,
    raptor_observation,
)
from sims.quadrotor.dynamics import (
    MOTORS,
    OMEGA,
    POSITION,
    QUATERNION,
    VELOCITY,
    QuadrotorDynamics,
    initial_state,
)
from sims.quadrotor.params import (
    INIT_POSITION_ARMS,
    PRESETS,
    TERMINATION_ARMS,
    QuadrotorParams,
    preset,
    sample_params,
)

INITS = ("raptor", "hover", "motors_off")
REFERENCES = (None, "figure_eight")
#: Teacher-MDP termination thresholds (per axis).
MAX_VELOCITY = 2.0
MAX_ANGULAR_VELOCITY = 35.0
TERMINATION_REWARD = -100.0
#: RAPTOR's reward weights of the orientation error and of the action change (raptor.md §6).
ORIENTATION_WEIGHT = 0.2
ACTION_CHANGE_WEIGHT = 1.0
SUCCESS_DISTANCE = 0.1
#: RAPTOR's "guidance" share of initial states that start at the target, level and at rest.
GUIDANCE_PROBABILITY = 0.1
#: Figure-eight reference: amplitude (m) and period (s); peak speed ~0.9 m/s.
FIGURE_EIGHT_AMPLITUDE = 0.5
FIGURE_EIGHT_PERIOD = 5.0


def figure_eight(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference position and velocity ``(N, 3)`` at times ``t`` (N,) in s: a horizontal
    lemniscate through the origin, ``x = A sin(w t)``, ``y = A sin(2 w t) / 2``."""
    w = 2 * math.pi / FIGURE_EIGHT_PERIOD
    a = FIGURE_EIGHT_AMPLITUDE
    zero = torch.zeros_like(t)
    p = torch.stack((a * torch.sin(w * t), 0.5 * a * torch.sin(2 * w * t), zero), 1)
    v = torch.stack((a * w * torch.cos(w * t), a * w * torch.cos(2 * w * t), zero), 1)
    return p, v


def teacher_reward(
    state: torch.Tensor,
    p_err: torch.Tensor,
    d_action: torch.Tensor,
    max_position: torch.Tensor,
    terminate_on_velocity: bool,
    orientation_weight: float | torch.Tensor = ORIENTATION_WEIGHT,
    action_change_weight: float | torch.Tensor = ACTION_CHANGE_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RAPTOR's teacher-MDP reward and termination ``(N,)`` after a step.

    ``p_err`` is the position error (N, 3), ``d_action`` the norm of the clamped action change
    (N,), ``max_position`` the per-vehicle position bound (N, 1). Terminated steps earn
    ``TERMINATION_REWARD``; a non-finite state terminates.
    """
    terminated = (p_err.abs() > max_position).any(1)
    if terminate_on_velocity:
        terminated |= (state[:, VELOCITY].abs() > MAX_VELOCITY).any(1)
        terminated |= (state[:, OMEGA].abs() > MAX_ANGULAR_VELOCITY).any(1)
    terminated |= ~torch.isfinite(state).all(1)
    # Index 6 is the quaternion's z component, as the reference states the formula.
    orientation = torch.acos((1.0 - state[:, 6].abs()).clamp(-1.0, 1.0))
    cost = p_err.norm(dim=1) + orientation_weight * orientation + action_change_weight * d_action
    reward = torch.where(terminated, torch.full_like(cost, TERMINATION_REWARD), 1.5 - cost)
    return reward, terminated


class QuadrotorBatch:
    """N quadrotors with their episode bookkeeping: the engine of both envs.

    Args:
        num_envs: Number of vehicles.
        params: ``"crazyflie"``, ``"x500"``, or ``"sampled"`` (a new vehicle from RAPTOR's
            distribution at every reset, drawn with that env's reset RNG).
        init: Initial-state distribution: ``"raptor"`` (the teacher MDP's), ``"hover"`` (at the
            origin, level, at rest, motors at the hover setpoint) or ``"motors_off"`` (same, motors
            at 0: the cold-start test).
        clip_observation: Clip position and velocity errors in the observation (+-0.5 m,
            +-1 m/s), as the deployed RAPTOR policy expects.
        terminate_on_velocity: Also terminate when any |v_i| > 2 m/s or |omega_i| > 35 rad/s.
        disturbance: Draw a constant world-frame force per episode, per axis
            ``N(0, params.disturbance_std)`` (zero for the nominal presets).
        reference: ``None`` (hold the origin) or ``"figure_eight"``.
        device: Torch device of the simulation.
        dtype: Torch dtype of the simulation.
    """

    def __init__(
        self,
        num_envs: int,
        params: str = "crazyflie",
        init: str = "raptor",
        clip_observation: bool = True,
        terminate_on_velocity: bool = True,
        disturbance: bool = True,
        reference: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if params not in (*PRESETS, "sampled"):
            raise ValueError(f"params must be one of {(*PRESETS, 'sampled')}, got {params!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.num_envs = num_envs
        self.params_mode = params
        self.init = init
        self.clip_observation = clip_observation
        self.terminate_on_velocity = terminate_on_velocity
        self.disturbance = disturbance
        self.reference = reference
        self.device = torch.device(device)
        self.dtype = dtype
        # Sampled vehicles are replaced at their first reset; start from the nominal one.
        name = "crazyflie" if params == "sampled" else params
        self.params: QuadrotorParams = preset(name, num_envs, device=self.device, dtype=dtype)
        self.dynamics = QuadrotorDynamics(self.params)
        self.state = initial_state(num_envs, self.device, dtype)
        self.force = torch.zeros(num_envs, 3, device=self.device, dtype=dtype)
        self.prev_action = np.zeros((num_envs, 4), dtype=np.float32)
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.terminated = np.zeros(num_envs, dtype=bool)
        self._update_limits()

    def _update_limits(self) -> None:
        self._max_position = (TERMINATION_ARMS * self.params.arm_length)[:, None]

    def reset(self, indices: np.ndarray, rngs: list[np.random.Generator]) -> None:
        """Start new episodes for the vehicles ``indices``, drawing from ``rngs`` (one each).

        Draws, per env and in this order: the vehicle (``params="sampled"`` only), the initial
        state, then the disturbance force.
        """
        n = len(indices)
        states = np.zeros((n, 17))
        forces = np.zeros((n, 3))
        new_params = []
        for row, (i, rng) in enumerate(zip(indices.tolist(), rngs)):
            if self.params_mode == "sampled":
                vehicle = sample_params(1, rng, dtype=torch.float64)
                new_params.append(vehicle)
            else:
                vehicle = self.params.select([i]).to("cpu", torch.float64)
            arm = float(vehicle.arm_length[0])
            hover = vehicle.hover_command()[0].numpy()
            states[row] = self._sample_state(rng, arm, hover)
            if self.disturbance:
                forces[row] = rng.normal(0.0, float(vehicle.disturbance_std[0]), 3)
        index = torch.as_tensor(indices, device=self.device)
        if new_params:
            self.params.assign(index, QuadrotorParams.cat(new_params))
            self.dynamics.set_params(self.params)
            self._update_limits()
        self.state[index] = torch.as_tensor(states, device=self.device, dtype=self.dtype)
        self.force[index] = torch.as_tensor(forces, device=self.device, dtype=self.dtype)
        self.prev_action[indices] = 0.0
        self.steps[indices] = 0
        self.terminated[indices] = False

    def _sample_state(self, rng: np.random.Generator, arm: float, hover: np.ndarray) -> np.ndarray:
        state = np.zeros(17)
        state[3] = 1.0
        if self.init == "hover":
            state[MOTORS] = hover
        elif self.init == "raptor":
            if rng.uniform() < GUIDANCE_PROBABILITY:
                state[MOTORS] = hover
            else:
                state[POSITION] = rng.uniform(
                    -INIT_POSITION_ARMS * arm, INIT_POSITION_ARMS * arm, 3
                )
                axis = rng.normal(size=3)
                axis /= np.linalg.norm(axis)
                # Upstream's sample_orientation ignores its max_angle and draws up to 1 rad.
                angle = rng.uniform(0.0, 1.0)
                state[QUATERNION] = (math.cos(angle / 2), *(math.sin(angle / 2) * axis))
                state[VELOCITY] = rng.uniform(-1.0, 1.0, 3)
                state[OMEGA] = rng.uniform(-1.0, 1.0, 3)
                state[MOTORS] = rng.uniform(0.0, 0.5, 4)
        return state

    def _reference(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.reference is None:
            return None
        t = torch.as_tensor(self.steps * self.dynamics.dt, device=self.device, dtype=self.dtype)
        return figure_eight(t)

    def observe(self) -> tuple[np.ndarray, torch.Tensor]:
        """Observations ``(N, 22)`` float32 and the position errors ``(N, 3)``."""
        state = self.state
        p_err, v_err = state[:, POSITION], state[:, VELOCITY]
        reference = self._reference()
        if reference is not None:
            p_err, v_err = p_err - reference[0], v_err - reference[1]
        prev = torch.as_tensor(self.prev_action, device=self.device, dtype=self.dtype)
        obs = raptor_observation(
            p_err,
            quaternion_to_rotation(state[:, QUATERNION]),
            v_err,
            state[:, OMEGA],
            prev,
            clip_position=CLIP_POSITION if self.clip_observation else None,
            clip_velocity=CLIP_VELOCITY if self.clip_observation else None,
        )
        return obs.to("cpu", torch.float32).numpy(), p_err

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance every vehicle by one control step under ``action`` (N, 4).

        Returns observations, rewards (float64), terminations and a dict of per-env arrays
        (``success``, ``position_error``).
        """
        raw = np.asarray(action, dtype=np.float32).reshape(self.num_envs, 4)
        clipped = np.clip(raw, -1.0, 1.0)
        d_action = np.linalg.norm(clipped - np.clip(self.prev_action, -1.0, 1.0), axis=1)
        action_t = torch.as_tensor(clipped, device=self.device, dtype=self.dtype)
        self.state = self.dynamics.step(self.state, action_t, self.force)
        self.prev_action = raw.copy()
        self.steps += 1

        obs, p_err = self.observe()
        d_action_t = torch.as_tensor(d_action, device=self.device, dtype=self.dtype)
        reward_t, terminated_t = teacher_reward(
            self.state, p_err, d_action_t, self._max_position, self.terminate_on_velocity
        )
        distance = p_err.norm(dim=1)
        terminated = terminated_t.cpu().numpy()
        reward = reward_t.cpu().numpy().astype(np.float64)
        self.terminated |= terminated
        distance_np = distance.cpu().numpy().astype(np.float64)
        success = ~self.terminated & (distance_np < SUCCESS_DISTANCE)
        return obs, reward, terminated, {"success": success, "position_error": distance_np}


def _observation_space() -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_DIM,), np.float32)


def _action_space() -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


class QuadrotorEnv(gym.Env):
    """One quadrotor in RAPTOR's teacher MDP (see the module docstring and
    :class:`QuadrotorBatch` for the arguments). Episodes are 500 steps through
    ``max_episode_steps`` of the registration."""

    metadata = {"render_modes": [], "render_fps": int(QUADROTOR_SPEC.control_hz)}

    def __init__(
        self,
        params: str = "crazyflie",
        init: str = "raptor",
        clip_observation: bool = True,
        terminate_on_velocity: bool = True,
        disturbance: bool = True,
        reference: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.batch = QuadrotorBatch(
            1, params, init, clip_observation, terminate_on_velocity, disturbance, reference, device
        )
        self.robot_spec = QUADROTOR_SPEC
        self.observation_space = _observation_space()
        self.action_space = _action_space()

    @property
    def params(self) -> QuadrotorParams:
        """The simulated vehicle (a batch of one)."""
        return self.batch.params

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.batch.reset(np.zeros(1, dtype=np.int64), [self.np_random])
        obs, p_err = self.batch.observe()
        distance = float(p_err.norm(dim=1)[0])
        return obs[0], {"success": distance < SUCCESS_DISTANCE, "position_error": distance}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, info = self.batch.step(np.asarray(action)[None])
        return (
            obs[0],
            float(reward[0]),
            bool(terminated[0]),
            False,
            {
                "success": bool(info["success"][0]),
                "position_error": float(info["position_error"][0]),
            },
        )


class QuadrotorVectorEnv(gym.vector.VectorEnv):
    """A batch of quadrotors, each its own vehicle, stepped in one set of tensor operations.

    No autoreset: finished sub-envs keep integrating until reset, which callers do with
    ``reset(seed=[...], options={"reset_mask": mask})``. ``truncated`` turns true after
    ``max_episode_steps`` steps of an episode. Sub-env ``i`` reset with seed ``s`` follows the
    same trajectory as :class:`QuadrotorEnv` reset with ``s``. Other arguments as
    :class:`QuadrotorBatch`.

    Resets sample each env's vehicle and initial state in numpy, one env after another; steps
    are fully batched.
    """

    metadata = {
        "autoreset_mode": gym.vector.AutoresetMode.DISABLED,
        "render_modes": [],
        "render_fps": int(QUADROTOR_SPEC.control_hz),
    }

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int = 500,
        params: str = "crazyflie",
        init: str = "raptor",
        clip_observation: bool = True,
        terminate_on_velocity: bool = True,
        disturbance: bool = True,
        reference: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.batch = QuadrotorBatch(
            num_envs,
            params,
            init,
            clip_observation,
            terminate_on_velocity,
            disturbance,
            reference,
            device,
        )
        self.robot_spec = QUADROTOR_SPEC
        self.single_observation_space = _observation_space()
        self.single_action_space = _action_space()
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]

    @property
    def params(self) -> QuadrotorParams:
        """The simulated vehicles (batch of ``num_envs``)."""
        return self.batch.params

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs, or only those where ``options["reset_mask"]`` is true.

        ``seed``: an int (env ``i`` gets ``seed + i``), a list with one seed (or None) per env,
        or None (continue each env's RNG).
        """
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"expected {n} seeds, got {len(seeds)}")
        mask = np.ones(n, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"reset_mask must have shape ({n},), got {mask.shape}")
        indices = np.flatnonzero(mask)
        for i in indices:
            if seeds[i] is not None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        self.batch.reset(indices, [self._rngs[i] for i in indices])
        obs, p_err = self.batch.observe()
        distance = p_err.norm(dim=1).cpu().numpy().astype(np.float64)
        return obs, self._infos(distance < SUCCESS_DISTANCE, distance)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, info = self.batch.step(actions)
        truncated = self.batch.steps >= self.max_episode_steps
        return (
            obs,
            reward,
            terminated,
            truncated,
            self._infos(info["success"], info["position_error"]),
        )

    def _infos(self, success: np.ndarray, distance: np.ndarray) -> dict[str, Any]:
        present = np.ones(self.num_envs, dtype=bool)
        return {
            "success": success,
            "_success": present,
            "position_error": distance,
            "_position_error": present.copy(),
        }
