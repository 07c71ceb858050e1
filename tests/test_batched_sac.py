"""Batched SAC: agents are independent, and a short run learns a toy control task."""

from __future__ import annotations

from copy import deepcopy

import torch

from robolearn.algos.batched_sac import BatchedSAC, BatchedSACConfig, merge_twin_critics
from robolearn.algos.raptor.teachers import TeacherConfig, Teachers, train_teachers
from robolearn.nets.batched import BatchedLinear


class PointMasses:
    """N 1-D points with different actuator gains; reward -|x|, 30-step episodes."""

    obs_dim, act_dim, horizon = 1, 1, 30

    def __init__(self, n: int, seed: int = 0) -> None:
        self.num_envs = n
        self.gen = torch.Generator().manual_seed(seed)
        self.gain = torch.linspace(0.5, 1.5, n)
        self.x = torch.zeros(n)
        self.t = torch.zeros(n, dtype=torch.long)

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else mask
        fresh = torch.rand(self.num_envs, generator=self.gen) * 2 - 1
        self.x = torch.where(mask, fresh, self.x)
        self.t = torch.where(mask, 0, self.t)
        return self.x[:, None].clone()

    def step(self, action: torch.Tensor):
        self.x = (self.x + 0.2 * self.gain * action[:, 0]).clamp(-2, 2)
        self.t += 1
        reward = -self.x.abs()
        return (
            self.x[:, None].clone(),
            reward,
            torch.zeros_like(self.t, dtype=torch.bool),
            self.t >= self.horizon,
        )


def evaluate(teachers: Teachers | None, n: int, episodes: int = 8) -> torch.Tensor:
    """Mean return per agent over ``episodes`` fixed starts; None = do nothing."""
    env, total = PointMasses(n, seed=123), torch.zeros(n)
    for _ in range(episodes):
        obs = env.reset()
        for _ in range(env.horizon):
            action = teachers.act(obs) if teachers else torch.zeros(n, 1)
            obs, reward, _, _ = env.step(action)
            total += reward
    return total / episodes


def test_batched_linear_layers_are_independent():
    layer = BatchedLinear(3, 4, 2)
    x = torch.randn(3, 5, 4, requires_grad=True)
    layer(x)[1].sum().backward()  # only agent 1's output
    assert layer.weight.grad[1].abs().sum() > 0
    assert layer.weight.grad[0].abs().sum() == 0 and layer.weight.grad[2].abs().sum() == 0
    torch.testing.assert_close(layer(x)[2], x[2] @ layer.weight[2] + layer.bias[2])


def test_short_run_learns_every_agent():
    torch.manual_seed(0)
    cfg = BatchedSACConfig(
        actor_hidden=(32, 32),
        critic_hidden=(64, 64),
        batch_size=64,
        warmup_steps=300,
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha_lr=1e-3,
    )
    n = 4
    # The one batched-SAC training loop, without the quadrotor extras (hover start, curriculum).
    teacher_cfg = TeacherConfig(
        sac=cfg, steps=2400, episode_steps=PointMasses.horizon, hover_init=False, curriculum_steps=0
    )
    agents = train_teachers(None, teacher_cfg, lambda _p, _s, _d: PointMasses(n), progress=False)
    train_returns = torch.tensor(agents.train_returns)
    trained, still = evaluate(agents, n), evaluate(None, n)
    assert train_returns.shape == (n,) and torch.isfinite(train_returns).all()
    assert (trained > still + 3.0).all(), (trained, still)
    assert (trained > -4.0).all(), trained  # drives |x| to near 0 within a few steps


def test_observation_scale_and_hover_bias_survive_export():
    """Scaled inputs fold into the first layer; a biased actor starts at its initial action."""
    torch.manual_seed(0)
    n, obs_dim = 3, 5
    cfg = BatchedSACConfig(actor_hidden=(8,), critic_hidden=(8,))
    start = torch.tensor([[-0.5], [0.0], [0.7]])
    scale = torch.rand(n, obs_dim) * 10 + 0.1
    agents = BatchedSAC(n, obs_dim, 1, cfg, initial_action=start, obs_scale=scale)
    obs = torch.randn(n, obs_dim) * scale
    torch.testing.assert_close(agents.act(obs, deterministic=True), start, atol=0.1, rtol=0)
    raw = BatchedSAC(n, obs_dim, 1, cfg)
    raw.actor.load_state_dict(agents.folded_actor_state())
    torch.testing.assert_close(
        raw.act(obs, deterministic=True), agents.act(obs, deterministic=True)
    )


def test_an_update_of_one_agent_ignores_the_other_agents_data():
    """Agent 0's actor and both its critics (rows 0 and n of the twin network) come out of an
    update the same whatever agent 1's batch holds; agent 1's do not."""
    n, obs_dim, act_dim, batch_size = 2, 3, 2, 16
    cfg = BatchedSACConfig(actor_hidden=(8,), critic_hidden=(8,), batch_size=batch_size)
    torch.manual_seed(0)
    batch = {
        "obs": torch.randn(n, batch_size, obs_dim),
        "action": torch.rand(n, batch_size, act_dim) * 2 - 1,
        "reward": torch.randn(n, batch_size, 1),
        "next_obs": torch.randn(n, batch_size, obs_dim),
        "terminated": torch.zeros(n, batch_size, 1),
    }
    other = {k: v.clone() for k, v in batch.items()}
    other["reward"][1] += 5.0
    other["obs"][1] += 1.0
    agents = BatchedSAC(n, obs_dim, act_dim, cfg)
    copy = BatchedSAC(n, obs_dim, act_dim, cfg)
    copy.load_state_dict(agents.state_dict())
    for model, data in ((agents, batch), (copy, other)):
        torch.manual_seed(1)  # the same exploration noise in both runs
        for _ in range(3):
            model.update(data, update_actor=True)
    for name, mine, theirs in (("actor", [0], [1]), ("critics", [0, n], [1, n + 1])):
        pairs = list(zip(getattr(agents, name).parameters(), getattr(copy, name).parameters()))
        for p, q in pairs:
            torch.testing.assert_close(p[mine], q[mine], rtol=0, atol=0)
        assert any(not torch.equal(p[theirs], q[theirs]) for p, q in pairs), name
    torch.testing.assert_close(agents.log_alpha[0], copy.log_alpha[0], rtol=0, atol=0)
    # The critics, frozen for the actor's loss, are trainable again after the update.
    assert all(p.requires_grad for p in agents.critics.parameters())


def test_a_checkpoint_with_separate_critics_loads_into_the_twin_network():
    """Checkpoints from before the twin critics shared one network (q1, q2 and their targets,
    a critic optimizer over q1's then q2's parameters) resume into the same agents."""
    n, obs_dim, act_dim = 3, 4, 2
    cfg = BatchedSACConfig(actor_hidden=(8,), critic_hidden=(8, 8), batch_size=16)
    torch.manual_seed(0)
    batch = {
        "obs": torch.randn(n, 16, obs_dim),
        "action": torch.rand(n, 16, act_dim) * 2 - 1,
        "reward": torch.randn(n, 16, 1),
        "next_obs": torch.randn(n, 16, obs_dim),
        "terminated": torch.zeros(n, 16, 1),
    }
    agents = BatchedSAC(n, obs_dim, act_dim, cfg)
    agents.update(batch, update_actor=True)  # Adam moments exist
    # The old layout: each twin network is one half of the agent dimension.
    old = {k: v for k, v in agents.state_dict().items() if not k.startswith("critics")}
    for name, tensor in agents.state_dict().items():
        for net, old_name in (("critics_target.", "q{}_target."), ("critics.", "q{}.")):
            if name.startswith(net):
                for twin, half in enumerate((tensor[:n], tensor[n:]), start=1):
                    old[old_name.format(twin) + name[len(net) :]] = half
                break
    new_opt = agents.critic_opt.state_dict()
    layers = len(new_opt["param_groups"][0]["params"])
    old_opt = {
        "state": {
            j + twin * layers: {
                k: v if k == "step" else v[twin * n : (twin + 1) * n] for k, v in s.items()
            }
            for j, s in new_opt["state"].items()
            for twin in (0, 1)
        },
        "param_groups": [g | {"params": list(range(2 * layers))} for g in new_opt["param_groups"]],
    }

    # Deep copies, as a checkpoint read from disk: optimizers load state tensors by reference.
    weights, opt_state = merge_twin_critics(*deepcopy((old, old_opt)))
    restored = BatchedSAC(n, obs_dim, act_dim, cfg)
    restored.load_state_dict(weights)
    restored.critic_opt.load_state_dict(opt_state)
    restored.actor_opt.load_state_dict(deepcopy(agents.actor_opt.state_dict()))
    restored.alpha_opt.load_state_dict(deepcopy(agents.alpha_opt.state_dict()))
    for model in (agents, restored):
        torch.manual_seed(1)
        model.update(batch, update_actor=True)
    for p, q in zip(agents.state_dict().values(), restored.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert merge_twin_critics(weights, opt_state) == (weights, opt_state)  # today's: unchanged
