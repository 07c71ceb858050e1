"""QuadrotorTorchEnv: RAPTOR's teacher MDP on torch tensors, one fixed vehicle per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.robots.quadrotor import CLIP_POSITION, CLIP_VELOCITY
from sims.quadrotor.env import QuadrotorBatch
from sims.quadrotor.params import INIT_POSITION_ARMS, preset, sample_params
from sims.quadrotor.torch_env import QuadrotorTorchEnv


def rollout(env: QuadrotorTorchEnv, steps: int, seed: int) -> list[torch.Tensor]:
    """Observations and rewards under fixed random actions, resetting finished envs."""
    gen = torch.Generator().manual_seed(seed)
    out = [env.reset()]
    for _ in range(steps):
        obs, reward, terminated, truncated = env.step(torch.rand(env.num_envs, 4, generator=gen))
        out += [obs, reward]
        done = terminated | truncated
        if done.any():
            out.append(env.reset(done))
    return out


def test_shapes_dtypes_and_devices():
    env = QuadrotorTorchEnv(sample_params(5, seed=1), seed=0)
    assert (env.num_envs, env.obs_dim, env.act_dim) == (5, 26, 4)
    obs = env.reset()
    assert obs.shape == (5, 26) and obs.dtype == torch.float32
    obs, reward, terminated, truncated = env.step(torch.zeros(5, 4))
    assert obs.shape == (5, 26) and reward.shape == (5,) and reward.dtype == torch.float32
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert terminated.shape == truncated.shape == (5,)
    assert env.student_observation().shape == (5, 22)
    assert env.position_error().shape == (5,)
    for t in (obs, reward, terminated, env.student_observation(), env.position_error()):
        assert t.device == torch.device("cpu")
    # Motor states are the last 4 entries of the teacher observation.
    torch.testing.assert_close(obs[:, 22:], env.state[:, 13:])


def test_same_seed_same_trajectories():
    params = sample_params(4, seed=2)
    a = rollout(QuadrotorTorchEnv(params, seed=7), 120, seed=0)
    b = rollout(QuadrotorTorchEnv(params, seed=7), 120, seed=0)
    c = rollout(QuadrotorTorchEnv(params, seed=8), 120, seed=0)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", ["crazyflie", "x500"])
def test_step_matches_quadrotor_batch(name: str):
    """Same state, force, previous action and action: same next state, reward, termination
    and observations as QuadrotorBatch (the numpy-reset engine of the gymnasium envs)."""
    n = 64
    env = QuadrotorTorchEnv(preset(name, n), seed=0)
    env.reset()
    env.force = torch.randn(n, 3) * 0.01
    env.prev_action = torch.rand(n, 4) * 2.4 - 1.2  # raw actions may lie outside [-1, 1]
    unclipped = QuadrotorBatch(n, name, clip_observation=False)
    clipped = QuadrotorBatch(n, name, clip_observation=True)
    for batch in (unclipped, clipped):
        batch.state = env.state.clone()
        batch.force = env.force.clone()
        batch.prev_action = env.prev_action.numpy().copy()
    action = torch.rand(n, 4) * 2.4 - 1.2
    obs, reward, terminated, _ = env.step(action)
    ref_obs, ref_reward, ref_terminated, info = unclipped.step(action.numpy())
    clipped_obs, *_ = clipped.step(action.numpy())
    torch.testing.assert_close(env.state, unclipped.state)
    np.testing.assert_allclose(reward.numpy(), ref_reward, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(terminated.numpy(), ref_terminated)
    np.testing.assert_allclose(obs[:, :22].numpy(), ref_obs, atol=1e-6)
    np.testing.assert_allclose(env.student_observation().numpy(), clipped_obs, atol=1e-6)
    np.testing.assert_allclose(env.position_error().numpy(), info["position_error"], rtol=1e-5)


def test_teacher_sees_unclipped_errors_student_clipped():
    env = QuadrotorTorchEnv(preset("x500", 1))
    env.reset()
    env.state[0, :3] = torch.tensor([2.0, -1.0, 0.2])
    env.state[0, 7:10] = torch.tensor([-1.5, 0.3, 1.8])
    teacher, student = env.observe()[0], env.student_observation()[0]
    torch.testing.assert_close(teacher[:3], torch.tensor([2.0, -1.0, 0.2]))
    torch.testing.assert_close(teacher[12:15], torch.tensor([-1.5, 0.3, 1.8]))
    p, v = CLIP_POSITION, CLIP_VELOCITY
    torch.testing.assert_close(student[:3], torch.tensor([p, -p, 0.2]))
    torch.testing.assert_close(student[12:15], torch.tensor([-v, 0.3, v]))
    torch.testing.assert_close(env.position_error()[0], torch.tensor(2.0**2 + 1 + 0.04).sqrt())


def test_reset_mask_resets_only_masked_envs():
    env = QuadrotorTorchEnv(sample_params(6, seed=3), seed=0)
    env.reset()
    for _ in range(3):
        env.step(torch.full((6, 4), 0.3))
    before = env.state.clone()
    mask = torch.tensor([True, False, True, False, False, True])
    obs = env.reset(mask)
    assert obs.shape == (6, 26)
    assert torch.equal(env.state[~mask], before[~mask])
    assert not torch.equal(env.state[mask], before[mask])
    assert env.steps.tolist() == [0, 3, 0, 3, 3, 0]
    assert (env.prev_action[mask] == 0).all() and (env.prev_action[~mask] == 0.3).all()
    torch.testing.assert_close(obs, env.observe())


def test_episodes_truncate_at_the_time_limit():
    env = QuadrotorTorchEnv(preset("x500", 3), seed=0, terminate_on_velocity=False)
    assert env.max_episode_steps == 500
    env = QuadrotorTorchEnv(preset("x500", 3), seed=0, max_episode_steps=4)
    env.reset()
    hover = env.params.hover_command() * 2 - 1
    flags = [env.step(hover)[3] for _ in range(5)]
    assert [bool(f.all()) for f in flags] == [False, False, False, True, True]
    env.reset(torch.tensor([True, False, False]))
    assert env.step(hover)[3].tolist() == [False, True, True]


def test_initial_state_distribution():
    """10% guidance starts at the target; otherwise RAPTOR's ranges (raptor.md section 6)."""
    n = 4000
    params = sample_params(n, seed=4)
    env = QuadrotorTorchEnv(params, seed=0)
    env.reset()
    state, arm = env.state, params.arm_length
    guidance = (state[:, :3] == 0).all(1)
    assert 0.08 < guidance.float().mean() < 0.12
    torch.testing.assert_close(state[guidance, 13:], params.hover_command()[guidance])
    assert (state[guidance, 3] == 1).all() and (state[guidance, 7:13] == 0).all()
    rest = state[~guidance]
    assert (rest[:, :3].abs() <= INIT_POSITION_ARMS * arm[~guidance, None] + 1e-6).all()
    torch.testing.assert_close(rest[:, 3:7].norm(dim=1), torch.ones(len(rest)))
    angle = 2 * torch.acos(rest[:, 3].clamp(max=1))
    assert angle.max() <= 1.0 + 1e-4 and angle.max() > 0.95
    assert (rest[:, 7:13].abs() <= 1).all() and (rest[:, 13:].min() >= 0)
    assert rest[:, 13:].max() <= 0.5
    # Disturbance forces: per axis N(0, disturbance_std) of each vehicle.
    z = env.force / params.disturbance_std[:, None]
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    no_force = QuadrotorTorchEnv(params, seed=0, disturbance=False)
    no_force.reset()
    assert (no_force.force == 0).all()
