"""The robot spec: one small dataclass per robot, shared by its simulated and hardware envs.

A spec states everything a policy's numbers mean on a robot: joint (or motor) names and their
order, limits, the control rate, what a normalised action does, and which observation keys the
robot provides in which frame. The sim env and the hardware env of one robot are built from the
same spec, so a policy trained in one runs unchanged on the other.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class RobotSpec:
    """Static description of a robot.

    Attributes:
        name: Robot identifier, e.g. ``"panda"``.
        joint_names: Actuated joint (or motor) names, in the order used by observations and
            commands. Hardware adapters map incoming messages by these names, never by position.
        joint_lower: Lower joint limits, same order as ``joint_names``.
        joint_upper: Upper joint limits, same order as ``joint_names``.
        control_hz: Rate at which the policy is queried and actions are applied.
        action_meaning: Human-readable description of each action dimension (length = action dim).
        observation_keys: Observation key -> description (shape, units and frame).
    """

    name: str
    joint_names: tuple[str, ...]
    joint_lower: tuple[float, ...]
    joint_upper: tuple[float, ...]
    control_hz: float
    action_meaning: tuple[str, ...]
    observation_keys: dict[str, str]

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if len(self.joint_lower) != n or len(self.joint_upper) != n:
            raise ValueError(f"{self.name}: joint limits must have one entry per joint ({n})")
        if any(lo > hi for lo, hi in zip(self.joint_lower, self.joint_upper)):
            raise ValueError(f"{self.name}: a lower joint limit exceeds its upper limit")
        if self.control_hz <= 0:
            raise ValueError(f"{self.name}: control_hz must be positive, got {self.control_hz}")

    @property
    def action_dim(self) -> int:
        return len(self.action_meaning)

    @property
    def dt(self) -> float:
        """Control period in seconds."""
        return 1.0 / self.control_hz

    def clip_joints(self, q: np.ndarray) -> np.ndarray:
        """Clip joint positions (any leading batch shape) to the spec's limits."""
        return np.clip(q, np.asarray(self.joint_lower), np.asarray(self.joint_upper))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, stored in datasets and checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
