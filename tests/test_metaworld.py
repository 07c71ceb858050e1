"""Meta-World adapter: lazy registration, spaces, seeding, scripted experts, recording and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("metaworld")

import sims  # noqa: E402
from robolearn.cli import main  # noqa: E402
from robolearn.data.store import EpisodeStore  # noqa: E402
from robolearn.envs import make_env  # noqa: E402
from robolearn.policy import FLAT_OBS_KEY, load_policy  # noqa: E402
from robolearn.rollout import control_hz, rollout  # noqa: E402
from sims.metaworld import IMPERFECT_NOISE, MetaWorldEnv, MetaWorldExpert, make_expert  # noqa: E402

PUSH = "robolearn/MetaWorld-push-v3"
REQUIRED = ("push-v3", "door-open-v3", "drawer-open-v3", "button-press-v3", "reach-v3")


@pytest.fixture(scope="module")
def push_env():
    env = make_env(PUSH)
    yield env
    env.close()


def test_ids_register_lazily_and_need_metaworld_only_to_make_an_env():
    script = textwrap.dedent(
        f"""
        import sys
        import gymnasium
        import sims
        ids = {[f"robolearn/MetaWorld-{t}" for t in REQUIRED]!r}
        assert all(i in gymnasium.registry for i in ids), sorted(gymnasium.registry)
        assert "metaworld" not in sys.modules and "mujoco" not in sys.modules
        sys.modules["metaworld"] = None  # as if it were not installed
        from robolearn.envs import make_env
        try:
            make_env(ids[0])
        except ImportError as err:
            assert 'pip install -e ".[metaworld]"' in str(err), err
        else:
            raise AssertionError("made a Meta-World env without metaworld")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("env_id", list(sims.METAWORLD_ENVS))
def test_spaces_and_steps(env_id):
    env = make_env(env_id)
    assert env.spec.max_episode_steps == sims.METAWORLD_MAX_EPISODE_STEPS
    assert control_hz(env) == 80 and env.unwrapped.dt == pytest.approx(1 / 80)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    space = env.action_space
    assert space.shape == (4,) and np.all(space.low == -1) and np.all(space.high == 1)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and info["success"] is False
    obs, reward, terminated, truncated, info = env.step(space.sample())
    assert obs in env.observation_space and isinstance(reward, float)
    assert info["success"] is False and not terminated and not truncated
    env.close()


def test_reward_costs_every_step_so_finishing_beats_dawdling_at_the_goal():
    """Meta-World's reward (0-10) is mapped to [-1, 0]: with positive rewards and episodes that
    end on success, dawdling next to the goal until the time limit would out-earn finishing."""
    env = MetaWorldEnv("push-v3")
    expert = MetaWorldExpert("push-v3")
    obs, _ = env.reset(seed=0)
    expert.reset()
    rewards = []
    for _ in range(sims.METAWORLD_MAX_EPISODE_STEPS):
        obs, reward, terminated, _, info = env.step(expert.act(obs[None])[0])
        rewards.append(reward)
        assert reward == pytest.approx(info["metaworld_reward"] / 10 - 1)
        if terminated:
            break
    assert info["success"] and all(-1.0 <= r <= 0.0 for r in rewards)
    # The last step before success earns the most; even so, one more step of it is a loss.
    assert max(rewards[:-1]) < 0.0
    env.close()


def test_same_seed_same_initial_state(push_env):
    first, _ = push_env.reset(seed=3)
    for _ in range(10):
        push_env.step(push_env.action_space.sample())
    other, _ = push_env.reset(seed=4)
    again, _ = push_env.reset(seed=3)
    fresh, _ = make_env(PUSH).reset(seed=3)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, fresh)
    # Object (4:7) and goal (-3:) positions are drawn per seed.
    assert np.abs(first[4:7] - other[4:7]).max() > 1e-3
    assert np.abs(first[-3:] - other[-3:]).max() > 1e-3


def test_success_is_a_bool_and_terminates_when_asked():
    expert = MetaWorldExpert("push-v3")
    for terminate in (True, False):
        env = MetaWorldEnv("push-v3", terminate_on_success=terminate)
        obs, _ = env.reset(seed=0)
        expert.reset()
        for _ in range(sims.METAWORLD_MAX_EPISODE_STEPS):
            obs, _, terminated, _, info = env.step(expert.act(obs[None])[0])
            assert type(info["success"]) is bool
            if info["success"]:
                break
        assert info["success"] and terminated is terminate
        env.close()


def test_clean_expert_succeeds(push_env):
    result = rollout(make_expert(PUSH), push_env, episodes=10, seed=0, progress=False)
    assert result.success_rate >= 0.9


def test_noisy_expert_is_worse_and_seeded(push_env):
    noise = IMPERFECT_NOISE["push-v3"]
    clean = rollout(make_expert(PUSH), push_env, episodes=6, seed=0, progress=False)
    noisy = rollout(make_expert(PUSH, noise, seed=1), push_env, 6, seed=0, progress=False)
    assert noisy.success_rate < clean.success_rate
    assert noisy.mean_length > clean.mean_length

    obs, _ = push_env.reset(seed=0)
    batch = np.repeat(obs[None], 3, axis=0)

    def actions(expert, steps=5):
        return np.stack([expert.act({FLAT_OBS_KEY: batch}) for _ in range(steps)])

    a, b = make_expert(PUSH, noise, seed=7), make_expert(PUSH, noise, seed=7)
    first = actions(a)
    np.testing.assert_array_equal(first, actions(b))  # same seed, same noise
    assert not np.array_equal(first, actions(make_expert(PUSH, noise, seed=8)))
    a.reset(3)
    assert not np.array_equal(first, actions(a))  # the next batch gets new noise
    assert np.all(np.abs(first) <= 1) and first.dtype == np.float32
    assert not np.array_equal(first[:, 0], first[:, 1])  # each env of a batch its own noise
    clean = actions(make_expert(PUSH))
    np.testing.assert_array_equal(clean[:, 0], clean[:, 1])


def test_expert_leaves_observations_alone_and_saves(tmp_path):
    env = make_env("robolearn/MetaWorld-door-open-v3")
    obs, _ = env.reset(seed=0)
    batch = obs[None].copy()
    expert = make_expert("robolearn/MetaWorld-door-open-v3", noise=0.5, seed=2)
    expert.act(batch)  # Meta-World's door policy writes into the array it gets
    np.testing.assert_array_equal(batch[0], obs)
    loaded = load_policy(expert.save(tmp_path / "expert"))
    assert loaded.config() == {"task": "door-open-v3", "noise": 0.5, "seed": 2}
    with pytest.raises(ValueError, match="known ids"):
        make_expert("robolearn/ArmPush-v0")
    env.close()


def test_rollout_records_an_episode_store(tmp_path, push_env):
    store = EpisodeStore.create(tmp_path / "s.zarr", attrs={"observation_keys": [FLAT_OBS_KEY]})
    result = rollout(make_expert(PUSH), push_env, episodes=2, seed=5, store=store, progress=False)
    assert store.n_episodes == 2 and store.n_steps == sum(e.length for e in result.episodes)
    np.testing.assert_array_equal(store.meta("seed"), [5, 6])
    episode = store.get_episode(0)
    obs, _ = push_env.reset(seed=5)
    np.testing.assert_array_equal(episode[FLAT_OBS_KEY][0], obs)
    np.testing.assert_array_equal(episode["action"][0], make_expert(PUSH).act(obs[None])[0])
    assert episode["terminated"][-1] == result.episodes[0].success


def test_render_is_an_upright_rgb_frame():
    env = make_env(PUSH, render_mode="rgb_array", render_size=64)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 10
    # Upright: the empty (black) background is above the table, not below it.
    background = frame.astype(int).sum(axis=-1) < 15
    assert background[:16].mean() > 0.5 and background[-16:].mean() < 0.05
    env.close()


def test_cli_records_and_replays(tmp_path):
    run = tmp_path / "rec"
    args = ["env=metaworld_push", "episodes=2", "progress=false", f"run_dir={run}"]
    assert main(["record", *args]) == 0
    store = EpisodeStore.open(run / "episodes.zarr")
    assert store.n_episodes == 2 and store.attrs["env_id"] == PUSH
    assert store.attrs["observation_keys"] == [FLAT_OBS_KEY] and store.attrs["control_hz"] == 80
    assert store.meta("success").all()
    replay = tmp_path / "replay"
    log = run / "episodes.zarr"
    args = [f"log={log}", "episode=1", "video_episodes=0", "progress=false", f"run_dir={replay}"]
    assert main(["replay", *args]) == 0
    assert json.loads((replay / "report.json").read_text())["max_divergence"] == 0.0
