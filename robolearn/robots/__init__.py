"""Robot specs: what a robot is and what its actions mean, shared by its sim and hardware envs."""

from robolearn.robots.spec import RobotSpec

__all__ = ["RobotSpec"]
