"""Run any policy on any environment, simulated or hardware, optionally recording an EpisodeStore.

``rollout`` drives a ``gymnasium.Env`` or a ``gymnasium.vector.VectorEnv`` in waves: every env
of the batch is reset together with its own seed, the policy is reset for the batch, and the wave
runs until each env has finished its episode (finished envs keep stepping on a throw-away reset
and their steps are ignored). Waves keep the Policy contract simple — ``reset(batch_size)`` once
per wave is correct for recurrent policies — and start every episode from a known seed, recorded
with it, so ``robolearn replay`` can rebuild its initial state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from robolearn.data.store import EpisodeStore
from robolearn.policy import Policy, as_dict
from robolearn.utils import progress_bar


@dataclasses.dataclass
class EpisodeResult:
    """Statistics of one finished episode."""

    seed: int
    episode_return: float
    length: int
    success: bool
    info: dict[str, str] = dataclasses.field(default_factory=dict)  # episode_info_keys


@dataclasses.dataclass
class RolloutResult:
    """Per-episode statistics of a rollout, plus rendered frames of the first episodes."""

    episodes: list[EpisodeResult]
    videos: list[np.ndarray]  # one (T, H, W, 3) uint8 array per rendered episode

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.episode_return for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes])) if self.episodes else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready aggregate and per-episode numbers."""
        return {
            "episodes": len(self.episodes),
            "success_rate": self.success_rate,
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
            "per_episode": [dataclasses.asdict(e) for e in self.episodes],
        }


def control_hz(env: gym.Env | gym.vector.VectorEnv) -> float:
    """The env's control rate: its robot spec's, else the render fps in its metadata, else 1."""
    unwrapped = (
        env.get_attr("unwrapped")[0] if isinstance(env, gym.vector.VectorEnv) else env.unwrapped
    )
    spec = getattr(unwrapped, "robot_spec", None)
    if spec is not None:
        return float(spec.control_hz)
    return float(env.metadata.get("render_fps") or 1.0)


class _Batch:
    """A single env or a vector env seen through one batched interface.

    ``info_keys`` are the info entries the caller wants per env; they come back as one dict
    per env (a missing entry is absent from that env's dict).
    """

    def __init__(self, env: gym.Env | gym.vector.VectorEnv, info_keys: Sequence[str]) -> None:
        self.env = env
        self.vector = isinstance(env, gym.vector.VectorEnv)
        self.size = env.num_envs if self.vector else 1
        self.info_keys = tuple(info_keys)

    def _split(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.vector:
            return [{k: info[k] for k in self.info_keys if k in info}]
        out: list[dict[str, Any]] = [{} for _ in range(self.size)]
        for key in self.info_keys:
            if key in info:
                mask = info.get(f"_{key}", np.ones(self.size, dtype=bool))
                for i in np.flatnonzero(mask):
                    out[i][key] = info[key][i]
        return out

    def reset(self, seeds: list[int]) -> tuple[Any, np.ndarray, list[dict[str, Any]]]:
        if self.vector:
            obs, info = self.env.reset(seed=seeds)
            return obs, _info_success(info, self.size), self._split(info)
        obs, info = self.env.reset(seed=seeds[0])
        return (
            _add_batch_dim(obs),
            np.array([bool(info.get("success", False))]),
            self._split(info),
        )

    def reset_done(self, done: np.ndarray, seed: int) -> None:
        """Reset finished vector sub-envs so they may keep stepping (their output is ignored)."""
        if self.vector and done.any():
            self.env.reset(seed=[seed] * self.size, options={"reset_mask": done.copy()})

    def step(
        self, action: np.ndarray
    ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self.vector:
            obs, reward, terminated, truncated, info = self.env.step(action)
            success = _info_success(info, self.size)
            return obs, reward, terminated, truncated, success, self._split(info)
        obs, reward, terminated, truncated, info = self.env.step(action[0])
        return (
            _add_batch_dim(obs),
            np.array([reward], dtype=np.float64),
            np.array([terminated]),
            np.array([truncated]),
            np.array([bool(info.get("success", False))]),
            self._split(info),
        )

    def render(self) -> list[np.ndarray]:
        frames = self.env.render()
        return list(frames) if self.vector else [frames]


def rollout(
    policy: Policy,
    env: gym.Env | gym.vector.VectorEnv,
    episodes: int,
    seed: int = 0,
    store: EpisodeStore | None = None,
    source: str = "sim",
    render_episodes: int = 0,
    progress: bool = True,
    desc: str = "rollout",
    info_keys: Sequence[str] = (),
    episode_info_keys: Sequence[str] = (),
) -> RolloutResult:
    """Run ``policy`` for ``episodes`` episodes with seeds ``seed, seed+1, ...``.

    Args:
        policy: Any robolearn Policy (batched numpy in and out).
        env: A gymnasium Env, or a VectorEnv created with autoreset disabled (see
            ``robolearn.envs.make_vector_env``).
        episodes: Number of episodes to run.
        seed: Seed of the first episode; episode ``i`` is reset with ``seed + i``.
        store: If given, every finished episode is appended to it (observations, actions,
            rewards, terminations, timestamps; seed, success, return and source as metadata),
            in seed order at the end of each wave.
        source: Recorded as each episode's ``source`` metadata (``"sim"``, ``"hw"``, ...).
        render_episodes: Render frames of the first this-many episodes (env needs
            ``render_mode="rgb_array"``); returned in ``RolloutResult.videos``.
        progress: Show a progress bar over episodes.
        desc: Progress bar label.
        info_keys: Numeric info entries recorded per step as data arrays of the same name,
            each beside the observation it came with (from ``reset`` or the previous
            ``step``), e.g. a hardware env's measurement stamps. Every step must provide them.
        episode_info_keys: String info entries of an episode's last step recorded as
            per-episode metadata (``""`` where absent), e.g. ``abort_reason``; also in
            :attr:`EpisodeResult.info`.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    batch = _Batch(env, (*info_keys, *episode_info_keys))
    single_space = env.single_action_space if batch.vector else env.action_space
    action_shape = (batch.size, *single_space.shape)
    dt = 1.0 / control_hz(env)
    results: list[EpisodeResult] = []
    videos: list[np.ndarray] = []
    bar = progress_bar(episodes, desc, progress, unit="ep")
    next_episode = 0
    while next_episode < episodes:
        n_active = min(batch.size, episodes - next_episode)
        seeds = [seed + next_episode + i for i in range(batch.size)]
        active = np.arange(batch.size) < n_active
        render_mask = np.array([next_episode + i < render_episodes for i in range(batch.size)])
        render_mask &= active
        obs, success, infos = batch.reset(seeds)
        policy.reset(batch.size)
        buffers = (
            [_EpisodeBuffer(info_keys) for _ in range(batch.size)] if store is not None else None
        )
        frames: list[list[np.ndarray]] = [[] for _ in range(batch.size)]
        if render_mask.any():
            _collect_frames(batch.render(), render_mask, frames)
        returns = np.zeros(batch.size)
        lengths = np.zeros(batch.size, dtype=np.int64)
        succeeded = success & active
        running = active.copy()
        finished: dict[int, EpisodeResult] = {}
        while running.any():
            action = np.asarray(policy.act(obs), dtype=np.float32)
            if action.shape != action_shape:
                raise ValueError(
                    f"{policy.policy_type} policy returned actions of shape {action.shape}; "
                    f"the env expects {action_shape}"
                )
            next_obs, reward, terminated, truncated, success, next_infos = batch.step(action)
            if buffers is not None:
                for i in np.flatnonzero(running):
                    buffers[i].add(
                        obs, i, action[i], reward[i], terminated[i], lengths[i] * dt, infos[i]
                    )
            returns[running] += reward[running]
            lengths[running] += 1
            succeeded |= success & running
            if (render_mask & running).any():
                _collect_frames(batch.render(), render_mask & running, frames)
            done = running & (terminated | truncated)
            for i in np.flatnonzero(done):
                finished[i] = EpisodeResult(
                    seeds[i],
                    float(returns[i]),
                    int(lengths[i]),
                    bool(succeeded[i]),
                    {k: str(next_infos[i].get(k, "")) for k in episode_info_keys},
                )
                bar.update(1)
            running &= ~done
            batch.reset_done((terminated | truncated) & ~running, seed=seeds[0])
            obs, infos = next_obs, next_infos
        # Keep results and stored episodes in seed order, so a store always holds a contiguous
        # run of seeds and an interrupted recording resumes at seed + n_episodes.
        for i in sorted(finished):
            results.append(finished[i])
            if buffers is not None:
                meta = {
                    "seed": finished[i].seed,
                    "success": finished[i].success,
                    "source": source,
                    "episode_return": finished[i].episode_return,
                    **finished[i].info,
                }
                store.add_episode(buffers[i].to_arrays(), meta)
            if render_mask[i]:
                videos.append(np.stack(frames[i]))
        next_episode += n_active
    bar.close()
    return RolloutResult(episodes=results, videos=videos)


class _EpisodeBuffer:
    """One episode's steps; observation t is stored with action t (as in Diffusion Policy)."""

    def __init__(self, info_keys: Sequence[str] = ()) -> None:
        self.info_keys = tuple(info_keys)
        self.info: dict[str, list[Any]] = {key: [] for key in self.info_keys}
        self.obs: dict[str, list[np.ndarray]] = {}
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.terminated: list[bool] = []
        self.timestamp: list[float] = []

    def add(
        self,
        obs: Any,
        index: int,
        action: np.ndarray,
        reward: float,
        terminated: bool,
        timestamp: float,
        info: dict[str, Any],
    ) -> None:
        for key in self.info_keys:
            if key not in info:
                raise KeyError(f"info_keys: the env's info has no {key!r} (it has {sorted(info)})")
            self.info[key].append(info[key])
        for key, value in as_dict(obs).items():
            self.obs.setdefault(key, []).append(np.array(value[index]))
        self.action.append(action)
        self.reward.append(reward)
        self.terminated.append(terminated)
        self.timestamp.append(timestamp)

    def to_arrays(self) -> dict[str, np.ndarray]:
        data = {key: np.stack(values) for key, values in self.obs.items()}
        data["action"] = np.stack(self.action).astype(np.float32)
        data["reward"] = np.asarray(self.reward, dtype=np.float32)
        data["terminated"] = np.asarray(self.terminated, dtype=bool)
        data["timestamp"] = np.asarray(self.timestamp, dtype=np.float64)
        for key, values in self.info.items():
            data[key] = np.asarray(values)
        return data


def _add_batch_dim(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]


def _info_success(info: dict[str, Any], size: int) -> np.ndarray:
    if "success" not in info:
        return np.zeros(size, dtype=bool)
    mask = info.get("_success", np.ones(size, dtype=bool))
    return np.asarray(info["success"], dtype=bool) & mask


def _collect_frames(
    rendered: list[np.ndarray], mask: np.ndarray, frames: list[list[np.ndarray]]
) -> None:
    for i in np.flatnonzero(mask):
        frames[i].append(rendered[i])
