"""The stand-in arm hardware node (PyBullet Panda behind ros2_control-style topics).

For machines with ROS 2 installed; robolearn must be installed in the Python that runs it:

    ros2 launch launch/standin_arm.launch.py task:=push
    ros2 launch launch/standin_arm.launch.py config:='{"latency": 0.01, "joint_noise": 0.001}'

`robolearn deploy hw=standin_arm` starts the same node by itself, without ROS launch.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "task", default_value="reach", description="reach | push | pick_place"
            ),
            DeclareLaunchArgument(
                "config",
                default_value="{}",
                description="JSON object of StandInArmConfig fields (hw/standin_arm.py)",
            ),
            DeclareLaunchArgument(
                "python", default_value="python3", description="Python with robolearn installed"
            ),
            ExecuteProcess(
                cmd=[
                    LaunchConfiguration("python"),
                    "-m",
                    "hw.standin_arm",
                    "--task",
                    LaunchConfiguration("task"),
                    "--config",
                    LaunchConfiguration("config"),
                ],
                name="standin_arm",
                output="screen",
            ),
        ]
    )
