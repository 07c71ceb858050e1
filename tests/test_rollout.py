"""Rollout: single and vector envs, per-episode stats, recording and rendering."""

from __future__ import annotations

import numpy as np

from robolearn.data.store import EpisodeStore
from robolearn.envs import make_vector_env
from robolearn.rollout import rollout
from tests.conftest import GoToGoal, PointEnv


class Still(GoToGoal):
    def act(self, obs):
        return np.zeros((len(obs["pos"]), 2), np.float32)


def test_single_env_stats(point_env):
    good = rollout(GoToGoal(), point_env, episodes=6, seed=3, progress=False)
    bad = rollout(Still(), point_env, episodes=6, seed=3, progress=False)
    assert [e.seed for e in good.episodes] == list(range(3, 9))
    assert good.success_rate == 1.0 and bad.success_rate < 0.5
    assert all(e.length == point_env.max_steps for e in bad.episodes if not e.success)
    assert good.mean_return > bad.mean_return


def test_vector_env_matches_single_env(point_env):
    single = rollout(GoToGoal(gain=0.7), point_env, episodes=5, seed=0, progress=False)
    vector_env = make_vector_env("robolearn_test/Point-v0", num_envs=3)
    vector = rollout(GoToGoal(gain=0.7), vector_env, episodes=5, seed=0, progress=False)
    by_seed = {e.seed: e for e in vector.episodes}
    assert sorted(by_seed) == list(range(5))
    for e in single.episodes:
        v = by_seed[e.seed]
        assert (v.length, v.success) == (e.length, e.success)
        np.testing.assert_allclose(v.episode_return, e.episode_return, rtol=1e-6)


def test_recording_aligns_observations_and_actions(tmp_path, point_env):
    store = EpisodeStore.create(tmp_path / "s.zarr", attrs={"observation_keys": ["pos", "goal"]})
    result = rollout(
        GoToGoal(), point_env, episodes=4, seed=10, store=store, source="test", progress=False
    )
    assert store.n_episodes == 4
    assert store.n_steps == sum(e.length for e in result.episodes)
    np.testing.assert_array_equal(store.meta("seed"), [e.seed for e in result.episodes])
    episode = store.get_episode(0)
    env = PointEnv()
    obs, _ = env.reset(seed=int(store.meta("seed")[0]))
    np.testing.assert_array_equal(episode["pos"][0], obs["pos"])
    expected = GoToGoal().act({k: v[None] for k, v in obs.items()})[0]
    np.testing.assert_array_equal(episode["action"][0], expected)
    assert episode["terminated"][-1] == result.episodes[0].success
    np.testing.assert_allclose(np.diff(episode["timestamp"]), 0.1)


def test_render_collects_frames_of_first_episodes():
    env = PointEnv(render_mode="rgb_array")
    result = rollout(Still(), env, episodes=3, seed=0, render_episodes=2, progress=False)
    assert len(result.videos) == 2
    assert result.videos[0].shape == (env.max_steps + 1, 16, 16, 3)
