"""Shared test set-up: headless rendering, one torch thread, and a toy env for fast core tests."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from robolearn.policy import Policy  # noqa: E402

torch.set_num_threads(1)

#: A tiny 1-frame MLP diffusion policy with 4-step chunks (DSRL's base shape), as keyword
#: arguments of DiffusionConfig: the diffusion and DSRL tests train their toy policies with it.
TINY_DIFFUSION = dict(
    denoiser="mlp",
    obs_steps=1,
    horizon=4,
    action_steps=4,
    mlp_hidden=(128, 128),
    step_embed_dim=32,
    batch_size=128,
    lr=1e-3,
    warmup_steps=50,
    val_ratio=0.1,
    log_every=100,
)


class PointEnv(gym.Env):
    """A point on a plane that must reach a goal: dict observations, [-1, 1] actions, success."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, max_steps: int = 20, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "pos": gym.spaces.Box(-2, 2, (2,), np.float32),
                "goal": gym.spaces.Box(-1, 1, (2,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.max_steps = max_steps
        self.render_mode = render_mode

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self.pos.astype(np.float32), "goal": self.goal.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.t = 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.clip(action, -1, 1), -2, 2)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.goal))
        success = dist < 0.1
        return self._obs(), -dist, success, self.t >= self.max_steps, {"success": success}

    def render(self) -> np.ndarray:
        frame = np.zeros((16, 16, 3), np.uint8)
        x, y = np.clip(((self.pos + 2) / 4 * 15).astype(int), 0, 15)
        frame[y, x] = 255
        return frame


class GoToGoal(Policy):
    """Moves straight at the goal: succeeds on PointEnv."""

    policy_type = "go_to_goal"

    def __init__(self, gain: float = 5.0) -> None:
        self.gain = gain

    def act(self, obs):
        return np.clip(self.gain * (obs["goal"] - obs["pos"]), -1, 1).astype(np.float32)

    def config(self):
        return {"gain": self.gain}


gym.register("robolearn_test/Point-v0", entry_point=PointEnv)


@pytest.fixture
def point_env() -> PointEnv:
    return PointEnv()
