"""The steered policy: a frozen diffusion policy plus the noise actor that DSRL trained.

It is an ordinary robolearn Policy, so it deploys, evaluates and records like any other. Its
checkpoint directory holds the base policy's checkpoint under ``base/`` and the actor's weights
next to ``policy.json``; ``load_policy`` restores both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
from torch import nn

from robolearn.algos.diffusion import DiffusionPolicy, ObservationHistory
from robolearn.algos.dsrl.algorithms import mlp
from robolearn.policy import WEIGHTS_FILE, Observation, Policy, read_policy_file

BASE_DIR = "base"


class NoiseActor(nn.Module):
    """An SB3 SAC actor without SB3: tanh(mu(latent_pi(s))), or a sample around it.

    ``forward`` is the deterministic path in [-1, 1]; ``sample`` draws from the actor's
    squashed Gaussian, tanh(mu + exp(log_std) * eps), as DSRL's training rollouts do.
    """

    def __init__(
        self,
        obs_dim: int,
        noise_dim: int,
        net_arch: Sequence[int],
        activation: str,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.latent_pi = mlp(obs_dim, -1, list(net_arch), getattr(nn, activation), layer_norm)
        last = net_arch[-1] if net_arch else obs_dim
        self.mu = nn.Linear(last, noise_dim)
        self.log_std = nn.Linear(last, noise_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mu(self.latent_pi(obs)))

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from the actor's distribution, in [-1, 1]."""
        latent = self.latent_pi(obs)
        # SB3's Actor clamps log_std to the same range.
        std = self.log_std(latent).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        eps = torch.randn(std.shape, generator=generator, device=std.device)
        return torch.tanh(self.mu(latent) + std * eps)

    @classmethod
    def from_sb3(cls, actor: nn.Module) -> tuple[NoiseActor, dict[str, Any]]:
        """A copy of an SB3 ``Actor``, plus the config that rebuilds it."""
        config = {
            "obs_dim": int(actor.features_dim),
            "noise_dim": int(actor.mu.out_features),
            "net_arch": [int(w) for w in actor.net_arch],
            "activation": actor.activation_fn.__name__,
            "layer_norm": any(isinstance(m, nn.LayerNorm) for m in actor.latent_pi),
        }
        module = cls(**config)
        state = {
            k: v.detach().cpu()
            for k, v in actor.state_dict().items()
            if k.startswith(("latent_pi.", "mu.", "log_std."))
        }
        module.load_state_dict(state)
        return module, config


class SteeredPolicy(Policy):
    """A diffusion policy whose initial noise comes from a learned actor, w = b_w * actor(s).

    ``act`` re-plans every Ta steps like the base; ``act_chunk(obs, noise=None)`` plans now,
    from the actor's noise unless ``noise`` is given (then it is the base policy's chunk).
    With ``stochastic`` the noise is drawn from the actor's distribution (from a generator
    seeded by ``seed``) instead of taken at its mean. A deterministic policy repeats itself in a
    state it does not leave; a base that escapes such states by its own noise can keep doing so.
    """

    policy_type = "dsrl_steered"

    def __init__(
        self,
        base: DiffusionPolicy,
        actor: NoiseActor,
        actor_config: dict[str, Any],
        noise_bound: float,
        stochastic: bool = False,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.stochastic = bool(stochastic)
        self._generator = torch.Generator(device=base.device).manual_seed(seed)
        self.actor = actor.to(base.device).eval()
        self.actor_config = dict(actor_config)
        self.noise_bound = float(noise_bound)
        self._history = ObservationHistory(base.obs_keys, base.obs_steps)
        self._queue: deque[np.ndarray] = deque()

    @torch.no_grad()
    def noise(self, cond: torch.Tensor) -> torch.Tensor:
        """The actor's initial noise (B, Tp, Da) for conditionings (B, C)."""
        cond = cond.to(self.base.device).float()
        scaled = self.actor.sample(cond, self._generator) if self.stochastic else self.actor(cond)
        return (scaled * self.noise_bound).reshape(len(cond), *self.base.noise_shape)

    def reset(self, batch_size: int = 1) -> None:
        self._history.reset()
        self._queue.clear()
        self.base.reset(batch_size)

    def act_chunk(self, obs: Observation, noise: np.ndarray | None = None) -> np.ndarray:
        """Plan Ta actions (B, Ta, Da) now: the actor's noise, or ``noise`` when given."""
        history = {
            k: torch.as_tensor(v, device=self.base.device)
            for k, v in self._history.push(obs).items()
        }
        self._queue.clear()
        cond = self.base.condition(history)
        w = self.noise(cond) if noise is None else torch.as_tensor(np.asarray(noise))
        return self.base.decode(cond, w).cpu().numpy().astype(np.float32)

    def act(self, obs: Observation) -> np.ndarray:
        if self._queue:
            self._history.push(obs)  # keep the history current between re-plans
            return self._queue.popleft()
        chunk = self.act_chunk(obs)
        self._queue.extend(chunk.transpose(1, 0, 2))
        return self._queue.popleft()

    def config(self) -> dict[str, Any]:
        return {
            "noise_bound": self.noise_bound,
            "stochastic": self.stochastic,
            "actor": self.actor_config,
        }

    def save(self, path: str | Path) -> Path:
        path = super().save(path)
        self.base.save(path / BASE_DIR)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.actor.state_dict().items()},
            str(path / WEIGHTS_FILE),
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SteeredPolicy:
        path = Path(path)
        config = read_policy_file(path)["config"]
        base = DiffusionPolicy.load(path / BASE_DIR, device=device)
        actor = NoiseActor(**config["actor"])
        actor.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return cls(
            base, actor, config["actor"], config["noise_bound"], config.get("stochastic", False)
        )
