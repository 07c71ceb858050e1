"""The Policy protocol and checkpoint format: round trips and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robolearn.algos.bc import MLPPolicy
from robolearn.data.normalizer import Normalizer
from robolearn.policy import POLICY_FILE, load_policy
from tests.conftest import GoToGoal


def make_mlp_policy() -> MLPPolicy:
    rng = np.random.default_rng(0)
    data = {
        "pos": rng.normal(size=(100, 2)),
        "goal": rng.normal(size=(100, 2)) * 3,
        "action": rng.uniform(-1, 1, size=(100, 2)),
    }
    torch.manual_seed(0)
    return MLPPolicy(
        ["pos", "goal"], [2, 2], 2, hidden=[32, 32], normalizer=Normalizer.fit(data, mode="limits")
    )


def test_mlp_policy_checkpoint_round_trip(tmp_path):
    policy = make_mlp_policy()
    obs = {"pos": np.ones((3, 2), np.float32), "goal": np.zeros((3, 2), np.float32)}
    path = policy.save(tmp_path / "ckpt")
    assert {p.name for p in path.iterdir()} == {
        "policy.json",
        "model.safetensors",
        "normalizer.safetensors",
    }
    loaded = load_policy(path)
    assert isinstance(loaded, MLPPolicy)
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    action = loaded.act(obs)
    assert action.shape == (3, 2) and action.dtype == np.float32
    assert np.all(np.abs(action) <= 1)


def test_scripted_policy_round_trip(tmp_path):
    path = GoToGoal(gain=2.5).save(tmp_path / "p")
    loaded = load_policy(path)
    assert isinstance(loaded, GoToGoal) and loaded.gain == 2.5


def test_missing_observation_key_is_named():
    with pytest.raises(KeyError, match="goal"):
        make_mlp_policy().act({"pos": np.zeros((1, 2), np.float32)})


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="policy.json"):
        load_policy(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / POLICY_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        load_policy(bad)
    (bad / POLICY_FILE).write_text(json.dumps({"format_version": 99, "class": "x:y"}))
    with pytest.raises(ValueError, match="version"):
        load_policy(bad)


def test_pretrained_names_a_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("robolearn.policy.PRETRAINED_DIR", tmp_path)
    GoToGoal(gain=1.5).save(tmp_path / "toy")
    loaded = load_policy("pretrained:toy")
    assert isinstance(loaded, GoToGoal) and loaded.gain == 1.5
    with pytest.raises(FileNotFoundError, match="no pretrained policy 'nope'; shipped: toy"):
        load_policy("pretrained:nope")
