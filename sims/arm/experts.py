"""Scripted experts for the Panda arm tasks, usable in simulation and on hardware.

:class:`ArmExpert` maps an observation dict to an action using only ``ee_pos``, ``gripper``,
``object_pos`` and ``goal_pos`` (no simulator state), so the same expert drives the real arm.
It is Markovian: the phase of the task (approach, descend, grasp, carry; or go behind the block
and push) is decided afresh from each observation, which makes its demonstrations easy for a
behaviour-cloning policy to imitate.
"""

from __future__ import annotations

import numpy as np

from robolearn.policy import Observation
from robolearn.robots.panda import GRIPPER_MAX_OPENING
from sims.noisy_expert import NoisyExpert

#: gym id -> expert task name.
ENV_TASKS = {
    "robolearn/ArmReach-v0": "reach",
    "robolearn/ArmPush-v0": "push",
    "robolearn/ArmPickPlace-v0": "pick_place",
}
#: Noise level that gives imperfect demonstrations (about 30-60% success on push and
#: pick-place; see :class:`ArmExpert`).
IMPERFECT_NOISE = 0.55

# Geometry the expert relies on (metres): the block's half edge and the IK's step per action.
_BLOCK_HALF = 0.02
_MAX_STEP = 0.04
_HOVER = 0.07  # height of the TCP above the block centre before descending onto it
_PUSH_BACKOFF = 0.05  # TCP distance behind the block centre where a push starts


class ArmExpert(NoisyExpert):
    """Scripted expert for ``"reach"``, ``"push"`` or ``"pick_place"``.

    Actions are proportional moves of the tool centre point (TCP) towards a phase-dependent
    target, saturated at the action bound, plus a gripper command:

    * reach: move to the goal.
    * pick_place: hover above the block with the gripper open, descend, close; once the gripper
      holds the block (opening near the block width, block at the TCP) carry it to the goal.
    * push: with the gripper closed, go (above the table) to a point behind the block on the
      goal-to-block line, lower to block height, then push towards the goal while steering the
      TCP back onto that line.

    With ``noise > 0`` the demonstrations get imperfect, the way a human teleoperator's are:
    temporally correlated action noise of standard deviation ``noise`` (an AR(1) process with
    correlation 0.8 per step), a probability ``0.15 * noise`` per step of a wrong move (a random
    translation), and a probability ``0.08 * noise`` per step of opening the gripper
    prematurely. ``noise=0`` is deterministic and succeeds on at least 95% of episodes per task;
    ``noise=IMPERFECT_NOISE`` (0.55) gives roughly 30-60% success on push and pick-place (measured
    over 100 seeds: about 40% pick-place, 50% push; see BENCHMARKS.md).

    Args:
        task: ``"reach"``, ``"push"`` or ``"pick_place"``.
        noise: Imperfection level, 0 for the clean expert.
        seed: Seed of the noise random stream.
    """

    policy_type = "arm_expert"
    tasks = ("reach", "push", "pick_place")

    def __init__(self, task: str, noise: float = 0.0, seed: int = 0) -> None:
        if task not in self.tasks:
            raise ValueError(f"task must be one of {self.tasks}, got {task!r}")
        super().__init__(task, noise, seed)

    def act(self, obs: Observation) -> np.ndarray:
        if not isinstance(obs, dict):
            raise TypeError("ArmExpert needs the dict observation of the arm envs")
        ee = np.asarray(obs["ee_pos"], dtype=np.float64)
        goal = np.asarray(obs["goal_pos"], dtype=np.float64)
        if self.task == "reach":
            target, grip = goal, np.ones(len(ee))
        elif self.task == "pick_place":
            target, grip = _pick_place(
                ee,
                np.asarray(obs["gripper"], dtype=np.float64)[:, 0],
                np.asarray(obs["object_pos"], dtype=np.float64),
                goal,
            )
        else:
            target, grip = _push(ee, np.asarray(obs["object_pos"], dtype=np.float64), goal)
        action = np.empty((len(ee), 4))
        action[:, :3] = (target - ee) / _MAX_STEP
        action[:, 3] = grip
        if self.noise > 0:
            self._perturb(action)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _perturb(self, action: np.ndarray) -> None:
        action[:, :3] = np.clip(action[:, :3], -1.0, 1.0)
        rng = self.perturb_motion(action)
        action[rng.random(len(action)) < 0.08 * self.noise, 3] = 1.0  # opens too early


def _pick_place(
    ee: np.ndarray, opening: np.ndarray, obj: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and gripper commands for pick-and-place (see :class:`ArmExpert`)."""
    rel = obj - ee
    dxy = np.hypot(rel[:, 0], rel[:, 1])
    dist = np.linalg.norm(rel, axis=1)
    # Closed on the block: the fingers stopped near the block's width with the block at the TCP.
    held = (opening < 2 * _BLOCK_HALF + 0.008) & (opening > 2 * _BLOCK_HALF - 0.012) & (dist < 0.02)
    at_block = (dxy < 0.012) & (np.abs(rel[:, 2]) < 0.012)
    above = dxy < 0.015
    is_open = opening > GRIPPER_MAX_OPENING - 0.015

    hover = obj.copy()
    hover[:, 2] += _HOVER
    # Default: go to the hover point with the gripper open.
    target = hover
    grip = np.ones(len(ee))
    # Above the block and open: descend onto it.
    descend = above & is_open & ~at_block & ~held
    target[descend] = obj[descend]
    # At the block: close (hold position); a fully closed gripper missed the block, so reopen.
    closing = at_block & ~held
    target[closing] = obj[closing]
    grip[closing & (opening > 0.025)] = -1.0
    target[held] = goal[held]
    grip[held] = -1.0
    return target, grip


def _push(ee: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and gripper commands for pushing (see :class:`ArmExpert`)."""
    to_goal = goal[:, :2] - obj[:, :2]
    dist = np.maximum(np.linalg.norm(to_goal, axis=1), 1e-6)
    u = to_goal / dist[:, None]
    rel = ee[:, :2] - obj[:, :2]
    along = np.sum(rel * u, axis=1)
    lateral = rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0]  # signed offset from the push line
    start = obj[:, :2] - _PUSH_BACKOFF * u
    to_start = np.linalg.norm(ee[:, :2] - start, axis=1)
    low = ee[:, 2] < obj[:, 2] + 0.02
    block_z = obj[:, 2]

    target = np.empty_like(ee)
    # Default: travel above the block to the start point.
    target[:, :2] = start
    target[:, 2] = block_z + _HOVER
    # Low next to the block but not behind it: rise first, so the travel does not hit it.
    rise = low & (to_start > 0.02) & (np.hypot(rel[:, 0], rel[:, 1]) < 0.08)
    target[rise, :2] = ee[rise, :2]
    # Above the start point: lower to block height.
    lower = to_start <= 0.015
    target[lower, 2] = block_z[lower]
    # Behind the block, on the line, at block height: push, steering back onto the line.
    push = low & (along < -0.015) & (np.abs(lateral) < 0.02)
    step = np.minimum(dist, 0.03)[:, None] * u
    normal = np.stack([u[:, 1], -u[:, 0]], axis=1)
    target[push, :2] = ee[push, :2] + step[push] - (lateral[push, None] * normal[push])
    target[push, 2] = block_z[push]
    return target, -np.ones(len(ee))


def make_expert(env_id: str, noise: float = 0.0, seed: int = 0) -> ArmExpert:
    """The scripted expert of a ``robolearn/Arm*-v0`` gym id."""
    if env_id not in ENV_TASKS:
        raise ValueError(f"no arm expert for {env_id!r}; known ids: {sorted(ENV_TASKS)}")
    return ArmExpert(ENV_TASKS[env_id], noise=noise, seed=seed)
