"""PyBullet twins of robolearn's simulated robots: a second physics engine, not the training one.

The stand-in hardware nodes (:mod:`hw`) simulate their robot here, so a policy trained in MuJoCo
meets a different contact model, solver and actuator model when it is rehearsed over ROS 2. The
twins are built from the same robot numbers as the MuJoCo models (``robolearn.robots``), so
their kinematics agree exactly; only the physics differs. Needs the ``ros`` extra (pybullet).
"""
