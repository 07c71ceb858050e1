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

import argparse
import dataclasses
import heapq
import itertools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hw.joints import JointNameMap, MissingJointsError
from hw.ros import RosRuntime, ns_to_stamp, sensor_qos
from robolearn.robots.panda import FINGER_JOINT_NAMES, GRIPPER_MAX_OPENING, JOINT_NAMES

logger = logging.getLogger("hw.standin_arm")

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown stand-in config keys {unknown}; known: {sorted(names)}")
        return cls(
            **{
                k: tuple(v) if isinstance(v, list) else dict(v) if k == "physics" else v
                for k, v in values.items()
            }
        )


class DelayLine:
    """Runs callables after a delay, in submission order, on one thread (latency emulation)."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._last_due = 0.0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            # Never earlier than the previous item: a link delivers in order.
            due = max(time.monotonic() + delay, self._last_due)
            self._last_due = due
            heapq.heappush(self._heap, (due, next(self._counter), fn))
            self._cond.notify()

    def clear(self) -> None:
        """Drop everything not yet delivered."""
        with self._cond:
            self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a failed publish must not kill the link
                logger.exception("delayed call failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=1.0)


class StandInArm:
    """The stand-in arm node with its PyBullet scene, running in this process.

    It owns a private ROS context (its own DDS participant, as a separate driver process would
    be), a physics thread stepping the scene in real time at ``state_hz``, and a delay line for
    latency. :func:`main` runs one as a process.

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

        if config is None:
            config = StandInArmConfig()
        elif isinstance(config, Mapping):
            config = StandInArmConfig.from_mapping(config)
        self.config = config
        self.task_class = TASKS[config.task]
        self.arm = PyBulletArm(self.task_class.has_object, ArmPhysics(**config.physics))
        self._rng = np.random.default_rng(config.seed)
        self._lock = threading.Lock()  # the scene, the setpoints and the trajectory
        self._order = list(config.joint_order or ALL_JOINTS)
        self._publish_index = np.array([ALL_JOINTS.index(n) for n in self._order])
        self._arm_map = JointNameMap(JOINT_NAMES)
        self._setpoint = np.zeros(7)
        self._opening = GRIPPER_MAX_OPENING
        # Active trajectory: (start time, start setpoint, [(time from start, positions)]).
        self._trajectory: tuple[float, np.ndarray, list[tuple[float, np.ndarray]]] | None = None
        self._goal = np.zeros(3)
        self.episode_seed: int | None = None
        self.commands_received = 0
        self._running = threading.Event()

        self._outbox = DelayLine("standin-outbox")
        self._inbox = DelayLine("standin-inbox")
        self._ros = RosRuntime(domain_id)
        try:
            # The scene is ready before the node exists: the executor spins from the moment the
            # reset service does, and a client's reset must neither find the scene half made
            # nor be overwritten by this initial one.
            self._reset_scene(config.seed)
            self._setup_node()
            self._running.set()
            self._physics = threading.Thread(
                target=self._physics_loop, name="standin-physics", daemon=True
            )
            self._physics.start()
        except BaseException:
            self._ros.close()
            self._outbox.stop()
            self._inbox.stop()
            self.arm.close()
            raise

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_node(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import qos_profile_system_default
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        cfg = self.config
        node = self._ros.create_node(cfg.node_name)
        self.node = node
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

    def _delayed(self, fn: Callable[[], None]) -> None:
        self.commands_received += 1
        self._inbox.submit(self.config.command_latency, fn)

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
        self._delayed(lambda: self._start_trajectory(points))

    def _start_trajectory(self, points: list[tuple[float, np.ndarray]]) -> None:
        with self._lock:
            # An empty trajectory stops the active one: hold the current setpoint.
            self._trajectory = (time.monotonic(), self._setpoint.copy(), points) if points else None

    def _on_forward(self, msg: Any) -> None:
        if len(msg.data) != 7:
            self.node.get_logger().error(f"command size {len(msg.data)} != 7 joints; ignored")
            return
        target = np.asarray(msg.data, dtype=np.float64)
        self._delayed(lambda: self._set_setpoint(target))

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

        self._delayed(apply)

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

    def _physics_loop(self) -> None:
        period = 1.0 / self.config.state_hz
        substeps = max(1, round(period / self.arm.physics.timestep))
        tick = time.monotonic()
        while self._running.is_set():
            with self._lock:
                if self._trajectory is not None:
                    self._trajectory_setpoint(time.monotonic())
                self.arm.set_targets(self._setpoint, self._opening)
                self.arm.step(substeps)
                q, v, effort = self.arm.joint_state()
                block = self.arm.block_pose()[0] if self.arm.block is not None else None
                goal = self._goal.copy()
                # Stamped under the lock: a message stamped after a reset returned was
                # measured after it (the env relies on this to skip the previous episode).
                stamp_ns = self.node.get_clock().now().nanoseconds
            self._publish(stamp_ns, q, v, effort, block, goal)
            tick += period
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:  # fell far behind (a loaded machine): do not try to catch up
                tick = time.monotonic()

    def _publish(
        self,
        stamp_ns: int,
        q: np.ndarray,
        v: np.ndarray,
        effort: np.ndarray,
        block: np.ndarray | None,
        goal: np.ndarray,
    ) -> None:
        """Queue the measurements' messages for delivery after the link latency."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        cfg = self.config
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
        delay = cfg.latency + (self._rng.uniform(0.0, cfg.jitter) if cfg.jitter else 0.0)

        def deliver() -> None:
            for pub, msg in messages:
                pub.publish(msg)

        self._outbox.submit(delay, deliver)

    # --- lifecycle --------------------------------------------------------------------------

    def joint_positions(self) -> np.ndarray:
        """Current simulated arm joint positions (7,), without noise (for tests and tools)."""
        with self._lock:
            return self.arm.joint_state()[0][:7]

    def close(self) -> None:
        """Stop publishing and shut the node down, as a killed driver would (idempotent)."""
        if not self._running.is_set():
            return
        self._running.clear()
        self._physics.join(timeout=2.0)
        self._outbox.stop()
        self._inbox.stop()
        self._ros.close()
        self.arm.close()

    def __enter__(self) -> StandInArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in arm until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hw.standin_arm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", choices=["reach", "push", "pick_place"], default=None)
    parser.add_argument(
        "--config",
        default="{}",
        help="JSON object of StandInArmConfig fields, e.g. "
        '\'{"latency": 0.01, "physics": {"object_mass_scale": 1.5}}\'',
    )
    parser.add_argument("--domain-id", type=int, default=None, help="default: ROS_DOMAIN_ID")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    values = json.loads(args.config)
    if args.task is not None:
        values["task"] = args.task
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with StandInArm(values, domain_id=args.domain_id) as standin:
        logger.info(
            "stand-in arm (%s) up as /%s; Ctrl-C stops it",
            standin.config.task,
            standin.config.node_name,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
