"""RAPTOR pipeline pieces: teacher training fanned out over Ray equals the same chunks trained
in process."""

from __future__ import annotations

import torch

from robolearn.algos.batched_sac import BatchedSACConfig
from robolearn.algos.raptor.pipeline import concat_teachers, train_teachers_distributed
from robolearn.algos.raptor.teachers import TeacherConfig, train_teachers
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
