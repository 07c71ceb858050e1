"""RAPTOR's teacher MDP as a batched torch env: one fixed vehicle per row, no numpy in the loop.

:class:`QuadrotorTorchEnv` implements :class:`robolearn.algos.batched_sac.BatchedTorchEnv` for
training one SAC teacher per vehicle. It is the MDP of :class:`sims.quadrotor.env.QuadrotorBatch`
with ``init="raptor"`` and no reference (target = origin): the same initial-state distribution
(10% guidance starts at the target, level, at rest, motors at hover), the same reward
``1.5 - (||p|| + 0.2 acos(1 - |q_z|) + ||a_t - a_{t-1}||)``, -100 and termination when any
``|p_i| > 20 arm``, ``|v_i| > 2 m/s`` or ``|omega_i| > 35 rad/s``, and a constant disturbance
force per episode, per axis ``N(0, disturbance_std)``. What differs is how it is computed: resets
draw every env's initial state at once from one ``torch.Generator`` on the env's device, and
everything stays a tensor on that device.

Teacher observation (26-D, raptor.md section 7): ``[p - p_ref (3), R row-major (9), v - v_ref (3),
omega body (3), previous action (4), motor states u (4)]``. The position and velocity errors are
NOT clipped: RAPTOR's teachers see the true errors (only the deployed student's input is clipped
to +-0.5 m / +-1 m/s), and a teacher that starts 2.5 m away needs to know how far it is.
:meth:`QuadrotorTorchEnv.student_observation` gives the clipped 22-D input of the student for
the same state.
"""

from __future__ import annotations

import torch

from robolearn.cuda_graph import GraphedFunction
from robolearn.robots.quadrotor import (
    CLIP_POSITION,
    CLIP_VELOCITY,
    quaternion_to_rotation,
    raptor_observation,
)
from sims.quadrotor.dynamics import (
    MOTORS,
    OMEGA,
    POSITION,
    QUATERNION,
    STATE_DIM,
    VELOCITY,
    QuadrotorDynamics,
)
from sims.quadrotor.env import (
    ACTION_CHANGE_WEIGHT,
    GUIDANCE_PROBABILITY,
    ORIENTATION_WEIGHT,
    teacher_reward,
)
from sims.quadrotor.params import INIT_POSITION_ARMS, TERMINATION_ARMS, QuadrotorParams

#: Size of the teacher observation.
TEACHER_OBSERVATION_DIM = 26
#: RAPTOR episodes: 500 steps = 5 s at 100 Hz.
EPISODE_STEPS = 500


class QuadrotorTorchEnv:
    """N quadrotors, vehicle ``i`` fixed for the env's lifetime, in RAPTOR's teacher MDP.

    Args:
        params: The N vehicles (one per teacher); copied to ``device`` in float32.
        seed: Seed of the env's ``torch.Generator`` (initial states and disturbance forces).
        device: Torch device of the simulation; every returned tensor lives there.
        max_episode_steps: ``truncated`` turns true once an episode has run this many steps.
        terminate_on_velocity: Also terminate on ``|v_i| > 2 m/s`` or ``|omega_i| > 35 rad/s``.
        disturbance: Draw the per-episode constant disturbance force.

    No autoreset: a finished env keeps integrating until ``reset(mask)`` restarts it.
    """

    obs_dim = TEACHER_OBSERVATION_DIM
    act_dim = 4

    def __init__(
        self,
        params: QuadrotorParams,
        seed: int = 0,
        device: str | torch.device = "cpu",
        max_episode_steps: int = EPISODE_STEPS,
        terminate_on_velocity: bool = True,
        disturbance: bool = True,
        action_change_weight: float = ACTION_CHANGE_WEIGHT,
        orientation_weight: float = ORIENTATION_WEIGHT,
    ) -> None:
        self.device = torch.device(device)
        self.params = params.to(self.device, torch.float32)
        self.num_envs = self.params.batch_size
        self.max_episode_steps = max_episode_steps
        self.terminate_on_velocity = terminate_on_velocity
        self.disturbance = disturbance
        self.action_change_weight = action_change_weight
        self.orientation_weight = orientation_weight
        self.dynamics = QuadrotorDynamics(self.params)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        n = self.num_envs
        self._arm = self.params.arm_length
        self._max_position = (TERMINATION_ARMS * self._arm)[:, None]
        self._hover = self.params.hover_command()
        self.state = torch.zeros(n, STATE_DIM, device=self.device)
        self.state[:, 3] = 1.0
        self.force = torch.zeros(n, 3, device=self.device)
        self.prev_action = torch.zeros(n, 4, device=self.device)
        self.steps = torch.zeros(n, dtype=torch.long, device=self.device)
        # The step's few hundred small kernels cost more to launch than to run on a GPU.
        self._graphed_advance = GraphedFunction(self._advance)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=self.device, generator=self.generator)

    def _sample_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial states ``(N, 17)`` and disturbance forces ``(N, 3)`` for every env."""
        n = self.num_envs
        arm = self._arm[:, None]
        position = (2 * self._rand(n, 3) - 1) * (INIT_POSITION_ARMS * arm)
        axis = torch.randn(n, 3, device=self.device, generator=self.generator)
        axis = axis / axis.norm(dim=1, keepdim=True)
        # Upstream's sample_orientation ignores its max_angle and draws up to 1 rad.
        half = 0.5 * self._rand(n, 1)
        quaternion = torch.cat((half.cos(), half.sin() * axis), 1)
        velocity = 2 * self._rand(n, 3) - 1
        omega = 2 * self._rand(n, 3) - 1
        motors = 0.5 * self._rand(n, 4)
        state = torch.cat((position, quaternion, velocity, omega, motors), 1)
        # Guidance starts: at the target, level, at rest, motors at the hover setpoint.
        guidance = torch.zeros_like(state)
        guidance[:, 3] = 1.0
        guidance[:, MOTORS] = self._hover
        state = torch.where(self._rand(n, 1) < GUIDANCE_PROBABILITY, guidance, state)
        force = torch.randn(n, 3, device=self.device, generator=self.generator)
        force = force * self.params.disturbance_std[:, None] * float(self.disturbance)
        return state, force

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start new episodes where ``mask`` (N,) is true (all envs if None).

        Every call draws fresh states for all N envs and keeps those of the masked ones, so the
        random stream does not depend on which envs are reset. Returns the teacher observation
        of every env, ``(N, 26)``.
        """
        state, force = self._sample_states()
        if mask is None:
            self.state, self.force = state, force
            self.prev_action = torch.zeros_like(self.prev_action)
            self.steps = torch.zeros_like(self.steps)
        else:
            m = mask.to(self.device, torch.bool)[:, None]
            self.state = torch.where(m, state, self.state)
            self.force = torch.where(m, force, self.force)
            self.prev_action = self.prev_action.masked_fill(m, 0.0)
            self.steps = self.steps.masked_fill(m[:, 0], 0)
        return self.observe()

    def observe(self) -> torch.Tensor:
        """Teacher observations ``(N, 26)`` of the current state (errors unclipped)."""
        return self._observe(self.state, self.prev_action)

    @staticmethod
    def _observe(state: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        obs = raptor_observation(
            state[:, POSITION],
            quaternion_to_rotation(state[:, QUATERNION]),
            state[:, VELOCITY],
            state[:, OMEGA],
            prev_action,
            clip_position=None,
            clip_velocity=None,
        )
        return torch.cat((obs, state[:, MOTORS]), 1)

    def student_observation(self) -> torch.Tensor:
        """The deployed student's 22-D RAPTOR input ``(N, 22)`` of the current state: errors
        clipped to +-0.5 m and +-1 m/s, no motor states."""
        return raptor_observation(
            self.state[:, POSITION],
            quaternion_to_rotation(self.state[:, QUATERNION]),
            self.state[:, VELOCITY],
            self.state[:, OMEGA],
            self.prev_action,
            clip_position=CLIP_POSITION,
            clip_velocity=CLIP_VELOCITY,
        )

    def hover_action(self) -> torch.Tensor:
        """``(N, 4)`` normalised actions in [-1, 1] that hold each vehicle's weight."""
        return 2.0 * self._hover - 1.0

    def observation_scale(self) -> torch.Tensor:
        """``(N, 26)`` typical magnitudes of the teacher observation's entries, for a learner's
        input normalisation: positions in units of the initial range (10 arm lengths, from
        0.3 m to 4 m over RAPTOR's vehicles), every other entry 1 (rotation entries, m/s, rad/s,
        actions and motor states are already of order 1 at the start of an episode)."""
        scale = torch.ones(self.num_envs, self.obs_dim, device=self.device)
        scale[:, 0:3] = INIT_POSITION_ARMS * self._arm[:, None]
        return scale

    def vehicle_features(self) -> torch.Tensor:
        """``(N, 13)`` each vehicle's parameters as inputs of order 1, for a teacher shared by
        all vehicles: hover action (4), log mass, log arm length, torque-to-inertia per axis
        (3, log), yaw torque constant, motor rise and fall time constants, thrust-to-weight;
        each centred and scaled by the ranges of RAPTOR's distribution."""
        p = self.params
        arm = self._arm[:, None]
        torque_to_inertia = arm * p.max_thrust.mean(1, keepdim=True) / p.inertia
        return torch.cat(
            (
                self.hover_action(),
                p.mass.log()[:, None] / 2,
                arm.log() + 2,
                (torque_to_inertia.log() - 5.5) / 1.5,
                p.torque_constant[:, None] / 0.05,
                p.tau_rise[:, None] / 0.1,
                p.tau_fall[:, None] / 0.3,
                p.thrust_to_weight[:, None] / 5,
            ),
            1,
        )

    def position_error(self) -> torch.Tensor:
        """``(N,)`` distance to the target ``||p - p_ref||``, m."""
        return self.state[:, POSITION].norm(dim=1)

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply actions ``(N, 4)`` (clamped to [-1, 1] for the motors); return the teacher
        observations ``(N, 26)``, rewards ``(N,)``, terminated and truncated ``(N,)`` bools."""
        # The reward weights travel as a tensor: a curriculum that changes them every step then
        # replays the same CUDA graph.
        weights = torch.tensor(
            (self.orientation_weight, self.action_change_weight), device=self.device
        )
        outputs = self._graphed_advance(
            self.state,
            action.to(self.device, torch.float32),
            self.prev_action,
            self.force,
            self.steps,
            weights,
        )
        self.state, self.prev_action, self.steps = outputs[:3]
        return outputs[3:]

    def _advance(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        prev_action: torch.Tensor,
        force: torch.Tensor,
        steps: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One step as a function of tensors alone: what a GPU replays as one CUDA graph."""
        clipped = action.clamp(-1.0, 1.0)
        d_action = (clipped - prev_action.clamp(-1.0, 1.0)).norm(dim=1)
        state = self.dynamics.step(state, clipped, force)
        steps = steps + 1
        reward, terminated = teacher_reward(
            state,
            state[:, POSITION],
            d_action,
            self._max_position,
            self.terminate_on_velocity,
            weights[0],
            weights[1],
        )
        truncated = steps >= self.max_episode_steps
        obs = self._observe(state, action)
        return state, action.clone(), steps, obs, reward, terminated, truncated
