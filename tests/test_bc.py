"""Behaviour cloning learns: a tiny run on reach demonstrations beats the untrained policy."""

from __future__ import annotations

import numpy as np
import torch

from robolearn.algos.bc import BCConfig, MLPPolicy, default_obs_keys, train_bc
from robolearn.data.store import EpisodeStore
from robolearn.envs import make_env
from robolearn.rollout import rollout
from sims.arm.experts import make_expert

ENV_ID = "robolearn/ArmReach-v0"


def test_bc_on_reach_demos_improves_success(tmp_path):
    env = make_env(ENV_ID)
    store = EpisodeStore.create(
        tmp_path / "demos.zarr", attrs={"observation_keys": list(env.observation_space.spaces)}
    )
    rollout(make_expert(ENV_ID), env, episodes=40, seed=0, store=store, progress=False)
    data = store.load()
    obs_keys = default_obs_keys(data, store.attrs["observation_keys"])
    assert "image" not in obs_keys and "ee_pos" in obs_keys

    cfg = BCConfig(
        hidden=(128, 128), steps=1500, batch_size=128, lr=2e-3, log_every=500, checkpoint_every=1500
    )
    policy = train_bc(
        data, store.episode_ends, obs_keys, cfg, tmp_path / "run", seed=0, progress=False
    )

    torch.manual_seed(0)
    untrained = MLPPolicy(
        obs_keys, policy.obs_dims, policy.action_dim, cfg.hidden, normalizer=policy.normalizer
    )
    eval_seeds = 10_000
    trained_result = rollout(policy, env, episodes=20, seed=eval_seeds, progress=False)
    untrained_result = rollout(untrained, env, episodes=20, seed=eval_seeds, progress=False)
    assert trained_result.success_rate >= untrained_result.success_rate + 0.4
    assert trained_result.success_rate >= 0.6

    # The training loss went down, and the saved checkpoint acts like the returned policy.
    losses = np.loadtxt(
        tmp_path / "run" / "metrics.csv",
        delimiter=",",
        skiprows=1,
        usecols=2,
        converters={1: lambda s: 0.0},
    )
    assert losses.size > 0
    reloaded = MLPPolicy.load(tmp_path / "run" / "checkpoints" / "latest")
    obs = {k: v[None] for k, v in env.reset(seed=1)[0].items()}
    np.testing.assert_allclose(reloaded.act(obs), policy.act(obs), atol=1e-6)


def point_demos(tmp_path):
    from tests.conftest import GoToGoal, PointEnv

    store = EpisodeStore.create(
        tmp_path / "point.zarr", attrs={"observation_keys": ["pos", "goal"]}
    )
    rollout(GoToGoal(), PointEnv(), episodes=20, seed=0, store=store, progress=False)
    return store


def test_resume_after_a_crash_continues_bit_exactly(tmp_path, monkeypatch):
    store = point_demos(tmp_path)
    data = store.load()
    cfg = BCConfig(hidden=(32,), steps=60, batch_size=32, log_every=10, checkpoint_every=30)
    straight = train_bc(
        data, store.episode_ends, ["pos", "goal"], cfg, tmp_path / "a", progress=False
    )

    # Crash the second run after its step-30 checkpoint, at the log call of step 40.
    from robolearn.training import MetricLog

    original_log = MetricLog.log

    def crashing_log(self, step, **scalars):
        if step == 40:
            raise KeyboardInterrupt
        original_log(self, step, **scalars)

    monkeypatch.setattr(MetricLog, "log", crashing_log)
    try:
        train_bc(data, store.episode_ends, ["pos", "goal"], cfg, tmp_path / "b", progress=False)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(MetricLog, "log", original_log)
    resumed = train_bc(
        data, store.episode_ends, ["pos", "goal"], cfg, tmp_path / "b", progress=False
    )

    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = np.loadtxt(tmp_path / "b" / "metrics.csv", delimiter=",", skiprows=1, usecols=0)
    expected = np.loadtxt(tmp_path / "a" / "metrics.csv", delimiter=",", skiprows=1, usecols=0)
    np.testing.assert_array_equal(steps, expected)  # no step logged twice
