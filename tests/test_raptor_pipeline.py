"""RAPTOR pipeline pieces: teacher training fanned out over Ray equals the same chunks trained
in process; teacher selection keeps the teachers at RAPTOR's bar, best first."""

from __future__ import annotations

import pytest
import torch

from robolearn.algos.batched_sac import BatchedSACConfig
from robolearn.algos.raptor.pipeline import (
    RaptorConfig,
    concat_teachers,
    select_teachers,
    train_teachers_distributed,
)
from robolearn.algos.raptor.teachers import (
    TeacherConfig,
    Teachers,
    repeat_vehicles,
    train_teachers,
)
from sims.quadrotor.params import sample_params
from sims.quadrotor.torch_env import QuadrotorTorchEnv


def tiny_config() -> TeacherConfig:
    sac = BatchedSACConfig(
        actor_hidden=(16,), critic_hidden=(16,), batch_size=16, warmup_steps=50, buffer_size=200
    )
    return TeacherConfig(sac=sac, steps=120, log_every=60, checkpoint_every=10_000)


def test_ray_fan_out_matches_in_process_chunks(tmp_path):
    params = sample_params(4, 0)
    cfg = tiny_config()
    distributed = train_teachers_distributed(
        params, cfg, QuadrotorTorchEnv, workers=2, seed=3, run_dir=tmp_path / "ray"
    )
    chunks = [
        train_teachers(params.select(idx), cfg, QuadrotorTorchEnv, seed=3 + k, progress=False)
        for k, idx in enumerate(([0, 1], [2, 3]))
    ]
    local = concat_teachers(chunks)
    assert distributed.num_teachers == 4
    obs = torch.randn(4, 26)
    torch.testing.assert_close(distributed.act(obs), local.act(obs), rtol=0, atol=0)


def test_selection_keeps_teachers_at_the_bar_best_first(tmp_path):
    torch.manual_seed(0)
    params = sample_params(6, 0)
    teachers = Teachers(6, actor_hidden=(16,))  # untrained: returns spread around -100
    # The selection's own evaluation: both episodes of each vehicle side by side.
    returns = teachers.evaluate(QuadrotorTorchEnv(repeat_vehicles(params, 2), seed=2), episodes=2)
    bar = returns.median().item()
    cfg = RaptorConfig(teachers=6, min_teacher_return=bar, selection_episodes=2)
    path = tmp_path / "selection.json"
    selection = select_teachers(teachers, params, cfg, QuadrotorTorchEnv, path, say=str)
    kept = selection["distilled"]
    assert kept == sorted(range(6), key=lambda i: -returns[i])[: len(kept)]
    assert all(returns[i] >= bar for i in kept) and len(kept) == int((returns >= bar).sum())
    assert path.exists() and select_teachers(teachers, params, cfg, QuadrotorTorchEnv, path) == (
        selection
    )
    obs = torch.randn(6, 26)
    torch.testing.assert_close(teachers.select(kept).act(obs[kept]), teachers.act(obs)[kept])

    too_high = RaptorConfig(teachers=6, min_teacher_return=1e6, selection_episodes=2)
    with pytest.raises(RuntimeError, match="no teacher reached"):
        select_teachers(teachers, params, too_high, QuadrotorTorchEnv, tmp_path / "x.json")
