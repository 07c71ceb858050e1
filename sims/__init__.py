"""Simulation environments, registered as gymnasium ids ``robolearn/<Name>-v0``.

Meta-World tasks keep their task's version: ``robolearn/MetaWorld-<task>``, e.g.
``robolearn/MetaWorld-push-v3``.

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

#: Meta-World v3 tasks with an id ``robolearn/MetaWorld-<task>`` (sims/metaworld.py; needs the
#: ``metaworld`` extra only when an env is made).
METAWORLD_TASKS = ("push-v3", "door-open-v3", "drawer-open-v3", "button-press-v3", "reach-v3")
#: id -> Meta-World task name.
METAWORLD_ENVS = {f"robolearn/MetaWorld-{task}": task for task in METAWORLD_TASKS}
#: Episode limit of the Meta-World ids, in env steps at 80 Hz. Meta-World's own limit is 500, but
#: its scripted experts finish these tasks in 45-115 steps (100 seeds: median 47 reach, 60
#: button-press, 62 push, 80 door-open, 88 drawer-open; the slowest success 114, door-open, bar
#: one push at 210): 200 leaves noisy demonstrations and learned policies almost twice the
#: slowest expert's time, while a failed episode costs 2.5x fewer steps than at 500.
METAWORLD_MAX_EPISODE_STEPS = 200


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
    for env_id, task in METAWORLD_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point="sims.metaworld:MetaWorldEnv",
                kwargs={"task": task},
                max_episode_steps=METAWORLD_MAX_EPISODE_STEPS,
            )


register_envs()
