"""RAPTOR pipeline pieces: teacher training fanned out over Ray equals the same chunks trained
in process; teacher selection keeps the teachers at RAPTOR's bar, best first; a distillation seed
of its own redraws the student alone."""

from __future__ import annotations

import shutil

import pytest
import torch

from robolearn.algos.batched_sac import BatchedSACConfig
from robolearn.algos.raptor.distill import DistillConfig
from robolearn.algos.raptor.pipeline import (
    RaptorConfig,
    concat_teachers,
    select_teachers,
    train_raptor,
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


def test_distill_seed_redraws_the_student_on_the_runs_teachers(tmp_path):
    distill = DistillConfig(
        epochs=2, teacher_forcing_epochs=1, episodes_per_teacher=2, episode_steps=40, lr=1e-3
    )

    def run(name: str, seed: int, distill_seed: int | None = None):
        cfg = RaptorConfig(
            teachers=2,
            min_teacher_return=None,
            selection_episodes=2,
            distill_seed=distill_seed,
            evaluation_process=False,
            teacher=tiny_config(),
            distill=distill,
        )
        return train_raptor(
            cfg, sample_params, QuadrotorTorchEnv, tmp_path / name, seed, progress=False, say=str
        )[0]

    redrawn = run("redrawn", seed=0, distill_seed=5)
    # The run's teachers are seed 0's ...
    plain = run("plain", seed=0)
    obs = torch.randn(2, 26)
    teachers = [Teachers.load(tmp_path / name / "teachers") for name in ("redrawn", "plain")]
    torch.testing.assert_close(teachers[0].act(obs), teachers[1].act(obs), rtol=0, atol=0)
    # ... and its student is what seed 5 distils from them.
    shutil.copytree(tmp_path / "plain" / "teachers", tmp_path / "seed5" / "teachers")
    shutil.copy(tmp_path / "plain" / "teacher_selection.json", tmp_path / "seed5")
    seed5 = run("seed5", seed=5)
    student_obs = torch.randn(2, 10, 22)
    for other, same in ((seed5, True), (plain, False)):
        equal = torch.equal(redrawn.model(student_obs)[0], other.model(student_obs)[0])
        assert equal == same
