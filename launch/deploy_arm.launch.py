"""Deploy a policy on an arm over ROS 2: the policy loop, plus the stand-in arm if asked.

For machines with ROS 2 installed; the `robolearn` command must be on PATH:

    # rehearsal: the stand-in arm as its own launched process, then the policy loop
    ros2 launch launch/deploy_arm.launch.py policy:=runs/train/<run>/policy env:=arm_reach
    # a real robot whose ros2_control bringup is already running
    ros2 launch launch/deploy_arm.launch.py policy:=<ckpt> env:=arm_push hw:=ros2_arm standin:=false

Equivalent to `robolearn deploy policy=<ckpt> env=<env> hw=<hw>`, which needs no ROS launch
(it starts the stand-in itself); here the stand-in is launched separately, so the deploy command
is told not to start one (hw.standin=null).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    policy = LaunchConfiguration("policy")
    env = LaunchConfiguration("env")
    return LaunchDescription(
        [
            DeclareLaunchArgument("policy", description="policy checkpoint directory or 'expert'"),
            DeclareLaunchArgument("env", default_value="arm_reach", description="configs/env/"),
            DeclareLaunchArgument("hw", default_value="standin_arm", description="configs/hw/"),
            DeclareLaunchArgument("episodes", default_value="10"),
            DeclareLaunchArgument(
                "standin", default_value="true", description="launch the stand-in arm node"
            ),
            DeclareLaunchArgument("task", default_value="reach", description="stand-in task"),
            DeclareLaunchArgument("python", default_value="python3"),
            ExecuteProcess(
                cmd=[
                    LaunchConfiguration("python"),
                    "-m",
                    "hw.standin_arm",
                    "--task",
                    LaunchConfiguration("task"),
                ],
                name="standin_arm",
                output="screen",
                condition=IfCondition(LaunchConfiguration("standin")),
            ),
            ExecuteProcess(
                cmd=[
                    "robolearn",
                    "deploy",
                    ["policy=", policy],
                    ["env=", env],
                    ["hw=", LaunchConfiguration("hw")],
                    ["episodes=", LaunchConfiguration("episodes")],
                    "hw.standin=null",
                ],
                name="robolearn_deploy",
                output="screen",
            ),
        ]
    )
