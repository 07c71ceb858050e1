"""DSRL's two learners as stable-baselines3 algorithms (Wagenmaker et al., 2025).

``DSRLSAC`` is SB3's SAC over the noise space: run it on a ``NoiseActionVecEnv``. The only
change is the warm-up: instead of uniform actions it samples the base policy's own noise,
N(0, I) clipped to [-b_w, b_w], so the first data is the base policy's behaviour.

``DSRLNA`` (noise-aliased) runs on a ``ChunkedEnv`` and decodes inside the algorithm. Its
replay buffer holds decoded action chunks, and three networks learn from it (reference/dsrl.md
2.2):

1. Q^A(s, a) over action chunks, by TD: a' = decode(s', w'), w' ~ pi^W(s'), min of two target
   critics, SAC's entropy term;
2. Q^W(s, w) over noise, distilled from Q^A on w ~ N(0, I): each head regresses onto the same
   head of Q^A(s, decode(s, w)) — many noises decode to the same chunk, and Q^W learns that
   aliasing from the whole noise distribution, not only from the noise the actor picked;
3. the actor pi^W(s), SAC's objective against Q^W (it never queries Q^A).

SB3's ``critic`` is Q^W (on the actor's scaled noise w / b_w, so N(0, I) samples beyond the
bound are simply inputs beyond +-1) and ``action_critic`` is Q^A. Unlike the released code,
the actor's bound b_w is honoured (upstream NA silently uses 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.torch_layers import create_mlp
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import Actor, ContinuousCritic, SACPolicy
from torch import nn
from torch.nn import functional as F

from robolearn.algos.diffusion import DiffusionPolicy


def mlp(
    in_dim: int, out_dim: int, net_arch: list[int], activation: type[nn.Module], layer_norm: bool
) -> nn.Sequential:
    """SB3's MLP, with LayerNorm after every hidden linear layer when ``layer_norm``."""
    norm = [nn.LayerNorm] if layer_norm else None
    layers = create_mlp(in_dim, out_dim, net_arch, activation, post_linear_modules=norm)
    return nn.Sequential(*layers)


class DSRLActor(Actor):
    """SB3's SAC actor over noise, with optional LayerNorm and an optional noise prior.

    With ``noise_prior``, ``action_log_prob`` returns log pi(w|s) - log N(w; 0, I) instead of
    log pi(w|s): SAC's entropy term becomes a one-sample estimate of KL(pi(.|s) || N(0, I)),
    the distance to the noise the base policy was trained on. The penalty keeps the actor where
    Q^W was fitted and the decoded chunks are in distribution, and, being >= 0 on average, never
    pays the actor to make episodes longer the way an entropy bonus does under a -1 per step
    reward (with the entropy bonus, DSRL-NA's success on arm push collapsed; BENCHMARKS.md).
    Both learners use it through SAC's own losses, since those call ``action_log_prob``.
    """

    def __init__(
        self, *args: Any, layer_norm: bool = True, noise_prior: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.noise_prior = noise_prior
        if layer_norm:
            self.latent_pi = mlp(self.features_dim, -1, self.net_arch, self.activation_fn, True)

    def action_log_prob(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled, log_prob = super().action_log_prob(obs)
        if not self.noise_prior:
            return scaled, log_prob
        bound = torch.as_tensor(self.action_space.high, device=scaled.device)
        noise = scaled * bound
        log_density = log_prob - torch.log(bound).sum()  # of w, not of w / b_w
        log_base = -0.5 * noise.pow(2).sum(1) - 0.5 * noise.shape[1] * math.log(2 * math.pi)
        return scaled, log_density - log_base


class DSRLPolicy(SACPolicy):
    """SB3's SAC policy for noise actions: LayerNorm and the noise prior of :class:`DSRLActor`.

    The released DSRL puts LayerNorm after every linear layer of all its networks
    (reference/dsrl.md 4); it keeps the critics' TD regression stable at high update ratios.
    """

    def __init__(
        self, *args: Any, layer_norm: bool = True, noise_prior: bool = False, **kwargs: Any
    ) -> None:
        self.layer_norm = layer_norm
        self.noise_prior = noise_prior
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "layer_norm": self.layer_norm,
            "noise_prior": self.noise_prior,
        }

    def make_actor(self, features_extractor: Any = None) -> DSRLActor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        actor = DSRLActor(**kwargs, layer_norm=self.layer_norm, noise_prior=self.noise_prior)
        return actor.to(self.device)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        return self.layer_norm_critic(super().make_critic(features_extractor))

    def layer_norm_critic(self, critic: ContinuousCritic) -> ContinuousCritic:
        """``critic`` with its Q networks rebuilt with LayerNorm (if this policy uses it)."""
        if not self.layer_norm:
            return critic
        in_dim = critic.q_networks[0][0].in_features
        for i in range(critic.n_critics):
            q_net = mlp(in_dim, 1, self.critic_kwargs["net_arch"], self.activation_fn, True)
            critic.add_module(f"qf{i}", q_net)
            critic.q_networks[i] = q_net
        return critic.to(self.device)


class _BaseNoiseWarmup:
    """Warm-up with the base policy's own noise, N(0, I) clipped to [-b_w, b_w]."""

    noise_bound: float
    seed: int | None

    def _warmup_noise(self, n_envs: int, dim: int) -> np.ndarray:
        if getattr(self, "_warmup_rng", None) is None:
            self._warmup_rng = np.random.default_rng(self.seed)
        noise = self._warmup_rng.standard_normal((n_envs, dim), dtype=np.float32)
        return np.clip(noise, -self.noise_bound, self.noise_bound)


class DSRLSAC(_BaseNoiseWarmup, SAC):
    """SB3 SAC whose action is a diffusion policy's initial noise (use a NoiseActionVecEnv)."""

    def _setup_model(self) -> None:
        super()._setup_model()
        self.noise_bound = float(self.action_space.high[0])

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        noise = self._warmup_noise(n_envs, self.action_space.shape[0])
        return noise, self.policy.scale_action(noise)


class DSRLNA(_BaseNoiseWarmup, SAC):
    """DSRL-NA: SAC in the noise space of a frozen diffusion policy, critics aliased.

    Args:
        policy: SB3 policy name or class (``"MlpPolicy"``).
        env: A (vector) env whose action is an action chunk, e.g. ``make_chunked_vec_env``.
        base: The frozen diffusion policy (never updated).
        noise_bound: b_w; the actor's noise lives in [-b_w, b_w]^(Tp x Da).
        distill_steps: Q^W distillation steps after each train call's gradient steps.
        **kwargs: SAC's arguments (learning rate, batch size, gradient_steps = utd, ...).
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        base: DiffusionPolicy | None = None,
        noise_bound: float = 1.0,
        distill_steps: int = 10,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if noise_bound <= 0:
            raise ValueError(f"noise_bound must be > 0, got {noise_bound}")
        self.base = base
        self.noise_bound = float(noise_bound)
        self.distill_steps = int(distill_steps)
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if self.base is None:
            raise ValueError("DSRLNA needs base=<the frozen DiffusionPolicy>")
        # Derived from the base, not from self.action_space: SB3's load restores that as the
        # noise space before calling this again.
        chunk_dim = self.base.action_steps * self.base.action_dim
        self.chunk_space = spaces.Box(-1.0, 1.0, (chunk_dim,), np.float32)
        if self.env is not None and self.env.action_space.shape != (chunk_dim,):
            raise ValueError(
                f"DSRLNA steps an env whose action is one action chunk of {chunk_dim} values "
                f"(Ta x Da = {self.base.action_steps} x {self.base.action_dim}); this env's "
                f"action space is {self.env.action_space} (use make_chunked_vec_env)"
            )
        noise_dim = int(np.prod(self.base.noise_shape))
        if self.replay_buffer is None:  # a loaded model keeps the buffer it may have been given
            self.replay_buffer = ReplayBuffer(
                self.buffer_size,
                self.observation_space,
                self.chunk_space,
                device=self.device,
                n_envs=self.n_envs,
                **self.replay_buffer_kwargs,
            )
        # The actor and Q^W act in noise space; SAC builds them from self.action_space.
        self.action_space = spaces.Box(
            -self.noise_bound, self.noise_bound, (noise_dim,), np.float32
        )
        super()._setup_model()
        critic_kwargs = {**self.policy.critic_kwargs, "action_space": self.chunk_space}
        extractor = self.policy.make_features_extractor()
        critic_kwargs.update(features_extractor=extractor, features_dim=extractor.features_dim)
        self.action_critic = self._make_action_critic(critic_kwargs)
        self.action_critic_target = self._make_action_critic(critic_kwargs)
        self.action_critic_target.load_state_dict(self.action_critic.state_dict())
        self.action_critic_target.set_training_mode(False)
        self.action_critic.optimizer = self.policy.optimizer_class(
            self.action_critic.parameters(),
            lr=self.lr_schedule(1),
            **self.policy.optimizer_kwargs,
        )

    def _make_action_critic(self, kwargs: dict[str, Any]) -> ContinuousCritic:
        critic = ContinuousCritic(**kwargs).to(self.device)
        if isinstance(self.policy, DSRLPolicy):
            critic = self.policy.layer_norm_critic(critic)
        return critic

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """Attach a (new) chunk-level env; SB3 would compare it with the noise space."""
        noise_space = self.action_space
        self.action_space = self.chunk_space
        try:
            super().set_env(env, force_reset)
        finally:
            self.action_space = noise_space

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Flattened action chunks (B, Ta * Da) for observations and unscaled noise."""
        chunk = self.base.decode(obs, noise.reshape(-1, *self.base.noise_shape))
        return chunk.reshape(len(chunk), -1).to(self.device)

    def _decode_numpy(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        noise_t = torch.as_tensor(np.asarray(noise, dtype=np.float32), device=self.device)
        return self.decode(obs_t, noise_t).cpu().numpy()

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:
            noise = self._warmup_noise(n_envs, self.action_space.shape[0])
        else:
            noise, _ = self.policy.predict(self._last_obs, deterministic=False)
        chunk = self._decode_numpy(self._last_obs, noise)
        return chunk, chunk  # the chunk space is [-1, 1]: scaled and unscaled coincide

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The decoded action chunk for ``observation`` (the actor's noise, then DDIM)."""
        noise, state = self.policy.predict(observation, state, episode_start, deterministic)
        obs = np.asarray(observation, dtype=np.float32).reshape(-1, self.observation_space.shape[0])
        chunk = self._decode_numpy(obs, np.asarray(noise).reshape(len(obs), -1))
        return chunk.reshape(np.shape(noise)[:-1] + chunk.shape[-1:]), state

    # --- training ---------------------------------------------------------------------------

    def _noise(self, scaled: torch.Tensor) -> torch.Tensor:
        """Actor outputs in [-1, 1] -> noise in [-b_w, b_w]."""
        return scaled * self.noise_bound

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        self.action_critic.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer, self.action_critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        logs: dict[str, list[float]] = {
            "ent_coef": [],
            "actor_loss": [],
            "action_critic_loss": [],
            "noise_critic_loss": [],
        }
        for _ in range(gradient_steps):
            self._gradient_step(batch_size, logs)
        for _ in range(self.distill_steps):
            self._distill_step(batch_size, logs)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for name, values in logs.items():
            if values:
                self.logger.record(f"train/{name}", float(np.mean(values)))

    def _gradient_step(self, batch_size: int, logs: dict[str, list[float]]) -> None:
        """One TD step of Q^A, then one step of the actor (and of SAC's temperature)."""
        data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
        ent_coef = (
            torch.exp(self.log_ent_coef.detach())
            if self.ent_coef_optimizer is not None
            else self.ent_coef_tensor
        )
        # 1. Q^A by TD on decoded chunks.
        with torch.no_grad():
            next_scaled, next_log_prob = self.actor.action_log_prob(data.next_observations)
            next_chunk = self.decode(data.next_observations, self._noise(next_scaled))
            next_q = torch.cat(self.action_critic_target(data.next_observations, next_chunk), 1)
            next_q = next_q.min(dim=1, keepdim=True).values
            next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
            target_q = data.rewards + (1 - data.dones) * self.gamma * next_q
        current_q = self.action_critic(data.observations, data.actions)
        critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)
        self.action_critic.optimizer.zero_grad()
        critic_loss.backward()
        self.action_critic.optimizer.step()
        logs["action_critic_loss"].append(critic_loss.item())
        polyak_update(
            self.action_critic.parameters(), self.action_critic_target.parameters(), self.tau
        )

        # 3. The actor against Q^W, and SAC's temperature.
        actions_pi, log_prob = self.actor.action_log_prob(data.observations)
        log_prob = log_prob.reshape(-1, 1)
        q_pi = torch.cat(self.critic(data.observations, actions_pi), 1).min(1, keepdim=True)
        actor_loss = (ent_coef * log_prob - q_pi.values).mean()
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        logs["actor_loss"].append(actor_loss.item())
        if self.ent_coef_optimizer is not None:
            ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach())
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.mean().backward()
            self.ent_coef_optimizer.step()
        logs["ent_coef"].append(ent_coef.item())

    def _distill_step(self, batch_size: int, logs: dict[str, list[float]]) -> None:
        """2. Q^W regressed onto Q^A on the base policy's own noise distribution."""
        obs = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env).observations
        noise = torch.randn(len(obs), self.action_space.shape[0], device=self.device)
        with torch.no_grad():
            targets = self.action_critic(obs, self.decode(obs, noise))
        predictions = self.critic(obs, noise / self.noise_bound)
        loss = 0.5 * sum(F.mse_loss(p, t) for p, t in zip(predictions, targets))
        self.critic.optimizer.zero_grad()
        loss.backward()
        self.critic.optimizer.step()
        logs["noise_critic_loss"].append(loss.item())

    # --- saving -----------------------------------------------------------------------------

    def _excluded_save_params(self) -> list[str]:
        # The base policy is saved as its own checkpoint; pass base= to DSRLNA.load.
        return [*super()._excluded_save_params(), "base", "action_critic", "action_critic_target"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [
            *state_dicts,
            "action_critic",
            "action_critic_target",
            "action_critic.optimizer",
        ], variables
