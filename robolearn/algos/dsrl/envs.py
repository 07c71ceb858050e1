"""The latent-action MDP of DSRL, as environments that stable-baselines3 can drive.

``ChunkedEnv`` turns a robolearn env into a chunk-level MDP around a frozen diffusion policy:
its observation is the policy's conditioning (the normalised observation history, flattened),
its action is one action chunk (Ta x Da, flattened, in [-1, 1]) executed open loop, its reward
the chunk's summed reward. ``NoiseActionVecEnv`` puts the base policy inside the env: the
action is the initial noise w in [-b_w, b_w]^(Tp x Da), decoded by DDIM into the chunk. That
wrapper is all DSRL-SAC needs; DSRL-NA decodes inside the algorithm and steps ``ChunkedEnv``.

Deliberate departures from the upstream code (reference/dsrl.md 2.4 and 6): a time limit is
reported as truncation, not termination, so the critic keeps bootstrapping through time-outs;
every step reports ``info["env_steps"]``, the env steps it really executed (a chunk stops early
when the episode ends), so budgets are counted in env steps, not chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from robolearn.algos.diffusion import DiffusionPolicy, ObservationHistory
from robolearn.policy import as_dict

REWARDS = ("sparse", "env")


class ChunkedEnv(gym.Env):
    """One step = one action chunk of a frozen diffusion policy's size, executed open loop.

    Args:
        env: The robolearn env (with its time limit), observations as the base policy expects.
        base: The frozen diffusion policy; its conditioning is this env's observation.
        reward: ``"env"`` sums the env's own reward; ``"sparse"`` gives -1 per env step until
            success and 0 on success (the robomimic convention DSRL uses), for envs that only
            report success.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: gym.Env, base: DiffusionPolicy, reward: str = "env") -> None:
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.env = env
        self.base = base
        self.reward_mode = reward
        self.chunk_shape = (base.action_steps, base.action_dim)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (base.cond_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (int(np.prod(self.chunk_shape)),), np.float32)
        self._history = ObservationHistory(base.obs_keys, base.obs_steps)

    def _condition(self, obs: Any) -> np.ndarray:
        batched = {k: np.asarray(v)[None] for k, v in as_dict(obs).items()}
        history = {k: torch.as_tensor(v) for k, v in self._history.push(batched).items()}
        return self.base.condition(history)[0].cpu().numpy().astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.reset()
        return self._condition(obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        chunk = np.asarray(action, dtype=np.float32).reshape(self.chunk_shape)
        total = 0.0
        terminated = truncated = success = False
        info: dict[str, Any] = {}
        steps = 0
        for act in chunk:
            obs, reward, terminated, truncated, info = self.env.step(act)
            steps += 1
            success = success or bool(info.get("success", False))
            total += (float(success) - 1.0) if self.reward_mode == "sparse" else float(reward)
            if terminated or truncated:
                break
        info = {**info, "success": success, "env_steps": steps}
        return self._condition(obs), total, bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()


class NoiseActionVecEnv(VecEnvWrapper):
    """DSRL-SAC's env: actions are initial noise in [-b_w, b_w], decoded into action chunks.

    Decoding is batched over the vector env (one base-policy call per step of all envs).
    """

    def __init__(self, venv: VecEnv, base: DiffusionPolicy, noise_bound: float) -> None:
        if noise_bound <= 0:
            raise ValueError(f"noise_bound must be > 0, got {noise_bound}")
        self.base = base
        self.noise_bound = float(noise_bound)
        noise_dim = int(np.prod(base.noise_shape))
        space = gym.spaces.Box(-noise_bound, noise_bound, (noise_dim,), np.float32)
        super().__init__(venv, action_space=space)
        self._obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        assert self._obs is not None, "reset() first"
        self.venv.step_async(decode(self.base, self._obs, actions))

    def step_wait(self) -> Any:
        obs, reward, done, infos = self.venv.step_wait()
        self._obs = obs  # after autoreset this is already the next episode's first observation
        return obs, reward, done, infos


def decode(base: DiffusionPolicy, cond: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Flattened action chunks (B, Ta * Da) for conditionings (B, C) and noise (B, Tp * Da)."""
    noise_t = torch.as_tensor(np.asarray(noise, dtype=np.float32)).reshape(-1, *base.noise_shape)
    chunk = base.decode(torch.as_tensor(np.asarray(cond, dtype=np.float32)), noise_t)
    return chunk.reshape(len(chunk), -1).cpu().numpy()


def make_chunked_vec_env(
    make_env: Callable[[], gym.Env],
    base: DiffusionPolicy,
    n_envs: int,
    reward: str = "env",
    seed: int = 0,
) -> VecEnv:
    """``n_envs`` ChunkedEnvs in one process (SB3 DummyVecEnv), seeded ``seed, seed+1, ...``."""
    venv = DummyVecEnv([lambda: ChunkedEnv(make_env(), base, reward) for _ in range(n_envs)])
    venv.seed(seed)
    return venv
