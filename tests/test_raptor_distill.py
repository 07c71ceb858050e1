"""Distillation: a short run on a toy vehicle family lowers the imitation loss and the student
flies better than an untrained one. (The closed loop on real teachers is in the teacher tests.)
"""

from __future__ import annotations

import torch

from robolearn.algos.raptor.distill import DistillConfig, collect, distill
from robolearn.algos.raptor.student import RaptorStudent


class ToyFleet:
    """N 1-D vehicles with different actuator gains; the student sees position and its last
    action (columns 0 and 18) and must infer the gain; reward 1 - |x|."""

    def __init__(self, n: int = 8) -> None:
        self.num_envs = n
        self.gain = torch.linspace(0.5, 2.0, n)
        self.gen = torch.Generator().manual_seed(0)
        self.x = torch.zeros(n)
        self.prev = torch.zeros(n)

    def reset(self, mask=None):
        self.x = torch.rand(self.num_envs, generator=self.gen) * 2 - 1
        self.prev = torch.zeros(self.num_envs)
        return self._teacher_obs()

    def _teacher_obs(self):
        return torch.stack([self.x, self.gain], 1)

    def student_observation(self):
        obs = torch.zeros(self.num_envs, 22)
        obs[:, 0], obs[:, 18] = self.x, self.prev
        return obs

    def step(self, action):
        a = action[:, 0].clamp(-1, 1)
        self.x = self.x + 0.2 * self.gain * a
        self.prev = action[:, 0]
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        return self._teacher_obs(), 1 - self.x.abs(), done, done


class ToyTeachers:
    """Dead-beat controllers that know their vehicle's gain."""

    def act(self, teacher_obs):
        x, gain = teacher_obs[:, 0], teacher_obs[:, 1]
        action = (-x / (0.2 * gain)).clamp(-1, 1)
        return action[:, None].expand(-1, 4).clone()


def test_distillation_imitates_and_flies():
    torch.manual_seed(0)
    env, teachers = ToyFleet(), ToyTeachers()
    untrained = collect(env, teachers, RaptorStudent(), steps=40).returns.mean()
    teacher = collect(env, teachers, None, steps=40).returns.mean()
    cfg = DistillConfig(
        epochs=30,
        teacher_forcing_epochs=5,
        episodes_per_teacher=4,
        episode_steps=40,
        batch_episodes=8,
        lr=1e-2,
    )
    policy, curves = distill(env, teachers, cfg, progress=False)
    assert curves["loss"][-1] < 0.5 * curves["loss"][0]
    assert curves["on_policy"][:5] == [0.0] * 5 and curves["on_policy"][-1] == 1.0
    flown = collect(env, teachers, policy.model, steps=40).returns.mean()
    assert flown > untrained + 0.5 * (teacher - untrained), (flown, untrained, teacher)


class CrashingFleet(ToyFleet):
    """Half the vehicles crash at step 5 and their states turn to NaN afterwards."""

    def reset(self, mask=None):
        self.t = 0
        return super().reset(mask)

    def step(self, action):
        obs, reward, _, truncated = super().step(action)
        self.t += 1
        crashed = torch.arange(self.num_envs) % 2 == 0
        if self.t >= 5:
            self.x = torch.where(crashed, torch.nan, self.x)
        terminated = crashed & (self.t == 5)
        return self._teacher_obs(), torch.nan_to_num(reward), terminated, truncated


def test_crashed_vehicles_do_not_poison_training():
    torch.manual_seed(0)
    cfg = DistillConfig(
        epochs=4,
        teacher_forcing_epochs=1,
        episodes_per_teacher=2,
        episode_steps=20,
        batch_episodes=8,
        lr=1e-2,
    )
    policy, curves = distill(CrashingFleet(), ToyTeachers(), cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(curves["loss"])))
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())
