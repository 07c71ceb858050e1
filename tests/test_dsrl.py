"""DSRL: the latent-action envs, both learners, the steered policy and a run that learns."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from robolearn.algos.diffusion import DiffusionConfig, DiffusionPolicy, train_diffusion
from robolearn.algos.dsrl import (
    DSRLNA,
    ChunkedEnv,
    DSRLConfig,
    NoiseActionVecEnv,
    SteeredPolicy,
    make_chunked_vec_env,
    train_dsrl,
)
from robolearn.algos.dsrl.envs import decode
from robolearn.algos.dsrl.train import (
    add_demonstrations,
    build_learner,
    make_evaluator,
    steered_policy,
)
from robolearn.data.store import EpisodeStore
from robolearn.policy import load_policy
from robolearn.rollout import rollout
from tests.conftest import TINY_DIFFUSION

GOAL = np.array([0.6, 0.0])


class ForkEnv(gym.Env):
    """Start near the origin; the goal is to the right. 12 steps, success within 0.15."""

    def __init__(self, max_steps: int = 12) -> None:
        self.observation_space = gym.spaces.Box(-2, 2, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.max_steps = max_steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.05, 0.05, 2)
        self.t = 0
        return self.pos.astype(np.float32), {"success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.clip(action, -1, 1), -2, 2)
        self.t += 1
        success = bool(np.linalg.norm(self.pos - GOAL) < 0.15)
        truncated = self.t >= self.max_steps and not success
        return self.pos.astype(np.float32), -1.0, success, truncated, {"success": success}


def fork_demos(path, episodes: int = 60, good_fraction: float = 0.5) -> EpisodeStore:
    """Demonstrations that head right (and succeed) half of the time, else left (and fail)."""
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, attrs={"observation_keys": ["obs"]})
    env = ForkEnv()
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        direction = 1.0 if rng.random() < good_fraction else -1.0
        frames = {"obs": [], "action": [], "reward": [], "terminated": []}
        done = False
        while not done:
            action = np.array([direction, 0.0], np.float32) + rng.normal(0, 0.05, 2)
            action = np.clip(action, -1, 1).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            frames["obs"].append(obs)
            frames["action"].append(action)
            frames["reward"].append(reward)
            frames["terminated"].append(terminated)
            obs, done = next_obs, terminated or truncated
        store.add_episode({k: np.asarray(v) for k, v in frames.items()})
    return store


#: The fork base's training settings: 1-frame MLP, 4-step chunks (DSRL's base shape).
FORK_BASE = DiffusionConfig(
    **{**TINY_DIFFUSION, "val_ratio": 0.0, "log_every": 500}, steps=1500, checkpoint_every=1500
)


@pytest.fixture(scope="module")
def fork_base(tmp_path_factory) -> tuple[DiffusionPolicy, EpisodeStore]:
    """A diffusion policy that reproduces the fork: mostly left, sometimes right."""
    tmp = tmp_path_factory.mktemp("fork")
    store = fork_demos(tmp / "demos.zarr")
    policy = train_diffusion(
        store.load(), store.episode_ends, ["obs"], FORK_BASE, tmp / "run", progress=False
    )
    return policy, store


def success_rate(policy, episodes: int = 40) -> float:
    env = gym.vector.SyncVectorEnv(
        [ForkEnv for _ in range(20)], autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    return rollout(policy, env, episodes, seed=1000, progress=False).success_rate


def test_base_policy_is_weak_but_not_hopeless(fork_base):
    base, _ = fork_base
    assert 0.1 <= success_rate(base) <= 0.6


def test_chunked_env_spaces_and_step_accounting(fork_base):
    base, _ = fork_base
    env = ChunkedEnv(ForkEnv(max_steps=6), base)
    assert env.observation_space.shape == (base.cond_dim,)
    assert env.action_space.shape == (4 * 2,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) and obs.dtype == np.float32
    left = np.tile([-1.0, 0.0], 4).astype(np.float32)
    obs, reward, terminated, truncated, info = env.step(left)
    assert info["env_steps"] == 4 and reward == -4.0  # ForkEnv's own reward: -1 per step
    obs, reward, terminated, truncated, info = env.step(left)
    # The time limit falls mid-chunk: the chunk stops there, as truncation, not termination.
    assert info["env_steps"] == 2 and truncated and not terminated


def test_chunked_env_sparse_reward_is_zero_from_success_on(fork_base):
    base, _ = fork_base
    env = ChunkedEnv(ForkEnv(), base, reward="sparse")
    env.reset(seed=0)
    right = np.tile([1.0, 0.0], 4).astype(np.float32)
    env.step(right)
    _, reward, terminated, _, info = env.step(right)  # reaches 0.6 +- 0.15 on step 5
    assert terminated and info["success"]
    assert reward == -(info["env_steps"] - 1)  # -1 per step before success, 0 on it


@pytest.fixture(scope="module")
def long_horizon_base(fork_base, tmp_path_factory) -> DiffusionPolicy:
    """A briefly trained base that predicts 8 steps and runs 4: its noise is not chunk-sized."""
    _, store = fork_base
    cfg = dataclasses.replace(FORK_BASE, horizon=8, steps=20, checkpoint_every=20)
    run_dir = tmp_path_factory.mktemp("long_horizon")
    return train_diffusion(store.load(), store.episode_ends, ["obs"], cfg, run_dir, progress=False)


def test_noise_action_env_decodes_with_the_base(long_horizon_base):
    base = long_horizon_base
    venv = NoiseActionVecEnv(make_chunked_vec_env(ForkEnv, base, n_envs=2), base, 1.5)
    assert venv.action_space.shape == (8 * 2,)  # noise over the whole prediction horizon
    assert np.allclose(venv.action_space.high, 1.5)
    cond = venv.reset()
    starts = np.array([chunked.env.pos for chunked in venv.venv.envs])
    noise = np.random.default_rng(0).uniform(-1.5, 1.5, (2, 16)).astype(np.float32)
    with torch.no_grad():
        chunks = base.decode(torch.as_tensor(cond), torch.as_tensor(noise).reshape(2, 8, 2))
    assert chunks.shape == (2, 4, 2)
    _, _, dones, infos = venv.step(noise)
    assert not dones.any()  # 4 steps of 0.1 cannot reach the goal: no autoreset moved them
    assert all(info["env_steps"] == 4 for info in infos)
    # Each env moved by exactly the chunk its noise decodes into (ForkEnv: 0.1 x action).
    moved = np.array([chunked.env.pos for chunked in venv.venv.envs]) - starts
    np.testing.assert_allclose(moved, 0.1 * chunks.numpy().sum(1), atol=1e-5)
    venv.close()


class CountingForkEnv(ForkEnv):
    """ForkEnv that counts the env steps taken by all its instances."""

    steps = 0

    def step(self, action):
        CountingForkEnv.steps += 1
        return super().step(action)


def test_training_counts_env_steps_and_stores_time_limits_as_timeouts(fork_base, tmp_path):
    from stable_baselines3.common.save_util import load_from_pkl

    from robolearn.algos.dsrl.train import BUFFER_FILE, PROGRESS_FILE

    base, _ = fork_base
    # The warm-up is configured in env steps and counted by SB3 in chunks of Ta = 4.
    cfg = DSRLConfig(n_envs=2, net_arch=(32, 32), warmup_env_steps=10, reward="sparse")
    assert build_learner(cfg, base, ForkEnv, seed=0).learning_starts == 3
    # A run inside its warm-up: the base's own noise, no updates, then a checkpoint.
    cfg = dataclasses.replace(cfg, env_steps=200, warmup_env_steps=10_000)
    CountingForkEnv.steps = 0
    train_dsrl(base, CountingForkEnv, cfg, tmp_path, lambda policy: 0.0, progress=False)
    latest = tmp_path / "checkpoints" / "latest"
    progress = json.loads((latest / PROGRESS_FILE).read_text())
    assert progress["env_steps"] == CountingForkEnv.steps >= 200
    buffer = load_from_pkl(latest / BUFFER_FILE)
    n = buffer.size()
    dones, timeouts = buffer.dones[:n].ravel(), buffer.timeouts[:n].ravel()
    rewards = buffer.rewards[:n].ravel()
    # A failed episode ends at ForkEnv's 12-step limit on a whole chunk (sparse reward -4) and
    # must be stored as a timeout, so that TD still bootstraps from its last state; a success
    # (reward > -4 on its last chunk) is a true termination.
    truncated, succeeded = (dones == 1) & (rewards == -4), (dones == 1) & (rewards > -4)
    assert truncated.any() and succeeded.any()
    assert (timeouts[truncated] == 1).all() and (timeouts[succeeded] == 0).all()


def test_dsrl_na_rejects_an_env_without_chunk_actions(fork_base):
    base, _ = fork_base
    with pytest.raises(ValueError, match="action chunk"):
        DSRLNA("MlpPolicy", ForkEnv(), base=base)


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_demonstrations_fill_the_replay_buffer(fork_base, variant):
    base, store = fork_base
    cfg = DSRLConfig(variant=variant, n_envs=2, warmup_env_steps=0, noise_bound=1.5)
    model = build_learner(cfg, base, ForkEnv, seed=0)
    added = add_demonstrations(model, store, base, reward="sparse")
    buffer = model.replay_buffer
    assert added.chunks > 0 and buffer.size() * 2 == added.chunks
    rewards = buffer.rewards[: buffer.size()].ravel()
    assert rewards.min() >= -4 and rewards.max() <= 0 and (rewards > -4).any()
    actions = buffer.actions[: buffer.size()].reshape(added.chunks, -1)
    assert np.abs(actions).max() <= 1.0
    if variant == "sac":
        # The stored noise decodes back into the demonstrated chunks (ForkEnv's demo actions
        # are +-1 with 0.05 noise, so an error of 0.05 is a chunk within its own noise).
        assert added.inversion_error < 0.05, added
        obs = buffer.observations[: buffer.size()].reshape(added.chunks, -1)
        chunks = decode(base, obs, model.policy.unscale_action(actions))
        assert np.sign(chunks[:, 0]).tolist().count(1.0) > 0.2 * added.chunks  # both modes
        assert np.sign(chunks[:, 0]).tolist().count(-1.0) > 0.2 * added.chunks
    else:
        assert added.inversion_error is None


def test_ddim_inversion_recovers_the_noise_of_a_sample(fork_base):
    base, _ = fork_base
    rng = np.random.default_rng(0)
    cond = torch.as_tensor(rng.uniform(-0.05, 0.05, (64, 2)).astype(np.float32))
    noise = torch.as_tensor(rng.standard_normal((64, *base.noise_shape)).astype(np.float32))
    chunk = base.decode(cond, noise)  # Tp == Ta here: the chunk is the whole horizon
    error = (base.decode(cond, base.invert(cond, chunk)) - chunk).abs()
    assert error.mean() < 0.015 and error.max() < 0.1, (error.mean(), error.max())
    # The fixed-point refinement is what makes it this close (measured: 0.024 -> 0.0065).
    plain = base.schedule.ddim_invert(
        lambda x, t: base.model(x, t, cond),
        base.normalizer.normalize("action", chunk),
        base.inference_steps,
        refine=0,
    )
    assert (base.decode(cond, plain) - chunk).abs().mean() > 2 * error.mean()
    # A fresh noise decodes into the other mode about half the time: far from the chunk.
    other = base.decode(cond, torch.randn_like(noise))
    assert (other - chunk).abs().mean() > 0.3
    with pytest.raises(ValueError, match="planned actions have shape"):
        base.invert(cond, chunk[:, :2])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_steered_actor_is_the_sb3_actor_mean(fork_base, layer_norm):
    base, _ = fork_base
    cfg = DSRLConfig(n_envs=2, net_arch=(32, 32), layer_norm=layer_norm)
    model = build_learner(cfg, base, ForkEnv, seed=0)
    norms = [m for m in model.actor.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == (2 if layer_norm else 0)
    critic_norms = [m for m in model.action_critic.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(critic_norms) == (4 if layer_norm else 0)  # two Q heads x two hidden layers
    steered = steered_policy(model, base, cfg.noise_bound)
    cond = torch.randn(8, base.cond_dim)
    with torch.no_grad():
        expected = model.actor(cond, deterministic=True) * cfg.noise_bound
    torch.testing.assert_close(steered.noise(cond).reshape(8, -1), expected)


def test_noise_prior_turns_the_entropy_term_into_a_kl(fork_base):
    from torch.distributions import AffineTransform, Normal, TanhTransform
    from torch.distributions import TransformedDistribution as Transformed

    base, _ = fork_base
    cfg = DSRLConfig(n_envs=2, net_arch=(32, 32), noise_prior=True, ent_coef=0.1)
    model = build_learner(cfg, base, ForkEnv, seed=0)
    torch.manual_seed(0)
    for cond in torch.randn(3, 1, base.cond_dim):
        with torch.no_grad():
            _, estimates = model.actor.action_log_prob(cond.repeat(20_000, 1))
            # The same KL(pi(.|s) || N(0, I)) by torch.distributions, on other samples.
            mean, log_std, _ = model.actor.get_action_dist_params(cond)
            scale = AffineTransform(0.0, cfg.noise_bound)
            pi = Transformed(Normal(mean[0], log_std[0].exp()), [TanhTransform(), scale])
            w = pi.sample((20_000,)).clamp(-cfg.noise_bound + 1e-4, cfg.noise_bound - 1e-4)
            reference = (pi.log_prob(w) - Normal(0.0, 1.0).log_prob(w)).sum(1).mean()
        assert reference > 0
        assert abs(estimates.mean() - reference) < 0.15, (estimates.mean(), reference)


def test_stochastic_steered_policy_samples_the_actor(fork_base, tmp_path):
    base, _ = fork_base
    model = build_learner(DSRLConfig(n_envs=2, net_arch=(32, 32)), base, ForkEnv, seed=0)
    mean = steered_policy(model, base, 1.5)
    sampled = steered_policy(model, base, 1.5, stochastic=True)
    cond = torch.randn(8, base.cond_dim)
    first, second = sampled.noise(cond), sampled.noise(cond)
    assert not torch.allclose(first, second)  # a fresh draw each call
    assert first.abs().max() <= 1.5
    torch.testing.assert_close(mean.noise(cond), mean.noise(cond))
    # The draws are SB3's: the same mean and spread as the actor's own samples.
    many = cond[:1].repeat(4000, 1)
    ours = sampled.noise(many).reshape(4000, -1)
    with torch.no_grad():
        theirs = model.actor(many, deterministic=False) * 1.5
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(ours.std(0), theirs.std(0), atol=0.06, rtol=0)
    # Saved and loaded, it samples the same sequence from the same seed.
    loaded = load_policy(sampled.save(tmp_path / "steered"))
    assert loaded.stochastic
    fresh = steered_policy(model, base, 1.5, stochastic=True)
    torch.testing.assert_close(loaded.noise(cond), fresh.noise(cond))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="algo.variant"):
        DSRLConfig(variant="ppo")
    with pytest.raises(ValueError, match="algo.noise_bound"):
        DSRLConfig(noise_bound=0)
    with pytest.raises(ValueError, match="algo.activation"):
        DSRLConfig(activation="Swishy")
    with pytest.raises(ValueError, match="algo.ent_coef.*noise_prior"):
        DSRLConfig(noise_prior=True, ent_coef="auto")


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_dsrl_raises_the_success_of_a_weak_base(fork_base, tmp_path, variant):
    base, _ = fork_base
    base_success = success_rate(base)
    cfg = DSRLConfig(
        variant=variant,
        env_steps=3000,
        n_envs=4,
        noise_bound=1.5,
        gradient_steps=4,
        distill_steps=4,
        batch_size=128,
        net_arch=(64, 64),
        warmup_env_steps=400,
        eval_every=1000,
        eval_episodes=20,
    )
    evaluate = make_evaluator(
        lambda: gym.vector.SyncVectorEnv(
            [ForkEnv for _ in range(20)], autoreset_mode=gym.vector.AutoresetMode.DISABLED
        ),
        20,
        seed=5000,
    )
    steered = train_dsrl(base, ForkEnv, cfg, tmp_path, evaluate, seed=0, progress=False)
    steered_success = success_rate(steered)
    assert steered_success >= max(0.8, base_success + 0.3), (base_success, steered_success)
    assert (tmp_path / "success.png").is_file()

    # Round trip: the saved steered policy acts exactly as the trained one.
    loaded = load_policy(steered.save(tmp_path / "steered"))
    assert isinstance(loaded, SteeredPolicy)
    obs = np.random.default_rng(0).uniform(-0.1, 0.1, (5, 2)).astype(np.float32)
    steered.reset(5)
    loaded.reset(5)
    np.testing.assert_allclose(loaded.act_chunk(obs), steered.act_chunk(obs), atol=1e-6)
