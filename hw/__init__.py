"""The ROS 2 side of robolearn: arm and quadrotor envs over ROS 2 topics, the safety layer,
stand-in hardware.

Importing ``hw`` registers the hardware env ids with gymnasium; nothing here imports rclpy until
an env or a stand-in node is made (see :mod:`hw.ros`), so ``import hw`` works without ROS 2.

Ids (the simulated twin of each in :data:`SIM_TWINS`):

* ``robolearn/ROS2ArmReach-v0``, ``robolearn/ROS2ArmPush-v0``, ``robolearn/ROS2ArmPickPlace-v0``:
  :class:`hw.arm_env.ROS2ArmEnv`, same spaces and episode limits as ``robolearn/Arm*-v0``.
* ``robolearn/ROS2Quadrotor-v0``: :class:`hw.quadrotor_env.ROS2QuadrotorEnv`, same spaces,
  observation, reward and episode limit as ``robolearn/Quadrotor-v0``.
"""

from __future__ import annotations

import gymnasium

#: Hardware id -> (task, simulated twin id, max_episode_steps at the robot's 20 Hz).
ARM_ENVS = {
    "robolearn/ROS2ArmReach-v0": ("reach", "robolearn/ArmReach-v0", 50),
    "robolearn/ROS2ArmPush-v0": ("push", "robolearn/ArmPush-v0", 100),
    "robolearn/ROS2ArmPickPlace-v0": ("pick_place", "robolearn/ArmPickPlace-v0", 100),
}
#: Hardware id -> (simulated twin id, max_episode_steps at the policy's 100 Hz).
QUADROTOR_ENVS = {"robolearn/ROS2Quadrotor-v0": ("robolearn/Quadrotor-v0", 500)}
#: Hardware id -> the simulated env id with the same spaces, task and action meaning.
SIM_TWINS = {
    **{hw_id: sim_id for hw_id, (_, sim_id, _) in ARM_ENVS.items()},
    **{hw_id: sim_id for hw_id, (sim_id, _) in QUADROTOR_ENVS.items()},
}
#: Simulated env id -> its hardware id.
HW_IDS = {sim_id: hw_id for hw_id, sim_id in SIM_TWINS.items()}


def hw_robot(hw_env_id: str) -> str:
    """``"arm"`` or ``"quadrotor"``: the robot of a hardware env id."""
    if hw_env_id in ARM_ENVS:
        return "arm"
    if hw_env_id in QUADROTOR_ENVS:
        return "quadrotor"
    raise ValueError(f"{hw_env_id} is not a hardware env id; known: {sorted(SIM_TWINS)}")


def register_envs() -> None:
    """Register the ``robolearn/ROS2*`` ids with gymnasium (once; safe to call again)."""
    for env_id, (task, _, max_steps) in ARM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point="hw.arm_env:ROS2ArmEnv",
                kwargs={"task": task},
                max_episode_steps=max_steps,
            )
    for env_id, (_, max_steps) in QUADROTOR_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point="hw.quadrotor_env:ROS2QuadrotorEnv",
                max_episode_steps=max_steps,
            )


register_envs()
