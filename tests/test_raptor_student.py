"""RAPTOR student: exact size, GRU convention, sequence/step agreement, policy and checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.algos.raptor import RaptorStudent, StudentPolicy
from robolearn.policy import WEIGHTS_FILE, load_policy


def random_student(seed: int = 0) -> RaptorStudent:
    torch.manual_seed(seed)
    model = RaptorStudent()
    with torch.no_grad():
        model.initial_hidden.normal_(0, 0.5)  # a non-zero learned start, as after training
        model.output_layer.weight.mul_(8)  # large outputs, so some actions saturate
    return model


def reference_gru_step(model: RaptorStudent, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The cell written out from the RAPTOR description, independent of nn.GRU."""
    gru = model.gru
    gi = x @ gru.weight_ih_l0.T + gru.bias_ih_l0
    gh = h @ gru.weight_hh_l0.T + gru.bias_hh_l0
    r = torch.sigmoid(gi[:, :16] + gh[:, :16])
    z = torch.sigmoid(gi[:, 16:32] + gh[:, 16:32])
    n = torch.tanh(gi[:, 32:] + r * gh[:, 32:])
    return z * h + (1 - z) * n


def test_exactly_2084_parameters():
    model = RaptorStudent()
    assert sum(p.numel() for p in model.parameters()) == 2084
    assert model.initial_hidden.shape == (16,) and model.initial_hidden.requires_grad


def test_sequence_forward_matches_the_raptor_cell_and_single_steps():
    model = random_student()
    obs = torch.randn(3, 50, 22)
    with torch.no_grad():
        actions, last = model(obs)
        h_ref = h_step = model.initial_state(3)
        for t in range(50):
            h_ref = reference_gru_step(model, torch.relu(model.input_layer(obs[:, t])), h_ref)
            step_action, h_step = model.step(obs[:, t], h_step)
            torch.testing.assert_close(model.output_layer(h_ref), actions[:, t], atol=1e-6, rtol=0)
            torch.testing.assert_close(step_action, actions[:, t], atol=1e-6, rtol=0)
        torch.testing.assert_close(last, h_ref, atol=1e-6, rtol=0)
        # Continuing from a given hidden state equals running the whole sequence at once.
        first, mid = model(obs[:, :20])
        second, _ = model(obs[:, 20:], mid)
        torch.testing.assert_close(torch.cat([first, second], 1), actions, atol=1e-6, rtol=0)


def test_bptt_reaches_every_parameter_including_the_initial_state():
    model = random_student()
    actions, _ = model(torch.randn(2, 30, 22))
    torch.nn.functional.mse_loss(actions, torch.zeros_like(actions)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_policy_acts_statefully_clips_and_resets():
    policy = StudentPolicy(random_student())
    obs = np.random.default_rng(0).normal(size=(4, 22)).astype(np.float32)
    policy.reset(4)
    first = policy.act(obs)
    assert first.shape == (4, 4) and first.dtype == np.float32
    assert np.all(np.abs(first) <= 1) and np.any(np.abs(policy.raw_action) > 1)
    np.testing.assert_array_equal(first, np.clip(policy.raw_action, -1, 1))
    assert not np.allclose(policy.act(obs), first)  # the hidden state moved on
    policy.reset(4)
    np.testing.assert_array_equal(policy.act({"obs": obs}), first)
    with pytest.raises(ValueError, match="batch"):
        policy.act(obs[:2])
    with pytest.raises(ValueError, match="22"):
        policy.act(np.zeros((4, 21), np.float32))


def test_policy_feeds_back_the_raw_action():
    """From the second step on the network sees its own unclipped output (RAPTOR training)."""
    model = random_student()
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(20, 2, 22)).astype(np.float32)
    policy = StudentPolicy(model)
    policy.reset(2)
    seen, raw = [], None
    for t in range(20):
        env_obs = obs[t].copy()
        policy.act(env_obs)
        np.testing.assert_array_equal(env_obs, obs[t])  # the caller's array is left alone
        seen.append(policy.network_input)
        if raw is not None:
            np.testing.assert_array_equal(policy.network_input[:, 18:], raw)
        raw = policy.raw_action
    expected, _ = model(torch.from_numpy(np.stack(seen, 1)))
    np.testing.assert_allclose(policy.raw_action, expected[:, -1].detach().numpy(), atol=1e-6)
    # Without feedback the observation goes in as given.
    plain = StudentPolicy(model, raw_action_feedback=False)
    plain.reset(2)
    for t in range(3):
        plain.act(obs[t])
    np.testing.assert_array_equal(plain.network_input, obs[2])


def test_small_cpu_batches_step_in_numpy_with_the_weights_of_reset():
    """Deployment-sized batches step in numpy (no GIL release per op), larger ones in torch,
    with the same actions; each reset takes the model's current weights."""
    model = random_student()
    obs = np.random.default_rng(2).normal(size=(30, 9, 22)).astype(np.float32)
    small, large = StudentPolicy(model), StudentPolicy(model)
    small.reset(StudentPolicy.NUMPY_MAX_BATCH)
    large.reset(9)
    assert isinstance(small.hidden, np.ndarray) and isinstance(large.hidden, torch.Tensor)
    for t in range(30):
        a_small = small.act(obs[t, : StudentPolicy.NUMPY_MAX_BATCH])
        a_large = large.act(obs[t])
    np.testing.assert_allclose(a_small, a_large[: StudentPolicy.NUMPY_MAX_BATCH], atol=1e-5)
    small.reset(1)
    small.act(obs[0, :1])
    before = small.raw_action.copy()
    with torch.no_grad():
        model.output_layer.bias.add_(0.5)  # training goes on between episodes
    small.reset(1)
    small.act(obs[0, :1])  # the next episode takes the new weights
    np.testing.assert_allclose(small.raw_action, before + 0.5, atol=1e-5)


def test_numpy_step_saturates_its_gates_silently_as_torch_does():
    """Far outside the training data (a crash), the sigmoid gates saturate without an overflow
    warning (which a deployment would print at 100 Hz) and agree with torch."""
    import warnings

    model = random_student()
    obs = np.full((1, 22), 1e4, dtype=np.float32)
    obs[0, ::2] = -1e4
    in_numpy, in_torch = StudentPolicy(model), StudentPolicy(model)
    in_numpy.reset(1)
    in_torch.reset(StudentPolicy.NUMPY_MAX_BATCH + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        action = in_numpy.act(obs)
    reference = in_torch.act(np.repeat(obs, StudentPolicy.NUMPY_MAX_BATCH + 1, 0))[:1]
    np.testing.assert_allclose(action, reference, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    policy = StudentPolicy(random_student(), raw_action_feedback=False)
    path = policy.save(tmp_path / "student")
    assert {p.name for p in path.iterdir()} == {"policy.json", WEIGHTS_FILE}
    loaded = load_policy(path)
    assert isinstance(loaded, StudentPolicy) and loaded.policy_type == "raptor_student"
    assert loaded.raw_action_feedback is False
    obs = np.random.default_rng(2).normal(size=(10, 3, 22)).astype(np.float32)
    policy.reset(3)
    loaded.reset(3)
    for t in range(10):
        np.testing.assert_array_equal(loaded.act(obs[t]), policy.act(obs[t]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_policy_matches_cpu(tmp_path):
    cpu = StudentPolicy(random_student())
    gpu = load_policy(cpu.save(tmp_path / "s"), device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    obs = np.random.default_rng(3).normal(size=(5, 2, 22)).astype(np.float32)
    cpu.reset(2)
    gpu.reset(2)
    for t in range(5):
        np.testing.assert_allclose(gpu.act(obs[t]), cpu.act(obs[t]), atol=1e-5)
