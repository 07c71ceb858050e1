"""Stand-in arm hardware: a ROS 2 node that behaves like a ros2_control Panda driver, simulated
in PyBullet (:mod:`sims.pybullet.arm`), the rehearsal for a real robot.

Topics, as a ros2_control bringup with these controllers would have them:

* publishes ``/joint_states`` (``sensor_msgs/JointState``, reliable, like
  joint_state_broadcaster) with positions, velocities and efforts of the 7 arm joints and the two
  finger joints, in a configurable order and with optional extra joints;
* subscribes ``/arm_controller/joint_trajectory`` (``trajectory_msgs/JointTrajectory``: joints
  by name, position points interpolated linearly from the current setpoint, an empty trajectory
  stops) and ``/arm_controller/commands`` (``std_msgs/Float64MultiArray``, 7 positions in
  ``panda_joint1..7`` order, held until the next), and ``/gripper_controller/commands`` (two
  finger positions);
* publishes ``/object_pose`` and ``/goal_pose`` (``geometry_msgs/PoseStamped``, frame
  ``world``), standing in for a perception system and an operator;
* serves ``~/reset`` (``std_srvs/Trigger``): a new episode drawn exactly as the MuJoCo task
  draws it for the seed in the ``seed`` parameter (then consumed), so a deployment's episodes
  replay in simulation from their seeds.

Imperfections, all configurable: measurement-to-delivery latency with uniform jitter, command
latency, Gaussian sensor noise on joints and poses, and physics offsets (block mass and
friction scales, link masses, joint damping; see :class:`~sims.pybullet.arm.ArmPhysics`).

Run it on its own with ``python -m hw.standin_arm --task push`` (``--help`` for the options).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from hw.joints import JointNameMap, MissingJointsError
from hw.ros import ns_to_stamp, sensor_qos
from hw.standin import StandIn, config_from_mapping, standin_config, standin_main
from robolearn.robots.panda import FINGER_JOINT_NAMES, GRIPPER_MAX_OPENING, JOINT_NAMES

ALL_JOINTS = JOINT_NAMES + FINGER_JOINT_NAMES


@dataclasses.dataclass(frozen=True)
class StandInArmConfig:
    """Configuration of the stand-in arm.

    Attributes:
        task: ``"reach"``, ``"push"`` or ``"pick_place"``: the scene and its episode sampling.
        node_name: The node's name (its reset service is ``/<node_name>/reset``).
        state_hz: Rate of ``/joint_states`` and the pose topics (the broadcaster's rate).
        latency: Seconds from a measurement to its delivery.
        jitter: Extra delivery delay, uniform in ``[0, jitter]`` seconds (order is kept).
        command_latency: Seconds from a command's arrival to its effect.
        joint_noise: Standard deviation of the noise on published joint positions (rad).
        pose_noise: Standard deviation of the noise on published positions (m).
        joint_order: Order of the joints in ``/joint_states``; empty for the URDF order (arm
            joints then fingers). Must name all 9 arm and finger joints.
        extra_joints: Further joints published with zero state (e.g. a conveyor), which
            clients must ignore.
        seed: Seed of the noise and of episodes reset without a seed.
        physics: Mapping of :class:`~sims.pybullet.arm.ArmPhysics` fields.
        joint_states_topic: Published joint states topic.
        trajectory_topic: JointTrajectoryController command topic.
        forward_topic: Forward command controller topic (arm).
        gripper_topic: Forward command controller topic (fingers).
        object_pose_topic: Published block pose topic.
        goal_pose_topic: Published goal pose topic.
    """

    task: str = "reach"
    node_name: str = "standin_arm"
    state_hz: float = 100.0
    latency: float = 0.004
    jitter: float = 0.002
    command_latency: float = 0.002
    joint_noise: float = 0.0002
    pose_noise: float = 0.0005
    joint_order: tuple[str, ...] = ()
    extra_joints: tuple[str, ...] = ()
    seed: int = 0
    physics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    joint_states_topic: str = "/joint_states"
    trajectory_topic: str = "/arm_controller/joint_trajectory"
    forward_topic: str = "/arm_controller/commands"
    gripper_topic: str = "/gripper_controller/commands"
    object_pose_topic: str = "/object_pose"
    goal_pose_topic: str = "/goal_pose"

    def __post_init__(self) -> None:
        from hw.arm_env import TASKS

        if self.task not in TASKS:
            raise ValueError(f"standin.task must be one of {sorted(TASKS)}, got {self.task!r}")
        if not self.state_hz > 0:
            raise ValueError(f"standin.state_hz must be positive, got {self.state_hz}")
        for name in ("latency", "jitter", "command_latency", "joint_noise", "pose_noise"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"standin.{name} must be >= 0, got {value}")
        if self.joint_order and sorted(self.joint_order) != sorted(ALL_JOINTS):
            raise ValueError(
                f"standin.joint_order must be a permutation of {list(ALL_JOINTS)}, "
                f"got {list(self.joint_order)}"
            )
        if set(self.extra_joints) & set(ALL_JOINTS):
            raise ValueError(f"standin.extra_joints {self.extra_joints} repeat robot joints")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StandInArmConfig:
        """Build from a (YAML / JSON) mapping: lists become tuples; unknown keys raise."""
        return config_from_mapping(cls, values)


class StandInArm(StandIn):
    """The stand-in arm node with its PyBullet scene, running in this process (see
    :class:`~hw.standin.StandIn`; the physics thread steps the scene at ``state_hz``).
    :func:`main` runs one as a process.

    Args:
        config: A :class:`StandInArmConfig` or a mapping of its fields.
        domain_id: ROS domain; ``None`` reads ``ROS_DOMAIN_ID``.
    """

    def __init__(
        self,
        config: StandInArmConfig | Mapping[str, Any] | None = None,
        domain_id: int | None = None,
    ) -> None:
        from hw.arm_env import TASKS
        from sims.pybullet.arm import ArmPhysics, PyBulletArm

        config = standin_config(StandInArmConfig, config)
        self.task_class = TASKS[config.task]
        self.arm = PyBulletArm(self.task_class.has_object, ArmPhysics(**config.physics))
        super().__init__(config, config.state_hz, "standin")
        self._order = list(config.joint_order or ALL_JOINTS)
        self._publish_index = np.array([ALL_JOINTS.index(n) for n in self._order])
        self._arm_map = JointNameMap(JOINT_NAMES)
        self._substeps = max(1, round((1.0 / config.state_hz) / self.arm.physics.timestep))
        self._setpoint = np.zeros(7)
        self._opening = GRIPPER_MAX_OPENING
        # Active trajectory: (start time, start setpoint, [(time from start, positions)]).
        self._trajectory: tuple[float, np.ndarray, list[tuple[float, np.ndarray]]] | None = None
        self._goal = np.zeros(3)
        self._start(domain_id, lambda: self._reset_scene(config.seed))

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_node(self, node: Any) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import qos_profile_system_default
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        cfg = self.config
        node.declare_parameter("seed", -1)
        # The controllers' own QoS: SystemDefaults (reliable) for commands and joint states;
        # clients may subscribe best effort. Poses best effort, like a perception driver.
        qos = qos_profile_system_default
        self._joint_pub = node.create_publisher(JointState, cfg.joint_states_topic, qos)
        self._object_pub = node.create_publisher(PoseStamped, cfg.object_pose_topic, sensor_qos())
        self._goal_pub = node.create_publisher(PoseStamped, cfg.goal_pose_topic, sensor_qos())
        node.create_subscription(JointTrajectory, cfg.trajectory_topic, self._on_trajectory, qos)
        node.create_subscription(Float64MultiArray, cfg.forward_topic, self._on_forward, qos)
        node.create_subscription(Float64MultiArray, cfg.gripper_topic, self._on_gripper, qos)
        node.create_service(Trigger, "~/reset", self._on_reset)

    def _on_trajectory(self, msg: Any) -> None:
        try:
            index = self._arm_map.indices(msg.joint_names) if msg.points else None
        except MissingJointsError as err:
            # As JointTrajectoryController with allow_partial_joints_goal=false.
            self.node.get_logger().error(f"rejected trajectory: {err}")
            return
        points = []
        for point in msg.points:
            if len(point.positions) != len(msg.joint_names):
                self.node.get_logger().error("rejected trajectory: a point lacks positions")
                return
            t = point.time_from_start.sec + 1e-9 * point.time_from_start.nanosec
            points.append((t, np.asarray(point.positions, dtype=np.float64)[index]))
        self._apply_later(lambda: self._start_trajectory(points))

    def _start_trajectory(self, points: list[tuple[float, np.ndarray]]) -> None:
        with self._lock:
            # An empty trajectory stops the active one: hold the current setpoint.
            self._trajectory = (time.monotonic(), self._setpoint.copy(), points) if points else None

    def _on_forward(self, msg: Any) -> None:
        if len(msg.data) != 7:
            self.node.get_logger().error(f"command size {len(msg.data)} != 7 joints; ignored")
            return
        target = np.asarray(msg.data, dtype=np.float64)
        self._apply_later(lambda: self._set_setpoint(target))

    def _set_setpoint(self, target: np.ndarray) -> None:
        with self._lock:
            self._trajectory = None
            self._setpoint = target

    def _on_gripper(self, msg: Any) -> None:
        if len(msg.data) != 2:
            self.node.get_logger().error(f"gripper command size {len(msg.data)} != 2; ignored")
            return
        opening = float(msg.data[0] + msg.data[1])

        def apply() -> None:
            with self._lock:
                self._opening = opening

        self._apply_later(apply)

    def _on_reset(self, request: Any, response: Any) -> Any:
        from rclpy.parameter import Parameter

        seed = int(self.node.get_parameter("seed").value)
        if seed < 0:
            seed = int(self._rng.integers(2**31))
        # The seed is consumed: a reset without a new one draws a fresh episode.
        self.node.set_parameters([Parameter("seed", Parameter.Type.INTEGER, -1)])
        self._reset_scene(seed)
        response.success = True
        response.message = f"episode seed {seed}"
        return response

    # --- simulation -------------------------------------------------------------------------

    def _reset_scene(self, seed: int) -> None:
        from gymnasium.utils.seeding import np_random

        from sims.arm.env import ArmRandomization

        # The same generator gymnasium's Env.reset(seed=...) makes, fed to the MuJoCo task's
        # own sampler: the episode starts where the simulated one of this seed starts.
        rng, _ = np_random(seed)
        scene = self.task_class.sample_scene(rng, ArmRandomization())
        with self._lock:
            self.arm.reset(
                scene.joint_pos, scene.object_xy, scene.object_mass, scene.object_friction
            )
            self._setpoint = np.array(scene.joint_pos, dtype=np.float64)
            self._opening = GRIPPER_MAX_OPENING
            self._trajectory = None
            self._goal = np.asarray(scene.goal, dtype=np.float64)
            self.episode_seed = seed
            # Measurements and commands of the previous episode are void.
            self._outbox.clear()
            self._inbox.clear()

    def _trajectory_setpoint(self, now: float) -> None:
        """Advance the setpoint along the active trajectory (linear in time, like JTC's
        interpolation of position-only points); call with the lock held."""
        start, q0, points = self._trajectory
        t = now - start
        prev_t, prev_q = 0.0, q0
        for t_i, q_i in points:
            if t < t_i:
                s = (t - prev_t) / (t_i - prev_t) if t_i > prev_t else 1.0
                self._setpoint = prev_q + s * (q_i - prev_q)
                return
            prev_t, prev_q = t_i, q_i
        self._setpoint = prev_q.copy()
        self._trajectory = None

    def _step_physics(self) -> _Measurement:
        if self._trajectory is not None:
            self._trajectory_setpoint(time.monotonic())
        self.arm.set_targets(self._setpoint, self._opening)
        self.arm.step(self._substeps)
        q, v, effort = self.arm.joint_state()
        block = self.arm.block_pose()[0] if self.arm.block is not None else None
        return _Measurement(q, v, effort, block, self._goal.copy())

    def _publish(self, stamp_ns: int, measurement: _Measurement) -> None:
        """Queue the measurements' messages for delivery after the link latency."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        cfg = self.config
        q, v, effort, block, goal = measurement
        stamp = ns_to_stamp(stamp_ns)
        q = q + self._rng.normal(0.0, cfg.joint_noise, q.shape) if cfg.joint_noise else q
        order = self._publish_index
        extra = len(cfg.extra_joints)
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = self._order + list(cfg.extra_joints)
        joints.position = q[order].tolist() + [0.0] * extra
        joints.velocity = v[order].tolist() + [0.0] * extra
        joints.effort = effort[order].tolist() + [0.0] * extra
        messages: list[tuple[Any, Any]] = [(self._joint_pub, joints)]
        for pub, position in ((self._object_pub, block), (self._goal_pub, goal)):
            if position is None:
                continue
            if pub is self._object_pub and cfg.pose_noise:
                position = position + self._rng.normal(0.0, cfg.pose_noise, 3)
            pose = PoseStamped()
            pose.header.stamp = stamp
            pose.header.frame_id = "world"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (
                float(x) for x in position
            )
            pose.pose.orientation.w = 1.0
            messages.append((pub, pose))

        def deliver() -> None:
            for pub, msg in messages:
                pub.publish(msg)

        self._deliver(deliver)

    # --- lifecycle --------------------------------------------------------------------------

    def joint_positions(self) -> np.ndarray:
        """Current simulated arm joint positions (7,), without noise (for tests and tools)."""
        with self._lock:
            return self.arm.joint_state()[0][:7]

    def _close_simulation(self) -> None:
        self.arm.close()


class _Measurement(NamedTuple):
    """One tick of the scene: joint positions, velocities and efforts (URDF order), the
    block's position (``None`` without a block) and the goal."""

    q: np.ndarray
    v: np.ndarray
    effort: np.ndarray
    block: np.ndarray | None
    goal: np.ndarray


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in arm until SIGINT or SIGTERM."""
    return standin_main(
        argv,
        StandInArm,
        StandInArmConfig,
        ("task", ["reach", "push", "pick_place"]),
        '{"latency": 0.01, "physics": {"object_mass_scale": 1.5}}',
        lambda config: f"arm ({config.task})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
