"""CUDA graphs (robolearn.cuda_graph): replays compute what eager calls compute."""

from __future__ import annotations

import pytest
import torch

from robolearn.algos.batched_sac import BatchedSAC, BatchedSACConfig
from robolearn.cuda_graph import GraphedFunction
from sims.quadrotor.params import sample_params
from sims.quadrotor.torch_env import QuadrotorTorchEnv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_replays_match_eager_calls_and_outputs_are_the_callers():
    def fn(x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {"a": (2 * x).sin() + y, "b": x.cumsum(0)}

    graphed = GraphedFunction(fn)
    results, expected = [], []
    for i in range(5):
        x = torch.randn(64, device="cuda") * (i + 1)
        y = torch.randn(64, device="cuda")
        results.append(graphed(x, y))
        expected.append(fn(x, y))
    assert len(graphed._graphs) == 1  # warmed up once, captured once, replayed after
    for got, want in zip(results, expected):  # earlier outputs survive later replays
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_graphed_quadrotor_steps_equal_eager_steps():
    params = sample_params(256, 4)
    graphed, eager = (QuadrotorTorchEnv(params, seed=2, device="cuda") for _ in range(2))
    eager._graphed_advance = eager._advance  # the same step, launched kernel by kernel
    assert torch.equal(graphed.reset(), eager.reset())
    generator = torch.Generator(device="cuda").manual_seed(0)
    for t in range(60):
        for env in (graphed, eager):  # a curriculum changes the weights every step
            env.action_change_weight = 0.01 * t
        action = torch.rand(256, 4, device="cuda", generator=generator) * 2.4 - 1.2
        for got, want in zip(graphed.step(action), eager.step(action)):
            assert torch.equal(got, want)
        if t % 20 == 19:
            done = torch.arange(256, device="cuda") % 3 == t % 3
            assert torch.equal(graphed.reset(done), eager.reset(done))
    assert torch.equal(graphed.state, eager.state)


def test_graphed_sac_updates_train_the_real_weights():
    torch.manual_seed(0)
    cfg = BatchedSACConfig(actor_hidden=(32, 32), critic_hidden=(64, 64), batch_size=64)
    agents = BatchedSAC(3, 5, 2, cfg).cuda()
    batch = {
        "obs": torch.randn(3, 64, 5, device="cuda"),
        "action": torch.rand(3, 64, 2, device="cuda") * 2 - 1,
        "reward": torch.randn(3, 64, 1, device="cuda"),
        "next_obs": torch.randn(3, 64, 5, device="cuda"),
        "terminated": torch.ones(3, 64, 1, device="cuda"),  # targets = rewards: a regression
    }
    first = agents.update(batch, update_actor=True)["critic_loss"].item()
    actor = [p.detach().clone() for p in agents.actor.parameters()]
    alpha = agents.log_alpha.detach().clone()
    for step in range(300):
        metrics = agents.update(batch, update_actor=step % 2 == 0)
    assert len(agents._graphed_updates[True]._graphs) == 1
    assert metrics["critic_loss"].item() < 0.2 * first
    assert not any(torch.equal(a, b) for a, b in zip(actor, agents.actor.parameters()))
    assert not torch.equal(alpha, agents.log_alpha)
