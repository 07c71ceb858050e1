"""Simulation environments, registered as gymnasium ids ``robolearn/<Name>-v0``.

Importing ``sims`` registers the ids; the entry points are strings, so no simulator is imported
until an env is made. ``register_envs`` is idempotent.
"""

from __future__ import annotations

import gymnasium

#: id -> (entry point, max_episode_steps at the robot's 20 Hz control rate).
ARM_ENVS = {
    "robolearn/ArmReach-v0": ("sims.arm.env:ArmReachEnv", 50),
    "robolearn/ArmPush-v0": ("sims.arm.env:ArmPushEnv", 100),
    "robolearn/ArmPickPlace-v0": ("sims.arm.env:ArmPickPlaceEnv", 100),
}

#: id -> (entry point, vector entry point, max_episode_steps at the quadrotor's 100 Hz).
QUADROTOR_ENVS = {
    "robolearn/Quadrotor-v0": (
        "sims.quadrotor.env:QuadrotorEnv",
        "sims.quadrotor.env:QuadrotorVectorEnv",
        500,
    ),
}


def register_envs() -> None:
    """Register every ``robolearn/*`` simulation id with gymnasium (once; safe to call again)."""
    for env_id, (entry_point, max_steps) in ARM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry_point, max_episode_steps=max_steps)
    for env_id, (entry_point, vector_entry_point, max_steps) in QUADROTOR_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point=entry_point,
                vector_entry_point=vector_entry_point,
                max_episode_steps=max_steps,
            )


register_envs()
