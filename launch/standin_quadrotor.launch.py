"""The stand-in quadrotor hardware node (PyBullet crazyflie or x500 behind odometry and motor
topics).

For machines with ROS 2 installed; robolearn must be installed in the Python that runs it:

    ros2 launch launch/standin_quadrotor.launch.py vehicle:=x500
    ros2 launch launch/standin_quadrotor.launch.py config:='{"frame": "ned_frd"}'

`robolearn deploy hw=standin_quadrotor` starts the same node by itself, without ROS launch.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "vehicle", default_value="crazyflie", description="crazyflie | x500"
            ),
            DeclareLaunchArgument(
                "config",
                default_value="{}",
                description="JSON object of StandInQuadrotorConfig fields",
            ),
            DeclareLaunchArgument(
                "python", default_value="python3", description="Python with robolearn installed"
            ),
            ExecuteProcess(
                cmd=[
                    LaunchConfiguration("python"),
                    "-m",
                    "hw.standin_quadrotor",
                    "--vehicle",
                    LaunchConfiguration("vehicle"),
                    "--config",
                    LaunchConfiguration("config"),
                ],
                name="standin_quadrotor",
                output="screen",
            ),
        ]
    )
