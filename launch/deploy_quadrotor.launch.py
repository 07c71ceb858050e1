"""Deploy a quadrotor policy over ROS 2: the policy loop, plus the stand-in quadrotor if asked.

For machines with ROS 2 installed; the `robolearn` command must be on PATH:

    # rehearsal: the stand-in quadrotor as its own launched process, then the policy loop
    ros2 launch launch/deploy_quadrotor.launch.py policy:=raptor_released vehicle:=x500
    # a real PX4 vehicle (its uXRCE-DDS agent running), in offboard mode when the loop starts
    ros2 launch launch/deploy_quadrotor.launch.py policy:=<ckpt> hw:=ros2_quadrotor standin:=false

Equivalent to `robolearn deploy policy=<ckpt> hw=<hw> env.kwargs.params=<vehicle>`, which needs
no ROS launch (it starts the stand-in itself); here the stand-in is launched separately, so the
deploy command is told not to start one (hw.standin=null). The launched stand-in uses its own
defaults (ENU/FLU odometry, policy motor order), which are those of hw=standin_quadrotor.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    vehicle = LaunchConfiguration("vehicle")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "policy", description="policy checkpoint directory or 'raptor_released'"
            ),
            DeclareLaunchArgument(
                "hw", default_value="standin_quadrotor", description="configs/hw/"
            ),
            DeclareLaunchArgument(
                "vehicle", default_value="crazyflie", description="crazyflie | x500"
            ),
            DeclareLaunchArgument("episodes", default_value="10"),
            DeclareLaunchArgument(
                "standin", default_value="true", description="launch the stand-in quadrotor"
            ),
            DeclareLaunchArgument("python", default_value="python3"),
            ExecuteProcess(
                cmd=[
                    LaunchConfiguration("python"),
                    "-m",
                    "hw.standin_quadrotor",
                    "--vehicle",
                    vehicle,
                ],
                name="standin_quadrotor",
                output="screen",
                condition=IfCondition(LaunchConfiguration("standin")),
            ),
            ExecuteProcess(
                cmd=[
                    "robolearn",
                    "deploy",
                    ["policy=", LaunchConfiguration("policy")],
                    ["hw=", LaunchConfiguration("hw")],
                    "env=quadrotor",
                    ["env.kwargs.params=", vehicle],
                    ["episodes=", LaunchConfiguration("episodes")],
                    "hw.standin=null",
                ],
                name="robolearn_deploy",
                output="screen",
            ),
        ]
    )
