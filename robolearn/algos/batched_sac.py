"""Batched SAC: N independent soft actor-critic agents, one per env of a batch, trained at once.

RAPTOR trains one RL teacher per sampled quadrotor. Running N separate trainers wastes the
machine on Python overhead; here agent ``i`` owns env ``i``, its own replay buffer, actor, twin
critics and temperature, and all N are updated by the same batched matmuls
(``robolearn.nets.batched``). Agents share nothing: losses are summed over agents, so each
agent's gradients are exactly those of its own loss, and Adam is element-wise, so the shared
optimiser equals N independent ones.

The env is any ``BatchedTorchEnv``: torch tensors in and out, one row per agent, no autoreset.
The training loop (logging, checkpoints, resume, reward curriculum) is
``robolearn.algos.raptor.teachers.train_teachers``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from robolearn.cuda_graph import GraphedFunction
from robolearn.nets.batched import BatchedMLP

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class BatchedTorchEnv(Protocol):
    """N envs stepped together on torch tensors (row ``i`` is env ``i``); no autoreset."""

    num_envs: int
    obs_dim: int
    act_dim: int

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reset the envs where ``mask`` is true (all if None); return every env's observation."""
        ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply (N, act_dim) actions in [-1, 1]; return obs, reward, terminated, truncated."""
        ...


@dataclasses.dataclass
class BatchedSACConfig:
    """SAC hyperparameters; defaults follow RAPTOR's teacher configuration (reference §7)."""

    actor_hidden: Sequence[int] = (64, 64, 64)
    critic_hidden: Sequence[int] = (256, 256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 128
    buffer_size: int = 1_000_000
    warmup_steps: int = 10_000
    update_every: int = 1  # env steps per gradient step (Learning to Fly: critic every 10)
    actor_every: int = 2  # gradient steps per actor (and alpha) step
    target_entropy: float | None = None  # None: -act_dim
    initial_alpha: float = 1.0


class BatchedReplay:
    """One ring buffer per agent, stored as (N, capacity, dim) tensors."""

    def __init__(self, n: int, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = torch.zeros(n, capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(n, capacity, obs_dim, device=device)
        self.action = torch.zeros(n, capacity, act_dim, device=device)
        self.reward = torch.zeros(n, capacity, 1, device=device)
        self.terminated = torch.zeros(n, capacity, 1, device=device)

    def add(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> None:
        """Append one transition per agent, ``obs`` (N, dim) and ``reward`` (N,), or K per agent,
        ``obs`` (N, K, dim) and ``reward`` (N, K) (one agent acting for K envs at once)."""
        if reward.dim() == 1:
            obs, action, next_obs = obs[:, None], action[:, None], next_obs[:, None]
            reward, terminated = reward[:, None], terminated[:, None]
        k = reward.shape[1]
        if self.pos + k <= self.capacity:  # the usual case: a slice, no index tensor per step
            i: slice | torch.Tensor = slice(self.pos, self.pos + k)
        else:
            i = (self.pos + torch.arange(k, device=self.obs.device)) % self.capacity
        self.obs[:, i] = obs
        self.action[:, i] = action
        self.reward[:, i, 0] = reward
        self.next_obs[:, i] = next_obs
        self.terminated[:, i, 0] = terminated.float()
        self.pos = (self.pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """``batch_size`` transitions per agent, drawn independently for each agent."""
        n = self.obs.shape[0]
        index = torch.randint(
            self.size, (n, batch_size), device=self.obs.device, generator=generator
        )
        rows = torch.arange(n, device=self.obs.device)[:, None]
        return {
            "obs": self.obs[rows, index],
            "action": self.action[rows, index],
            "reward": self.reward[rows, index],
            "next_obs": self.next_obs[rows, index],
            "terminated": self.terminated[rows, index],
        }


class BatchedSAC(nn.Module):
    """N SAC agents: tanh-squashed Gaussian actors, twin critics with targets, learned alpha."""

    def __init__(
        self,
        n: int,
        obs_dim: int,
        act_dim: int,
        cfg: BatchedSACConfig,
        initial_action: torch.Tensor | None = None,
        obs_scale: torch.Tensor | None = None,
    ) -> None:
        """Args:
        n: Number of agents.
        obs_dim, act_dim: Observation and action sizes.
        cfg: Hyperparameters.
        initial_action: Optional ``(n, act_dim)`` actions in (-1, 1) that each agent's mean
            action starts at (e.g. each quadrotor's hover command); see :meth:`bias_actor`.
        obs_scale: Optional ``(n, obs_dim)`` typical magnitudes of each agent's observation;
            actors and critics see ``obs / obs_scale`` so that inputs of very different
            units (a 5 kg vehicle's metres next to a 20 g one's) reach the first layer at
            similar sizes. :meth:`folded_actor_state` bakes it into the first layer.
        """
        super().__init__()
        self.n, self.act_dim, self.cfg = n, act_dim, cfg
        self.actor = BatchedMLP(n, obs_dim, cfg.actor_hidden, 2 * act_dim)
        if initial_action is not None:
            self.bias_actor(initial_action)
        scale = torch.ones(n, obs_dim) if obs_scale is None else obs_scale.float().cpu()
        self.register_buffer("obs_scale", scale[:, None, :].clone())
        # Both critics of every agent in one network of 2n rows: rows [0, n) are the agents'
        # first critics, rows [n, 2n) their second ones; one batched matmul per layer serves both.
        self.critics = BatchedMLP(2 * n, obs_dim + act_dim, cfg.critic_hidden, 1)
        self.critics_target = BatchedMLP(2 * n, obs_dim + act_dim, cfg.critic_hidden, 1)
        self.critics_target.load_state_dict(self.critics.state_dict())
        self.critics_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((n, 1, 1), float(cfg.initial_alpha)).log())
        self.target_entropy = (
            cfg.target_entropy if cfg.target_entropy is not None else -float(act_dim)
        )
        # The fused kernel updates every tensor in one call instead of a Python loop over
        # them: ~20% less time per SAC update at these sizes on a CPU.
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)
        self._graphed_updates: dict[bool, GraphedFunction] = {}

    @torch.no_grad()
    def bias_actor(self, action: torch.Tensor, weight_scale: float = 0.1) -> None:
        """Start every actor's mean at ``action`` (n, act_dim), whatever the observation.

        The output layer's mean weights are scaled by ``weight_scale`` and its mean bias set to
        ``atanh(action)``: an untrained actor then commands about its own vehicle's hover thrust
        instead of a random one, so early episodes last long enough to learn from.
        """
        last = self.actor[-1]
        a = self.act_dim
        last.weight[:, :, :a] *= weight_scale
        target = action.to(last.bias).clamp(-0.99, 0.99).atanh()
        last.bias[:, 0, :a] = target

    def sample_action(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability: (N, B, act), (N, B, 1)."""
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        pre_tanh = mean + std * torch.randn_like(mean)
        action = torch.tanh(pre_tanh)
        # Unvalidated: validating the arguments synchronises with the host, which a CUDA graph
        # (robolearn.cuda_graph) cannot hold.
        log_prob = torch.distributions.Normal(mean, std, validate_args=False).log_prob(pre_tanh)
        # Change of variables through tanh (the numerically stable form of log(1 - tanh(u)^2)).
        log_prob = log_prob - 2.0 * (
            math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh)
        )
        return action, log_prob.sum(-1, keepdim=True)

    def folded_actor_state(self) -> dict[str, torch.Tensor]:
        """The actor's weights with the observation scale folded into the first layer: an
        actor loaded from them maps raw observations to the same outputs."""
        state = {k: v.detach().clone() for k, v in self.actor.state_dict().items()}
        state["0.weight"] = state["0.weight"] / self.obs_scale.transpose(1, 2)
        return state

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """One action per agent for (N, obs_dim) raw observations: (N, act_dim)."""
        obs = obs / self.obs_scale[:, 0]
        if deterministic:
            mean, _ = self.actor(obs[:, None]).chunk(2, dim=-1)
            return torch.tanh(mean)[:, 0]
        return self.sample_action(obs[:, None])[0][:, 0]

    def twin_q(self, critics: BatchedMLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both critics' values ``(N, B, 1)`` of every agent for inputs ``x`` (N, B, obs + act)."""
        q = critics(x.repeat(2, 1, 1))
        return q[: self.n], q[self.n :]

    def update(self, batch: dict[str, torch.Tensor], update_actor: bool) -> dict[str, torch.Tensor]:
        """One gradient step of every agent's critics (and actor and alpha if ``update_actor``).

        Returns the critic loss (and actor loss and temperature), means over agents, as 0-d
        tensors: a caller that logs them now and then does not wait for the device every step.
        On a GPU the step replays as a CUDA graph (``robolearn.cuda_graph``).
        """
        if update_actor not in self._graphed_updates:
            if self.log_alpha.is_cuda:
                # Adam keeps its step count on the device, where a replayed graph advances it.
                for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
                    for group in opt.param_groups:
                        group["capturable"] = True
            self._graphed_updates[update_actor] = GraphedFunction(
                functools.partial(self._update, update_actor=update_actor)
            )
        keys = ("obs", "action", "reward", "next_obs", "terminated")
        return self._graphed_updates[update_actor](*(batch[k] for k in keys))

    def _update(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        update_actor: bool,
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, next_obs = obs / self.obs_scale, next_obs / self.obs_scale
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self.sample_action(next_obs)
            next_q = torch.min(
                *self.twin_q(self.critics_target, torch.cat([next_obs, next_action], -1))
            )
            # Bootstrap unless the episode really terminated (a time limit is not a terminal).
            target = reward + cfg.gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)
        q1, q2 = self.twin_q(self.critics, torch.cat([obs, action], -1))
        # Mean over each agent's batch, sum over agents: every agent gets its own loss's gradient.
        critic_loss = ((q1 - target) ** 2 + (q2 - target) ** 2).mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach() / self.n}

        if update_actor:
            new_action, log_prob = self.sample_action(obs)
            # The actor's gradient flows through the critics' inputs only: frozen, they skip
            # computing weight gradients that no optimizer step would use.
            self.critics.requires_grad_(False)
            try:
                q = torch.min(*self.twin_q(self.critics, torch.cat([obs, new_action], -1)))
            finally:
                self.critics.requires_grad_(True)
            actor_loss = (alpha * log_prob - q).mean(1).sum()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            alpha_loss = (-self.log_alpha * (log_prob.detach() + self.target_entropy)).mean(1).sum()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            metrics |= {
                "actor_loss": actor_loss.detach() / self.n,
                "alpha": self.log_alpha.detach().exp().mean(),
            }

        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.critics_target.parameters()), list(self.critics.parameters()), cfg.tau
            )
        return metrics


def merge_twin_critics(
    agents_state: dict[str, torch.Tensor], critic_opt_state: dict
) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint from before the twin critics shared one network, in today's layout.

    Such checkpoints hold ``q1``, ``q2``, ``q1_target`` and ``q2_target`` networks and a critic
    optimizer over q1's then q2's parameters; each layer becomes the concatenation of the two
    along the agent dimension, as do Adam's moments. Other checkpoints are returned unchanged.
    """
    if not any(name.startswith("q1.") for name in agents_state):
        return agents_state, critic_opt_state
    merged = {k: v for k, v in agents_state.items() if not k.startswith(("q1", "q2"))}
    for old, new in (("q1.", "critics."), ("q1_target.", "critics_target.")):
        for name, tensor in agents_state.items():
            if name.startswith(old):
                twin = agents_state[old.replace("q1", "q2") + name[len(old) :]]
                merged[new + name[len(old) :]] = torch.cat([tensor, twin])
    layers = len(critic_opt_state["param_groups"][0]["params"]) // 2
    state = {}
    for j in range(layers):
        first, second = critic_opt_state["state"].get(j), critic_opt_state["state"].get(j + layers)
        if first is not None:
            state[j] = {
                k: v if k == "step" else torch.cat([v, second[k]]) for k, v in first.items()
            }
    groups = [g | {"params": list(range(layers))} for g in critic_opt_state["param_groups"]]
    return merged, {"state": state, "param_groups": groups}


def update_due(cfg: BatchedSACConfig, step: int, replay_size: int) -> bool:
    """Whether env step ``step`` is followed by a gradient step."""
    warm = step >= cfg.warmup_steps and replay_size >= cfg.batch_size
    return warm and step % cfg.update_every == 0


def actor_due(cfg: BatchedSACConfig, step: int) -> bool:
    """Whether that gradient step also updates the actor and the temperature."""
    return (step // cfg.update_every) % cfg.actor_every == 0
