"""RAPTOR teachers: a tiny batched run learns, checkpoints resume, Teachers round-trip."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
import torch

from robolearn.algos.batched_sac import BatchedSAC
from robolearn.algos.raptor.teachers import (
    BestTeachers,
    SharedTeacherEnv,
    TeacherConfig,
    Teachers,
    train_teachers,
)
from robolearn.policy import load_policy
from robolearn.training import read_metric
from sims.quadrotor.params import preset, sample_params
from sims.quadrotor.torch_env import QuadrotorTorchEnv

N = 4
EPISODE = 100
# Short episodes without the velocity termination. Real hovering needs tens of thousands of steps
# per teacher (BENCHMARKS.md raptor-teachers-budget: minutes, not a unit test), so the tiny run
# checks that training runs end to end and beats random motor commands.
make_env = partial(QuadrotorTorchEnv, max_episode_steps=EPISODE, terminate_on_velocity=False)


def tiny_config(steps: int) -> TeacherConfig:
    cfg = TeacherConfig.cpu_budget(steps)
    cfg.sac = dataclasses.replace(cfg.sac, warmup_steps=500, initial_alpha=0.05)
    return dataclasses.replace(cfg, log_every=500, checkpoint_every=1000)


class RandomPolicy:
    """Uniform random motor commands for N vehicles."""

    num_teachers = N

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.rand(N, 4, generator=self.gen) * 2 - 1


def test_reward_curriculum_ends_at_raptors_weights():
    cfg = TeacherConfig(curriculum_steps=100, curriculum_start=0.2)
    scales = [cfg.reward_scale(s) for s in (0, 50, 100, 10**6)]
    np.testing.assert_allclose(scales, [0.2, 0.6, 1.0, 1.0])
    envs: list[QuadrotorTorchEnv] = []

    def factory(params, seed, device):
        envs.append(make_env(params, seed, device))
        return envs[-1]

    cfg = dataclasses.replace(tiny_config(300), curriculum_steps=200)
    cfg.sac = dataclasses.replace(cfg.sac, warmup_steps=100, batch_size=32)
    train_teachers(sample_params(2, seed=3), cfg, factory, progress=False)
    # Training ran past the curriculum: the env is back to RAPTOR's reward.
    assert (envs[0].action_change_weight, envs[0].orientation_weight) == (1.0, 0.2)


def test_hover_action_holds_a_vehicle_at_rest():
    env = QuadrotorTorchEnv(sample_params(4, seed=1), disturbance=False)
    env.reset()
    env.state = torch.zeros_like(env.state)
    env.state[:, 3] = 1.0
    env.state[:, 13:17] = (env.hover_action() + 1) / 2  # motors already at the hover setpoint
    for _ in range(50):
        obs, reward, terminated, _ = env.step(env.hover_action())
    assert not terminated.any() and obs[:, 12:15].abs().max() < 1e-3  # velocity stays ~0


def test_tiny_run_beats_random_policy_and_logs(tmp_path):
    params = preset("crazyflie", N)
    teachers = train_teachers(
        params, tiny_config(2500), make_env, seed=0, progress=False, run_dir=tmp_path
    )
    assert teachers.num_teachers == N and len(teachers.train_returns) == N
    trained = teachers.evaluate(make_env(params, 123, "cpu"), episodes=4)
    random = Teachers.evaluate(RandomPolicy(), make_env(params, 123, "cpu"), episodes=4)
    assert trained.shape == (N,) and torch.isfinite(trained).all()
    assert (trained > random + 20).all(), (trained, random)
    steps, median = read_metric(tmp_path, "return/q50")
    assert steps.tolist() == [500, 1000, 1500, 2000, 2500] and np.isfinite(median).all()
    assert len(read_metric(tmp_path, f"teacher_return/{N - 1:04d}")[0]) == 5
    # The final checkpoint holds the same actors.
    saved = load_policy(tmp_path / "checkpoints" / "latest")
    obs = torch.randn(N, 26)
    assert torch.equal(saved.act(obs), teachers.act(obs))


def test_resumed_run_continues_from_its_checkpoint(tmp_path):
    params = sample_params(2, seed=5)
    cfg = dataclasses.replace(tiny_config(1000), checkpoint_every=600)
    cfg.sac = dataclasses.replace(cfg.sac, warmup_steps=300, batch_size=32)
    short = dataclasses.replace(cfg, steps=600)
    train_teachers(params, short, make_env, seed=1, progress=False, run_dir=tmp_path)
    resumed = train_teachers(params, cfg, make_env, seed=1, progress=False, run_dir=tmp_path)
    steps, _ = read_metric(tmp_path, "return/q50")
    assert steps.tolist() == [500, 600, 1000]  # the first run logged 500 and its end, 600
    state = torch.load(tmp_path / "checkpoints/latest/train_state.pt", weights_only=False)
    assert state["step"] == 1000 and state["replay"]["size"] == 1000
    assert torch.equal(
        load_policy(tmp_path / "checkpoints/latest").act(torch.ones(2, 26)),
        resumed.act(torch.ones(2, 26)),
    )


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    torch.manual_seed(0)
    teachers = Teachers(3, actor_hidden=(16, 8), train_returns=[1.0, 2.0, 3.0])
    obs = np.random.default_rng(0).normal(size=(3, 26)).astype(np.float32)
    teachers.save(tmp_path / "t")
    loaded = Teachers.load(tmp_path / "t")
    assert isinstance(load_policy(tmp_path / "t"), Teachers)
    assert loaded.train_returns == [1.0, 2.0, 3.0] and loaded.actor_hidden == (16, 8)
    np.testing.assert_array_equal(loaded.act(obs), teachers.act(obs))
    action = loaded.act(torch.from_numpy(obs))
    assert isinstance(action, torch.Tensor) and action.shape == (3, 4)
    assert (action.abs() < 1).all()


class Fleet:
    """Stand-in parameters of N vehicles: only how many there are, and ``select``."""

    def __init__(self, n: int) -> None:
        self.batch_size = n

    def select(self, index: list[int]) -> Fleet:
        return Fleet(len(index))


class TargetEnv:
    """One-step episodes for N teachers: the reward is -|action - 0.5| summed over motors."""

    obs_dim, act_dim = 26, 4

    def __init__(self, params: int | Fleet, seed: int, device: str) -> None:
        self.num_envs = params if isinstance(params, int) else params.batch_size

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(self.num_envs, self.obs_dim)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reward = -(action - 0.5).abs().sum(1)
        done = torch.ones(self.num_envs, dtype=torch.bool)
        return self.reset(), reward, ~done, done


def constant_teachers(actions: list[float]) -> Teachers:
    """Teachers whose every motor command is ``actions[i]`` whatever they observe."""
    teachers = Teachers(len(actions), actor_hidden=(8,))
    state = teachers.actor.state_dict()
    last = [k for k in state if k.endswith("weight")][-1]
    state[last].zero_()
    bias = state[last.replace("weight", "bias")]
    bias.zero_()
    bias[..., :4] = torch.atanh(torch.tensor(actions))[:, None, None].expand_as(bias[..., :4])
    return teachers


def test_best_teachers_keep_each_teachers_best_weights():
    best = BestTeachers(Fleet(2), TargetEnv, 0, "cpu", TeacherConfig(keep_best_episodes=3))
    best.submit(1, constant_teachers([0.5, -0.5]))  # teacher 0 perfect, teacher 1 off
    best.submit(2, constant_teachers([-0.5, 0.5]))  # the other way round
    (first, _), (second, returns) = best.finished()
    assert (first, second) == (1, 2)
    assert torch.allclose(returns, torch.tensor([-4.0, 0.0]), atol=1e-5)
    kept = best.result()
    assert torch.allclose(kept.act(torch.zeros(2, 26)), torch.full((2, 4), 0.5), atol=1e-5)
    assert kept.train_returns == pytest.approx([0.0, 0.0], abs=1e-5)


def test_best_teachers_resume_their_pending_evaluations():
    """A checkpoint taken while evaluations are pending keeps their candidates; restored, they
    are evaluated again and applied in order, as if nothing had happened."""
    cfg = TeacherConfig(keep_best_episodes=3)
    best = BestTeachers(Fleet(2), TargetEnv, 0, "cpu", cfg)
    best.submit(1, constant_teachers([0.5, -0.5]))
    assert best.state() is not None and best.state()["actor"] is None  # only pending
    list(best.finished())
    best.submit(2, constant_teachers([-0.5, 0.5]))
    best.submit(3, constant_teachers([0.0, 0.0]))
    state = best.state()
    resumed = BestTeachers(Fleet(2), TargetEnv, 0, "cpu", cfg)
    resumed.load_state(state, like=constant_teachers([0.9, 0.9]))
    assert [step for step, _ in resumed.finished()] == [2, 3]
    kept = resumed.result()
    assert torch.allclose(kept.act(torch.zeros(2, 26)), torch.full((2, 4), 0.5), atol=1e-5)
    assert kept.train_returns == pytest.approx([0.0, 0.0], abs=1e-5)


def test_side_by_side_rows_are_flown_by_their_teachers():
    torch.manual_seed(0)
    teachers = Teachers(3, actor_hidden=(8,))
    obs = torch.randn(2 * 3, 26)  # two rows per teacher: row j is teacher j % 3's
    torch.testing.assert_close(
        teachers.act(obs), torch.cat([teachers.act(obs[:3]), teachers.act(obs[3:])])
    )
    with pytest.raises(ValueError, match=r"shape \(k \* 3, 26\)"):
        teachers.act(torch.zeros(4, 26))
    # Three episodes shared by two rows per teacher (2 + 1): each mean is over exactly three.
    returns = constant_teachers([0.5, -0.5]).evaluate(TargetEnv(2 * 2, 0, "cpu"), episodes=3)
    torch.testing.assert_close(returns, torch.tensor([0.0, -4.0]), atol=1e-5, rtol=0)


def test_keep_best_run_returns_its_best_evaluated_teachers_and_resumes(tmp_path):
    params = sample_params(2, seed=5)
    cfg = dataclasses.replace(tiny_config(1000), checkpoint_every=600, keep_best_every=300)
    cfg = dataclasses.replace(cfg, keep_best_episodes=2)
    cfg.sac = dataclasses.replace(cfg.sac, warmup_steps=300, batch_size=32)
    short = dataclasses.replace(cfg, steps=600)
    train_teachers(params, short, make_env, seed=1, progress=False, run_dir=tmp_path)
    teachers = train_teachers(params, cfg, make_env, seed=1, progress=False, run_dir=tmp_path)
    steps, kept = read_metric(tmp_path, "eval/kept_return_median")
    _, evaluated = read_metric(tmp_path, "eval/return_median")
    assert steps.tolist() == [300, 600, 900, 1000]
    # The kept median never falls, and each evaluation's median is at most the kept one.
    assert np.all(np.diff(kept) >= 0) and np.all(evaluated <= kept + 1e-4)
    # The returned teachers are the kept ones, with the returns they were kept for.
    # (torch.median, as logged: the lower middle value of an even count)
    assert float(torch.tensor(teachers.train_returns).median()) == pytest.approx(kept[-1], rel=1e-5)
    assert torch.equal(
        load_policy(tmp_path / "checkpoints/latest").act(torch.ones(2, 26)),
        teachers.act(torch.ones(2, 26)),
    )
    # The evaluations draw nothing from the run's RNG: training itself is what it is without.
    finals = []
    for every in (0, 300):
        last: dict[str, Teachers] = {}
        run_cfg = dataclasses.replace(cfg, keep_best_every=every)
        train_teachers(
            params,
            run_cfg,
            make_env,
            seed=1,
            progress=False,
            callback=lambda _, t, last=last: last.update(t=t),
        )
        finals.append(last["t"].act(torch.ones(2, 26)))
    assert torch.equal(*finals)


def test_keep_best_evaluations_in_a_side_process_keep_the_same_teachers(tmp_path):
    """Evaluated in a side process, beside training, and interrupted with an evaluation
    pending at the checkpoint: the same teachers and evaluation log as evaluated in the loop.
    (Both runs stop at the checkpoint and resume: a resumed run draws new episodes.)"""
    params = sample_params(2, seed=5)
    cfg = dataclasses.replace(tiny_config(900), checkpoint_every=600, keep_best_every=300)
    cfg = dataclasses.replace(cfg, keep_best_episodes=2)
    cfg.sac = dataclasses.replace(cfg.sac, warmup_steps=300, batch_size=32)
    runs = {}
    for name in ("loop", "side"):
        for run_cfg in (dataclasses.replace(cfg, steps=600), cfg):
            runs[name] = train_teachers(
                params,
                run_cfg,
                make_env,
                seed=1,
                progress=False,
                run_dir=tmp_path / name,
                evaluation_process=name == "side",
            )
    assert torch.equal(runs["loop"].act(torch.ones(2, 26)), runs["side"].act(torch.ones(2, 26)))
    assert runs["loop"].train_returns == runs["side"].train_returns
    for metric in ("eval/return_median", "eval/kept_return_median"):
        loop_steps, loop_values = read_metric(tmp_path / "loop", metric)
        side_steps, side_values = read_metric(tmp_path / "side", metric)
        assert loop_steps.tolist() == side_steps.tolist() == [300, 600, 900]
        assert np.array_equal(loop_values, side_values)


def test_shared_teacher_expands_into_equivalent_per_vehicle_actors():
    torch.manual_seed(0)
    env = SharedTeacherEnv(make_env(sample_params(5, seed=2), 0, "cpu"))
    cfg = TeacherConfig.shared_cpu_budget().sac
    agent = BatchedSAC(1, env.obs_dim, 4, cfg)
    for p in agent.actor.parameters():  # not the near-zero output of a fresh init
        p.data.normal_(0.0, 0.3)
    teachers = env.expand(agent)
    assert teachers.num_teachers == 5
    mean = agent.actor(env.reset()[None])[0, :, :4]
    # What the vehicles' motors receive when the deterministic shared agent acts, from the raw
    # 26-D teacher observations of the same states (as distillation feeds them).
    expected = torch.tanh(mean + env.hover_offset)
    torch.testing.assert_close(teachers.act(env.env.observe()), expected, atol=1e-5, rtol=1e-5)
    # Zero agent output hovers every vehicle.
    torch.testing.assert_close(
        torch.tanh(env.hover_offset), env.env.hover_action(), atol=2e-3, rtol=0
    )


class VehicleTargetEnv(TargetEnv):
    """One-step episodes where each vehicle's best motor command depends on its parameters:
    vehicle ``i`` is rewarded ``-|a - 0.6 f_i|`` summed over its motors, ``f_i`` the first of
    its features. A policy blind to the features scores about -1.2 at best."""

    action_change_weight = orientation_weight = 1.0

    def __init__(self, params: int, seed: int, device: str) -> None:
        super().__init__(params, seed, device)
        self.features = torch.rand(params, 3, generator=torch.Generator().manual_seed(7)) * 2 - 1
        self.target = 0.6 * self.features[:, :1]

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reward = -(action - self.target).abs().sum(1)
        done = torch.ones(self.num_envs, dtype=torch.bool)
        return self.reset(), reward, ~done, done

    def observation_scale(self) -> torch.Tensor:
        return torch.ones(self.num_envs, self.obs_dim)

    def vehicle_features(self) -> torch.Tensor:
        return self.features

    def hover_action(self) -> torch.Tensor:
        return torch.full((self.num_envs, 4), -0.3)


def test_shared_teacher_learns_to_act_on_each_vehicles_parameters_and_resumes(tmp_path):
    n = 64
    cfg = TeacherConfig.shared_cpu_budget(400)
    cfg = dataclasses.replace(cfg, log_every=100, keep_best_every=0, curriculum_steps=0)
    cfg.sac = dataclasses.replace(cfg.sac, actor_hidden=(32, 32), critic_hidden=(64, 64))
    torch.manual_seed(0)
    initial = SharedTeacherEnv(VehicleTargetEnv(n, 0, "cpu"))
    before = initial.expand(BatchedSAC(1, initial.obs_dim, 4, cfg.sac))
    before = before.evaluate(VehicleTargetEnv(n, 0, "cpu"), episodes=1).mean()
    short = dataclasses.replace(cfg, steps=200, checkpoint_every=200)
    train_teachers(n, short, VehicleTargetEnv, seed=0, progress=False, run_dir=tmp_path)
    teachers = train_teachers(n, cfg, VehicleTargetEnv, seed=0, progress=False, run_dir=tmp_path)
    after = teachers.evaluate(VehicleTargetEnv(n, 0, "cpu"), episodes=1).mean()
    # Well past any feature-blind policy (-1.2), and far from where it started.
    assert after > -0.6 and after > before + 0.5, (before, after)
    steps, _ = read_metric(tmp_path, "return/q50")
    assert steps.tolist() == [100, 200, 300, 400]  # the first run's, then the resumed one's
    state = torch.load(tmp_path / "checkpoints/latest/train_state.pt", weights_only=False)
    assert state["step"] == 400 and state["replay"] is None  # refilled, not checkpointed


def test_raptor_shared_config_is_the_shared_cpu_preset():
    from robolearn.cli import compose_config, raptor_config

    cfg = raptor_config(compose_config(["algo=raptor_shared"]))
    # The shipped student's teacher: the 20k-step preset (its curriculum, its keep-best cadence)
    # trained on to 80k steps.
    preset = dataclasses.replace(TeacherConfig.shared_cpu_budget(20_000), steps=80_000)
    # The yaml logs and checkpoints more often; hover_init and normalize_obs do not apply.
    ignored = {"log_every", "checkpoint_every", "hover_init", "normalize_obs"}
    yaml, expected = (json.loads(json.dumps(c.to_dict())) for c in (cfg.teacher, preset))
    for name in set(expected) - ignored:
        assert yaml[name] == expected[name], name
    assert cfg.teachers == 1000 and cfg.min_teacher_return == 300
    assert (cfg.distill.epochs, cfg.distill.lr, cfg.distill.lr_final) == (60, 1e-3, 1e-4)
    assert cfg.distill.crash_replay == 5000 and cfg.distill.disturbance_correction
