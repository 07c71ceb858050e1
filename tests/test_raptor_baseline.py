"""The released RAPTOR policy as a robolearn Policy, and its weights in our student."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from robolearn.algos.raptor import StudentPolicy
from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy, released_student
from robolearn.policy import load_policy

HOVER_ACTION = 0.32  # normalised hover command the upstream executor resets the history to


def hover_observation(batch: int = 1) -> np.ndarray:
    """At the origin, level (identity rotation), at rest, previous action at hover."""
    obs = np.zeros((batch, 22), np.float32)
    obs[:, [3, 7, 11]] = 1.0
    obs[:, 18:] = HOVER_ACTION
    return obs


def random_observations(steps: int, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    obs = rng.normal(0, 0.3, size=(steps, batch, 22)).astype(np.float32)
    obs[..., 3:12] += np.eye(3, dtype=np.float32).ravel()  # near level
    return obs


def test_runs_on_synthetic_observations():
    policy = ReleasedRaptorPolicy()
    policy.reset(5)
    for obs in random_observations(50, 5, seed=0):
        action = policy.act(obs)
        assert action.shape == (5, 4) and action.dtype == np.float32
        assert np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1)
    with pytest.raises(ValueError, match="batch"):
        policy.act(hover_observation(2))  # the package itself would broadcast silently


def test_is_stateful_and_reset_restarts():
    policy = ReleasedRaptorPolicy()
    policy.reset(2)
    obs = hover_observation(2)
    first = policy.act(obs)
    second = policy.act(obs)
    assert not np.allclose(first, second)  # same input, moved hidden state
    policy.reset(2)
    np.testing.assert_array_equal(policy.act(obs), first)
    np.testing.assert_array_equal(first[0], first[1])  # the batch rows are independent copies


def test_hover_commands_are_balanced_and_near_hover():
    policy = ReleasedRaptorPolicy()
    policy.reset(1)
    action = policy.act(hover_observation())[0]
    assert np.ptp(action) < 0.15, action
    assert abs(action.mean() - HOVER_ACTION) < 0.1, action


def test_input_errors_are_clipped_like_px4():
    far = hover_observation()
    far[0, :3] = [3.0, -2.0, 4.0]
    far[0, 12:15] = [5.0, 0.2, -3.0]
    clipped = far.copy()
    clipped[0, :3] = [0.5, -0.5, 0.5]
    clipped[0, 12:15] = [1.0, 0.2, -1.0]
    far_policy, clipped_policy = ReleasedRaptorPolicy(), ReleasedRaptorPolicy()
    unclipped_policy = ReleasedRaptorPolicy(clip_inputs=False)
    for policy in (far_policy, clipped_policy, unclipped_policy):
        policy.reset(1)
    np.testing.assert_array_equal(far_policy.act(far), clipped_policy.act(clipped))
    assert not np.allclose(unclipped_policy.act(far), clipped_policy.raw_action)


def test_config_only_checkpoint(tmp_path):
    path = ReleasedRaptorPolicy(clip_inputs=False).save(tmp_path / "released")
    assert [p.name for p in path.iterdir()] == ["policy.json"]
    loaded = load_policy(path)
    assert isinstance(loaded, ReleasedRaptorPolicy) and loaded.clip_inputs is False
    assert loaded.policy_type == "raptor_released"


def test_released_weights_in_our_student_match_the_package():
    """Same layout and gate order: our torch student reproduces the released network."""
    ours = released_student()
    assert isinstance(ours, StudentPolicy)
    theirs = ReleasedRaptorPolicy(clip_inputs=False)
    ours.reset(3)
    theirs.reset(3)
    for obs in random_observations(200, 3, seed=1):
        np.testing.assert_allclose(ours.act(obs), theirs.act(obs), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours.raw_action, theirs.raw_action, atol=1e-5, rtol=0)


def test_missing_package_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_foundation_policy(name, *args, **kwargs):
        if name.startswith("foundation_policy"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_foundation_policy)
    with pytest.raises(ImportError, match=r"robolearn\[baselines\]"):
        ReleasedRaptorPolicy()
