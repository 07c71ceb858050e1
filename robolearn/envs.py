"""Making environments by gymnasium id, so the core never imports a simulator directly.

Environments register themselves under gymnasium ids (``robolearn/<Name>-v0``) when their
package (``sims``, ``hw``) is imported; ``make_env`` imports those packages by name on first use
of an unknown id (gymnasium >= 1.0 no longer loads env entry points by itself).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

#: Packages that register robolearn environments when imported (``hw`` imports no ROS until a
#: hardware env is made).
ENV_PACKAGES = ("sims", "hw")


def ensure_registered(env_id: str) -> None:
    """Make sure ``env_id`` is registered, importing the env packages if needed."""
    if env_id in gym.registry:
        return
    failures = []
    for package in ENV_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError as err:  # say why, or a missing simulator looks like a typo
            failures.append(f"importing {package} failed: {err}")
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("robolearn/"))
        why = f" ({'; '.join(failures)})" if failures else ""
        raise ValueError(f"unknown environment id {env_id!r}; registered: {known}{why}")


def renders(env_id: str) -> bool:
    """Whether the env can render RGB frames (``render_mode="rgb_array"``) for videos."""
    from gymnasium.envs.registration import load_env_creator

    ensure_registered(env_id)
    entry_point = gym.spec(env_id).entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", [])


def make_env(env_id: str, kwargs: dict[str, Any] | None = None, **overrides: Any) -> gym.Env:
    """``gymnasium.make`` with the config kwargs plus call-site overrides (e.g. render_mode)."""
    ensure_registered(env_id)
    return gym.make(env_id, **{**(kwargs or {}), **overrides})


def make_vector_env(
    env_id: str, num_envs: int, kwargs: dict[str, Any] | None = None, **overrides: Any
) -> gym.vector.VectorEnv:
    """A vector env with autoreset disabled (``rollout`` resets finished envs itself).

    Envs with a native batched implementation (a ``vector_entry_point``, e.g. the quadrotor's
    batched torch dynamics) use it; others are stepped in process one after another, since on
    2 cores subprocesses lose for cheap envs.
    """
    ensure_registered(env_id)
    native = gym.spec(env_id).vector_entry_point is not None
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point" if native else "sync",
        vector_kwargs={} if native else {"autoreset_mode": gym.vector.AutoresetMode.DISABLED},
        **{**(kwargs or {}), **overrides},
    )
