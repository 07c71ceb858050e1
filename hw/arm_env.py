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
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hw.joints import JointNameMap, MissingJointsError
from hw.ros import command_qos, seconds_to_duration, stamp_to_ns
from hw.ros_env import RosEnv, Sample, as_config
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


class ROS2ArmEnv(RosEnv):
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
        realtime_priority: SCHED_FIFO priority (1-99) for the control loop's thread (the one
            that creates the env) and the env's ROS threads; ``None`` leaves scheduling alone
            (see :class:`hw.ros_env.RosEnv`).
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
        realtime_priority: int | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {sorted(CONTROLLERS)}, got {controller!r}")
        if home_duration < 0 or home_tolerance <= 0:
            raise ValueError("home_tolerance must be positive and home_duration >= 0")
        self.topics = as_config(ArmTopics, topics)
        super().__init__(
            PANDA_YAW_SPEC if use_yaw else PANDA_SPEC,
            control_hz=control_hz,
            reset_timeout=reset_timeout,
            scene_reset_node=scene_reset_node,
            pacing_topic=self.topics.joint_states,
            sync_to_pacing_topic=sync_to_joint_states,
            realtime_priority=realtime_priority,
        )
        self.task = task
        self.task_class = TASKS[task]
        self.controller = controller
        self.command_topic = self.topics.command or CONTROLLERS[controller]
        self.home_duration = float(home_duration)
        self.home_tolerance = float(home_tolerance)
        self.pose_frames = tuple(pose_frames)
        self.terminate_on_success = terminate_on_success
        self.sync_to_joint_states = sync_to_joint_states
        self.ik = ArmIK(use_yaw=use_yaw)
        self.safety = ArmSafety(as_config(ArmSafetyConfig, safety), self.ik, log_path=safety_log)
        self.has_object = self.task_class.has_object
        self.observation_space = observation_space(self.has_object)
        self.action_space = action_space(use_yaw)
        self._joint_map = JointNameMap(JOINT_NAMES + FINGER_JOINT_NAMES)
        self._aborted: str | None = None
        self._start_node(node_name, domain_id)

    # --- ROS wiring -------------------------------------------------------------------------

    def _command_type(self) -> type:
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        return JointTrajectory if self.controller == "joint_trajectory" else Float64MultiArray

    def _setup_topics(self, node: Any) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        topics = self.topics
        self._subscribe(JointState, topics.joint_states, self._on_joints)
        # The watchdog watches the measurements; the goal may legitimately be published slowly.
        self._watched_topics = [topics.joint_states]
        self._pose_topics = [topics.goal_pose]
        if self.has_object:
            self._pose_topics.append(topics.object_pose)
            self._watched_topics.append(topics.object_pose)
        self._required_topics = [topics.joint_states, *self._pose_topics]
        for topic in self._pose_topics:
            self._subscribe(
                PoseStamped, topic, lambda msg, data, t=topic: self._on_pose(t, msg, data)
            )
        self._command_pub = node.create_publisher(
            self._command_type(), self.command_topic, command_qos()
        )
        self._gripper_pub = None
        if topics.gripper_command is not None:
            self._gripper_pub = node.create_publisher(
                Float64MultiArray, topics.gripper_command, command_qos()
            )

    def _recorded_topics(self) -> list[tuple[str, type]]:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        recorded = [(self.topics.joint_states, JointState)]
        recorded += [(topic, PoseStamped) for topic in self._pose_topics]
        recorded.append((self.command_topic, self._command_type()))
        if self.topics.gripper_command is not None:
            recorded.append((self.topics.gripper_command, Float64MultiArray))
        return recorded

    def _on_joints(self, msg: Any, data: bytes) -> None:
        topic = self.topics.joint_states
        try:
            positions = self._joint_map.pick(msg.name, msg.position)
        except (MissingJointsError, ValueError) as err:
            self._drop(topic, str(err), data)
            return
        self._accept(
            topic, Sample(positions, stamp_to_ns(msg.header.stamp), time.monotonic()), data
        )

    def _on_pose(self, topic: str, msg: Any, data: bytes) -> None:
        frame = msg.header.frame_id
        if frame and frame not in self.pose_frames:
            self._drop(topic, f"frame {frame!r} is not one of {list(self.pose_frames)}", data)
            return
        p = msg.pose.position
        sample = Sample(np.array([p.x, p.y, p.z]), stamp_to_ns(msg.header.stamp), time.monotonic())
        self._accept(topic, sample, data)

    def _engage_estop(self) -> str:
        self._hold()
        return "the arm holds"

    # --- commands ---------------------------------------------------------------------------

    def _send(self, q_target: np.ndarray, opening: float | None) -> None:
        """Publish arm joint targets (reached in one control period) and a finger opening."""
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
        with self._pub_lock:
            self._publish(self._command_pub, self.command_topic, msg)
            if opening is not None and self._gripper_pub is not None:
                half = 0.5 * float(np.clip(opening, 0.0, GRIPPER_MAX_OPENING))
                fingers = Float64MultiArray(data=[half, half])
                self._publish(self._gripper_pub, self.topics.gripper_command, fingers)

    def _hold(self) -> None:
        """Command the arm to stay where it was last measured (the gripper keeps its command)."""
        with self._lock:
            sample = self._latest.get(self.topics.joint_states)
        if sample is not None:
            self._send(sample.value[:7], None)

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

    # --- observations -----------------------------------------------------------------------

    def _observe(self, samples: Mapping[str, Sample]) -> dict[str, np.ndarray]:
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

    def _info(self, samples: Mapping[str, Sample], success: bool) -> dict[str, Any]:
        stamp = samples[self.topics.joint_states].stamp_ns
        now = self.node.get_clock().now().nanoseconds
        return {"success": success, "stamp_ns": stamp, "obs_latency": (now - stamp) * 1e-9}

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._check_estop_released()
        self._end_recorded_episode()
        self._aborted = None
        started = time.monotonic()
        deadline = started + self.reset_timeout
        publishers = [(self._command_pub, self.command_topic)]
        if self._gripper_pub is not None:
            publishers.append((self._gripper_pub, self.topics.gripper_command))
        # A missing controller would leave the arm uncommanded.
        self._wait_for_subscribers(
            publishers,
            deadline,
            "are the controllers active (ros2 control list_controllers)",
        )
        since_stamp = 0
        if self.scene_reset_node is not None:
            since_stamp = self._reset_scene({} if seed is None else {"seed": int(seed)})
        else:
            self._go_home(deadline + self.home_duration)
        samples = self._wait_fresh(started, since_stamp, deadline + self.home_duration)
        self._use_observation(samples)
        self._start_safety_episode()  # after the events of the move home
        obs = self._observe(samples)
        info = self._info(samples, self.task_class.evaluate(obs)[1])
        self._open_episode(info, seed)
        return obs, info

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
        self._begin_step(action)
        abort = self._command(action)
        overrun = self._wait_for_tick()
        samples = self._snapshot()
        self._use_observation(samples)
        if abort is None:
            abort = self._safety_abort(samples)
        if abort is not None:
            self._hold()
            self._aborted = abort
        obs = self._observe(samples)
        reward, success = self.task_class.evaluate(obs)
        terminated = bool(success and self.terminate_on_success and abort is None)
        info = self._info(samples, success)
        self._finish_step(info, overrun=overrun, abort=abort, terminated=terminated, reward=reward)
        return obs, float(reward), terminated, abort is not None, info
