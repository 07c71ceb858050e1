"""The Panda arm tasks over ROS 2: a ``gymnasium.Env`` whose spaces and action meaning are the
simulated arm's (:mod:`sims.arm.env`), backed by ros2_control topics instead of MuJoCo.

Observations come from the driver's topics, mapped by joint name:

* ``sensor_msgs/JointState`` (``/joint_states``): the 7 arm joints give ``joint_pos`` and, by
  the shared forward kinematics, ``ee_pos``; the two finger joints sum to ``gripper``;
* ``geometry_msgs/PoseStamped`` (``/object_pose``, ``/goal_pose``): ``object_pos`` and
  ``goal_pos``, in the robot's base frame.

Actions go through the same :class:`~robolearn.robots.panda.ArmIK` as in simulation, then the
safety layer (:mod:`hw.safety`), then to a ros2_control JointTrajectoryController
(``trajectory_msgs/JointTrajectory``, one point reached in one control period) or a forward
command controller (``std_msgs/Float64MultiArray``), chosen by ``controller``; the fingers take
a ``Float64MultiArray`` of their two positions. ``step`` runs at the robot's control rate (or
``control_hz``): it publishes, sleeps until the next tick, then reads the freshest messages; with
``sync_to_joint_states`` the driver's joint states pace the loop instead (see the argument).

``info`` carries ``success``, ``stamp_ns`` (the observation's JointState header stamp),
``obs_latency`` (ROS time now minus that stamp, s), ``overrun`` (the loop missed its tick),
``safety_events`` (this step's interventions, as dicts) and, when the safety layer ended the
episode, ``abort_reason``. Aborted episodes are truncated, not terminated.

With a :class:`~hw.recorder.TopicRecorder` attached (:meth:`ROS2ArmEnv.attach_recorder`), every
message the env receives is recorded at its receive time and every command at its send time;
each step's action is logged at the time of the snapshot its observation came from, and each
message's log time is taken under the lock that makes it the newest sample, so "the newest
message of each topic logged at or before the action" is exactly what the policy saw.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hw.joints import JointNameMap, MissingJointsError
from hw.recorder import TopicRecorder
from hw.recorder import now_ns as recorder_now_ns
from hw.ros import RosRuntime, command_qos, seconds_to_duration, sensor_qos, stamp_to_ns
from hw.safety import ArmSafety, ArmSafetyConfig
from robolearn.robots.panda import (
    FINGER_JOINT_NAMES,
    GRIPPER_MAX_OPENING,
    HOME_QPOS,
    JOINT_NAMES,
    PANDA_SPEC,
    PANDA_YAW_SPEC,
    ArmIK,
)
from sims.arm.env import (
    ArmEnv,
    ArmPickPlaceEnv,
    ArmPushEnv,
    ArmReachEnv,
    action_space,
    observation_space,
)

logger = logging.getLogger("hw.arm_env")

#: Task name -> the simulated env class whose spaces, reward and success the task shares.
TASKS: dict[str, type[ArmEnv]] = {
    "reach": ArmReachEnv,
    "push": ArmPushEnv,
    "pick_place": ArmPickPlaceEnv,
}
#: Controller kinds and the command topic of each by default.
CONTROLLERS = {
    "joint_trajectory": "/arm_controller/joint_trajectory",
    "forward_command": "/arm_controller/commands",
}


@dataclasses.dataclass(frozen=True)
class ArmTopics:
    """Topic names of the arm driver (ros2_control conventions by default).

    Attributes:
        joint_states: ``sensor_msgs/JointState`` of the arm and finger joints.
        command: Arm command topic; ``None`` picks the controller's default (see CONTROLLERS).
        gripper_command: ``Float64MultiArray`` of the two finger positions for a forward
            command controller on the fingers; ``None`` leaves the gripper alone.
        object_pose: ``geometry_msgs/PoseStamped`` of the block (push and pick-place).
        goal_pose: ``geometry_msgs/PoseStamped`` of the goal.
    """

    joint_states: str = "/joint_states"
    command: str | None = None
    gripper_command: str | None = "/gripper_controller/commands"
    object_pose: str = "/object_pose"
    goal_pose: str = "/goal_pose"


@dataclasses.dataclass
class _Sample:
    """The newest message of a topic, decoded."""

    value: Any
    stamp_ns: int
    received: float  # time.monotonic() at arrival


class ROS2ArmEnv(gym.Env):
    """An arm task on a ROS 2 robot (or the stand-in hardware node, :mod:`hw.standin_arm`).

    Args:
        task: ``"reach"``, ``"push"`` or ``"pick_place"``: spaces, reward and success of the
            simulated task of that name.
        controller: ``"joint_trajectory"`` (JointTrajectoryController) or
            ``"forward_command"`` (forward_command_controller / JointGroupPositionController).
        topics: An :class:`ArmTopics` or a mapping of its fields.
        safety: An :class:`~hw.safety.ArmSafetyConfig` or a mapping of its fields.
        scene_reset_node: A node serving ``<node>/reset`` (``std_srvs/Trigger``) with a
            ``seed`` parameter, called by ``reset`` (the stand-in node does this); ``None`` on
            a real robot, where ``reset`` drives the arm home instead.
        node_name: Name of this env's ROS node (its e-stop services live under it).
        domain_id: ROS domain; ``None`` reads ``ROS_DOMAIN_ID``.
        reset_timeout: Seconds ``reset`` waits for the driver (services, fresh messages, home).
        home_duration: Seconds the move home takes on reset (without a scene reset node).
        home_tolerance: Largest joint error (rad) accepted at the end of the move home.
        pose_frames: Frame ids accepted on the pose topics (an empty frame id is accepted too);
            poses in other frames are dropped with a warning, as the env cannot transform them.
        terminate_on_success: End the episode when the task succeeds (as in simulation).
        use_yaw: Five-dimensional actions with a yaw delta (as in simulation).
        safety_log: JSON-lines file that every safety event is appended to.
        control_hz: Control rate in Hz; ``None`` keeps the robot's (20 Hz, as in simulation).
            An action moves the arm as far per step at any rate, so a policy trained at 20 Hz
            moves faster at a higher rate: this is for loop benchmarks and policies trained at
            that rate.
        sync_to_joint_states: Pace the loop by the driver's joint states instead of a local
            clock: each step waits for the first joint state stamped at least half a control
            period after the one the previous observation came from (for at most the watchdog
            timeout; stamps rather than arrival times, so a late message costs no step).
            Observations are then one link latency old, where a free-running tick takes the
            newest message, up to a whole state period older (at equal rates, by how far the
            two clocks happen to be out of phase). For a driver that publishes at the control
            rate (joint_state_broadcaster's ``state_publish_rate``), which then sets the rate;
            ``overrun`` means that joint state was already waiting.
    """

    metadata = {"render_modes": [], "render_fps": int(PANDA_SPEC.control_hz)}

    def __init__(
        self,
        task: str = "reach",
        controller: str = "joint_trajectory",
        topics: ArmTopics | Mapping[str, Any] | None = None,
        safety: ArmSafetyConfig | Mapping[str, Any] | None = None,
        scene_reset_node: str | None = None,
        node_name: str = "robolearn_arm",
        domain_id: int | None = None,
        reset_timeout: float = 10.0,
        home_duration: float = 3.0,
        home_tolerance: float = 0.05,
        pose_frames: tuple[str, ...] | list[str] = ("world", "panda_link0"),
        terminate_on_success: bool = True,
        use_yaw: bool = False,
        safety_log: str | Path | None = None,
        control_hz: float | None = None,
        sync_to_joint_states: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {sorted(CONTROLLERS)}, got {controller!r}")
        if reset_timeout <= 0 or home_duration < 0 or home_tolerance <= 0:
            raise ValueError(
                "reset_timeout and home_tolerance must be positive and home_duration >= 0"
            )
        if control_hz is not None and not (math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {control_hz!r}")
        if isinstance(topics, Mapping):
            topics = ArmTopics(**topics)
        if isinstance(safety, Mapping):
            safety = ArmSafetyConfig(**_tuples(safety))
        self.task = task
        self.task_class = TASKS[task]
        self.controller = controller
        self.topics = topics or ArmTopics()
        self.command_topic = self.topics.command or CONTROLLERS[controller]
        self.scene_reset_node = scene_reset_node
        self.reset_timeout = float(reset_timeout)
        self.home_duration = float(home_duration)
        self.home_tolerance = float(home_tolerance)
        self.pose_frames = tuple(pose_frames)
        self.terminate_on_success = terminate_on_success
        spec = PANDA_YAW_SPEC if use_yaw else PANDA_SPEC
        if control_hz is not None:
            spec = dataclasses.replace(spec, control_hz=float(control_hz))
            self.metadata = {**self.metadata, "render_fps": int(round(control_hz))}
        self.robot_spec = spec
        self.dt = spec.dt
        self.sync_to_joint_states = sync_to_joint_states
        self.ik = ArmIK(use_yaw=use_yaw)
        self.safety = ArmSafety(safety or ArmSafetyConfig(), self.ik, log_path=safety_log)
        self.has_object = self.task_class.has_object
        self.observation_space = observation_space(self.has_object)
        self.action_space = action_space(use_yaw)

        self._joint_map = JointNameMap(JOINT_NAMES + FINGER_JOINT_NAMES)
        self._lock = threading.Lock()
        # Notified on each accepted joint state (sync_to_joint_states waits on it).
        self._joints_arrived = threading.Condition(self._lock)
        self._pub_lock = threading.Lock()
        self._latest: dict[str, _Sample] = {}
        self._problems: dict[str, str] = {}  # topic -> why its last message was dropped
        self._aborted: str | None = None
        self._events_seen = 0  # safety events already reported in an info
        self._next_tick = 0.0
        self._joints_stamp_ns = 0  # header stamp of the current observation's joint state
        self._recorder: TopicRecorder | None = None
        self._snapshot_ns = 0  # log time of the last snapshot
        self._obs_ns = 0  # log time of the snapshot the current observation came from
        self._episode: dict[str, Any] | None = None  # the open episode's end event, if recording

        self._ros = RosRuntime(domain_id)
        try:
            self._setup_node(node_name)
        except BaseException:
            self._ros.close()
            raise

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_node(self, node_name: str) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        node = self._ros.create_node(node_name)
        self.node = node
        topics = self.topics
        # Raw subscriptions, deserialized here: the recorder keeps the exact wire bytes (a
        # re-serialized message differs from them in its CDR padding bytes).
        node.create_subscription(
            JointState,
            topics.joint_states,
            lambda data: self._on_joints(deserialize_message(data, JointState), data),
            sensor_qos(),
            raw=True,
        )
        # The watchdog watches the measurements; the goal may legitimately be published slowly.
        self._watched_topics = [topics.joint_states]
        self._pose_topics = [topics.goal_pose]
        if self.has_object:
            self._pose_topics.append(topics.object_pose)
            self._watched_topics.append(topics.object_pose)
        for topic in self._pose_topics:
            node.create_subscription(
                PoseStamped,
                topic,
                lambda data, t=topic: self._on_pose(
                    t, deserialize_message(data, PoseStamped), data
                ),
                sensor_qos(),
                raw=True,
            )
        command_type = (
            JointTrajectory if self.controller == "joint_trajectory" else Float64MultiArray
        )
        self._command_pub = node.create_publisher(command_type, self.command_topic, command_qos())
        self._gripper_pub = None
        if topics.gripper_command is not None:
            self._gripper_pub = node.create_publisher(
                Float64MultiArray, topics.gripper_command, command_qos()
            )
        node.create_service(Trigger, "~/estop", self._on_estop)
        node.create_service(Trigger, "~/clear_estop", self._on_clear_estop)
        self._reset_client = self._params_client = None
        if self.scene_reset_node is not None:
            from rcl_interfaces.srv import SetParameters

            base = self.scene_reset_node.rstrip("/")
            self._reset_client = node.create_client(Trigger, f"{base}/reset")
            self._params_client = node.create_client(SetParameters, f"{base}/set_parameters")

    def attach_recorder(self, recorder: TopicRecorder) -> None:
        """Record this env's raw topics, commands, actions, episodes and safety events."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        recorder.add_topic(self.topics.joint_states, JointState)
        for topic in self._pose_topics:
            recorder.add_topic(topic, PoseStamped)
        command_type = (
            JointTrajectory if self.controller == "joint_trajectory" else Float64MultiArray
        )
        recorder.add_topic(self.command_topic, command_type)
        if self.topics.gripper_command is not None:
            recorder.add_topic(self.topics.gripper_command, Float64MultiArray)
        self._recorder = recorder

    def _on_joints(self, msg: Any, data: bytes) -> None:
        topic = self.topics.joint_states
        try:
            positions = self._joint_map.pick(msg.name, msg.position)
        except (MissingJointsError, ValueError) as err:
            self._drop(topic, str(err))
            self._record(topic, data, recorder_now_ns())
            return
        sample = _Sample(positions, stamp_to_ns(msg.header.stamp), time.monotonic())
        with self._lock:
            log_ns = recorder_now_ns()
            self._latest[topic] = sample
            self._joints_arrived.notify_all()
        self._record(topic, data, log_ns)

    def _record(self, topic: str, data: bytes, log_ns: int) -> None:
        # Written outside the sample lock: the bag sorts by log time, so order does not matter.
        if self._recorder is not None:
            self._recorder.write(topic, data, log_ns)

    def _on_pose(self, topic: str, msg: Any, data: bytes) -> None:
        frame = msg.header.frame_id
        if frame and frame not in self.pose_frames:
            self._drop(topic, f"frame {frame!r} is not one of {list(self.pose_frames)}")
            self._record(topic, data, recorder_now_ns())
            return
        p = msg.pose.position
        sample = _Sample(np.array([p.x, p.y, p.z]), stamp_to_ns(msg.header.stamp), time.monotonic())
        with self._lock:
            log_ns = recorder_now_ns()
            self._latest[topic] = sample
        self._record(topic, data, log_ns)

    def _drop(self, topic: str, why: str) -> None:
        with self._lock:
            first = self._problems.get(topic) != why
            self._problems[topic] = why
        if first:  # once per distinct problem: a driver at 1 kHz would flood the log
            logger.warning("dropping messages on %s: %s", topic, why)

    def _on_estop(self, request: Any, response: Any) -> Any:
        self.safety.trigger_estop(f"e-stop service {self.node.get_fully_qualified_name()}/estop")
        self._hold()
        response.success = True
        response.message = "e-stop latched: the arm holds; call clear_estop to release it"
        return response

    def _on_clear_estop(self, request: Any, response: Any) -> Any:
        self.safety.clear_estop()
        response.success = True
        response.message = "e-stop released"
        return response

    # --- commands ---------------------------------------------------------------------------

    def _send(self, q_target: np.ndarray, opening: float | None) -> None:
        """Publish arm joint targets (reached in one control period) and a finger opening."""
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Float64MultiArray

        positions = [float(x) for x in q_target]
        if not all(map(math.isfinite, positions)):  # the last line of defence
            raise AssertionError(f"refusing to publish non-finite joint targets {positions}")
        if self.controller == "joint_trajectory":
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

            # A zero header stamp means "start now" to the JointTrajectoryController.
            msg = JointTrajectory(
                joint_names=list(JOINT_NAMES),
                points=[
                    JointTrajectoryPoint(
                        positions=positions, time_from_start=seconds_to_duration(self.dt)
                    )
                ],
            )
        else:
            msg = Float64MultiArray(data=positions)
        # Published serialized when recording, so the bag holds the very bytes on the wire.
        recording = self._recorder is not None
        with self._pub_lock:
            data = serialize_message(msg) if recording else msg
            self._command_pub.publish(data)
            if recording:
                self._record(self.command_topic, data, recorder_now_ns())
            if opening is not None and self._gripper_pub is not None:
                half = 0.5 * float(np.clip(opening, 0.0, GRIPPER_MAX_OPENING))
                fingers = Float64MultiArray(data=[half, half])
                data = serialize_message(fingers) if recording else fingers
                self._gripper_pub.publish(data)
                if recording:
                    self._record(self.topics.gripper_command, data, recorder_now_ns())

    def _hold(self) -> None:
        """Command the arm to stay where it was last measured (the gripper keeps its command)."""
        with self._lock:
            sample = self._latest.get(self.topics.joint_states)
        if sample is not None:
            self._send(sample.value[:7], None)

    # --- observations -----------------------------------------------------------------------

    def _required_topics(self) -> list[str]:
        return [self.topics.joint_states, *self._pose_topics]

    def _snapshot(self) -> dict[str, _Sample]:
        with self._lock:
            self._snapshot_ns = recorder_now_ns()
            return dict(self._latest)

    def _observe(self, samples: Mapping[str, _Sample]) -> dict[str, np.ndarray]:
        joints = samples[self.topics.joint_states].value
        q = joints[:7]
        obs = {
            "joint_pos": q.astype(np.float32),
            "ee_pos": self.ik.fk(q)[0].astype(np.float32),
            "gripper": np.array([joints[7] + joints[8]], dtype=np.float32),
        }
        if self.has_object:
            obs["object_pos"] = samples[self.topics.object_pose].value.astype(np.float32)
        obs["goal_pos"] = samples[self.topics.goal_pose].value.astype(np.float32)
        return obs

    def _ages(self, samples: Mapping[str, _Sample]) -> list[tuple[str, float]]:
        """Seconds since each required topic last delivered (inf if it never did)."""
        now = time.monotonic()
        return [
            (topic, now - samples[topic].received if topic in samples else math.inf)
            for topic in self._watched_topics
        ]

    def _info(self, samples: Mapping[str, _Sample], obs: Mapping[str, np.ndarray]) -> dict:
        stamp = samples[self.topics.joint_states].stamp_ns
        now = self.node.get_clock().now().nanoseconds
        _, success = self.task_class.evaluate(obs)
        return {"success": success, "stamp_ns": stamp, "obs_latency": (now - stamp) * 1e-9}

    def _wait_fresh(self, since: float, since_stamp_ns: int, deadline: float) -> dict:
        """Wait until every required topic delivered after ``since`` (monotonic) with a stamp
        no older than ``since_stamp_ns``; the snapshot, or TimeoutError naming what is missing."""
        while True:
            samples = self._snapshot()
            missing = [
                topic
                for topic in self._required_topics()
                if topic not in samples
                or samples[topic].received <= since
                or samples[topic].stamp_ns < since_stamp_ns
            ]
            if not missing:
                return samples
            if time.monotonic() > deadline:
                with self._lock:
                    problems = {t: self._problems[t] for t in missing if t in self._problems}
                why = "".join(f"; {t}: {p}" for t, p in problems.items())
                raise TimeoutError(
                    f"no fresh message on {missing} within {self.reset_timeout:g} s of reset "
                    f"(is the driver running, in ROS_DOMAIN_ID {self._ros.domain_id}?){why}"
                )
            time.sleep(0.005)

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        reason = self.safety.estop_reason
        if reason is not None:
            raise RuntimeError(
                f"e-stop is latched ({reason}); call "
                f"{self.node.get_fully_qualified_name()}/clear_estop to release it"
            )
        self._end_recorded_episode()
        self._aborted = None
        started = time.monotonic()
        deadline = started + self.reset_timeout
        self._wait_for_controllers(deadline)
        since_stamp = 0
        if self.scene_reset_node is not None:
            self._reset_scene(seed)
            # Messages stamped before the reset returned may describe the previous episode.
            since_stamp = self.node.get_clock().now().nanoseconds
        else:
            self._go_home(deadline + self.home_duration)
        samples = self._wait_fresh(started, since_stamp, deadline + self.home_duration)
        self._obs_ns = self._snapshot_ns
        self._record_safety_events()  # those of the move home
        self.safety.start_episode()
        self._events_seen = len(self.safety.events)
        self._next_tick = time.monotonic()
        self._joints_stamp_ns = samples[self.topics.joint_states].stamp_ns
        obs = self._observe(samples)
        info = self._info(samples, obs)
        info["overrun"] = False
        info["safety_events"] = []
        if self._recorder is not None:
            self._recorder.episode({"event": "start", "seed": seed}, self._obs_ns)
            self._episode = {"event": "end", "seed": seed, "success": info["success"], "steps": 0}
        return obs, info

    def _wait_for_controllers(self, deadline: float) -> None:
        """Wait until the command topics have subscribers: commands sent before the controller
        is matched are lost (and a missing controller would leave the arm uncommanded)."""
        publishers = [(self._command_pub, self.command_topic)]
        if self._gripper_pub is not None:
            publishers.append((self._gripper_pub, self.topics.gripper_command))
        while True:
            unmatched = [topic for pub, topic in publishers if pub.get_subscription_count() == 0]
            if not unmatched:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nobody subscribes to {unmatched} within {self.reset_timeout:g} s: are the "
                    f"controllers active (ros2 control list_controllers), in ROS_DOMAIN_ID "
                    f"{self._ros.domain_id}?"
                )
            time.sleep(0.01)

    def _reset_scene(self, seed: int | None) -> None:
        """Ask the scene reset node for a new episode (seeded when ``seed`` is given)."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import Trigger

        node = self.scene_reset_node
        if seed is not None:
            value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=int(seed))
            request = SetParameters.Request(parameters=[Parameter(name="seed", value=value)])
            response = self._ros.call(
                self._params_client, request, self.reset_timeout, f"setting {node} seed"
            )
            if not response.results[0].successful:
                raise RuntimeError(f"{node} refused seed={seed}: {response.results[0].reason}")
        response = self._ros.call(
            self._reset_client, Trigger.Request(), self.reset_timeout, f"{node}/reset"
        )
        if not response.success:
            raise RuntimeError(f"{node}/reset failed: {response.message}")

    def _go_home(self, deadline: float) -> None:
        """Drive the arm to the home posture at the control rate and open the gripper."""
        samples = self._wait_fresh(-math.inf, 0, deadline)
        start = samples[self.topics.joint_states].value[:7]
        steps = max(1, math.ceil(self.home_duration / self.dt))
        tick = time.monotonic()
        for i in range(1, steps + 1):
            if self.safety.estop_reason is not None:
                raise RuntimeError(f"e-stop during the move home: {self.safety.estop_reason}")
            # Smoothstep interpolation: zero velocity at both ends of the move.
            s = i / steps
            s = s * s * (3 - 2 * s)
            target = self.safety.bound_targets(start, start + s * (HOME_QPOS - start))
            if target is None:
                raise RuntimeError("the move home leaves the safety workspace; move the arm")
            self._send(target, GRIPPER_MAX_OPENING)
            tick += self.dt
            time.sleep(max(0.0, tick - time.monotonic()))
        while True:
            q = self._snapshot()[self.topics.joint_states].value[:7]
            error = float(np.max(np.abs(q - HOME_QPOS)))
            if error <= self.home_tolerance:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the arm did not reach home within {self.home_tolerance} rad "
                    f"(joint error {error:.3f} rad)"
                )
            time.sleep(self.dt)

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._aborted is not None:
            raise RuntimeError(f"the episode was aborted ({self._aborted}); call reset()")
        safety = self.safety
        if self._recorder is not None:
            self._recorder.action(action, self._obs_ns)
        abort = self._command(action)
        if self.sync_to_joint_states:
            overrun = self._wait_for_next_joints()
        else:
            # Fixed rate: sleep to the next tick; after an overrun restart the schedule from
            # now rather than firing a burst of late steps.
            self._next_tick += self.dt
            delay = self._next_tick - time.monotonic()
            overrun = delay < 0
            if overrun:
                self._next_tick = time.monotonic()
            else:
                time.sleep(delay)
        samples = self._snapshot()
        self._joints_stamp_ns = samples[self.topics.joint_states].stamp_ns
        self._obs_ns = self._snapshot_ns
        if abort is None and safety.estop_reason is not None:
            abort = f"estop: {safety.estop_reason}"
        if abort is None:
            abort = safety.check_fresh(self._ages(samples))
        if abort is not None:
            self._hold()
            self._aborted = abort
        obs = self._observe(samples)
        reward, success = self.task_class.evaluate(obs)
        info = self._info(samples, obs)
        info["overrun"] = overrun
        info["safety_events"] = self._record_safety_events()
        if abort is not None:
            info["abort_reason"] = abort
        safety.step_index += 1
        terminated = bool(success and self.terminate_on_success and abort is None)
        if self._episode is not None:
            episode = self._episode
            episode["steps"] += 1
            episode["success"] = bool(episode["success"] or success)
            episode.update(
                terminated=terminated, abort_reason=abort or "", final_reward=float(reward)
            )
            if terminated or abort is not None:
                self._end_recorded_episode()
        return obs, float(reward), terminated, abort is not None, info

    def _wait_for_next_joints(self) -> bool:
        """Wait for the first joint state stamped half a control period or more after the
        current observation's (at most the watchdog timeout, which then judges the stale one);
        whether it had already arrived (the loop is late)."""
        earliest = self._joints_stamp_ns + round(0.5e9 * self.dt)
        topic = self.topics.joint_states

        def arrived() -> bool:
            sample = self._latest.get(topic)
            return sample is not None and sample.stamp_ns >= earliest

        with self._joints_arrived:
            late = arrived()
            self._joints_arrived.wait_for(arrived, self.safety.config.watchdog_timeout)
        return late

    def _record_safety_events(self) -> list[dict[str, Any]]:
        """The safety events since the last call, as dicts, recorded on the safety topic."""
        events = [e.to_dict() for e in self.safety.events_since(self._events_seen)]
        self._events_seen += len(events)
        if self._recorder is not None:
            for event in events:
                self._recorder.safety(event, round(event["wall_time"] * 1e9))
        return events

    def _end_recorded_episode(self) -> None:
        """Record the open episode's end, logged at its last observation's snapshot time; a
        time limit outside the env ends episodes silently, so reset and close call this too."""
        if self._recorder is not None and self._episode is not None:
            self._recorder.episode(self._episode, self._obs_ns)
            self._recorder.flush()  # a finished episode survives a kill
        self._episode = None

    def _command(self, action: np.ndarray) -> str | None:
        """Check the action and publish its command, or hold; an abort reason or ``None``."""
        safety = self.safety
        if safety.estop_reason is not None:
            self._hold()
            return f"estop: {safety.estop_reason}"
        act = safety.check_action(action)
        if act is None:
            self._hold()
            if safety.config.abort_on_invalid_action:
                return "invalid_action: the policy produced a misshaped or non-finite action"
            return None
        q_now = self._snapshot()[self.topics.joint_states].value[:7]
        q_target, opening = self.ik.action_to_targets(q_now, act)
        bounded = safety.bound_targets(q_now, q_target)
        if bounded is None:
            self._hold()
        else:
            self._send(bounded, opening)
        return None

    def close(self) -> None:
        """Shut this env's ROS node down (the arm keeps its last command) and close the bag
        of an attached recorder."""
        self._end_recorded_episode()
        self._ros.close()
        if self._recorder is not None:
            self._recorder.close()


def _tuples(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Config lists (YAML has no tuples) as tuples, for frozen dataclasses."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
