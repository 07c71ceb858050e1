"""A quadrotor over ROS 2: a ``gymnasium.Env`` with the spaces, observation, reward and
termination of ``robolearn/Quadrotor-v0`` (:mod:`sims.quadrotor.env`), backed by a flight
controller's odometry and motor topics instead of the torch simulator.

Observations come from ``nav_msgs/Odometry`` (``/odometry``, subscribed best effort so that
PX4-style best-effort and reliable publishers are both heard). The frame convention is
configurable (:mod:`hw.frames`): ``enu_flu`` (ROS: world ENU, body FLU) or ``ned_frd`` (PX4:
world NED, body FRD); the linear velocity is read in the body frame (``nav_msgs`` semantics:
twist in ``child_frame_id``) or, with ``twist_in_body=False``, in the world frame (PX4's
``VehicleOdometry``). Everything is converted to ENU/FLU and the policy's 22-D input is built by
the same :func:`~robolearn.robots.quadrotor.raptor_observation` as in simulation: position error
to ``target`` and velocity error (clipped to +-0.5 m and +-1 m/s), rotation matrix, body rates,
and the previous action.

Actions ``a`` in [-1, 1] become motor setpoints ``u = (a + 1) / 2`` published as
``std_msgs/Float32MultiArray`` (``/motor_commands``) in the policy's [FR, BR, BL, FL] order or
PX4's QuadX order (``command_order``), which is what PX4's ``ActuatorMotors.control`` carries for
non-reversible motors. Publishing ``px4_msgs/ActuatorMotors`` itself, with the
``OffboardControlMode`` heartbeat (``direct_actuator``) PX4 requires, needs the ``px4_msgs``
package, which has no PyPI wheel: a bridge node from this topic, or the same publisher with
:func:`hw.frames.px4_actuator_controls` where ``px4_msgs`` is built, is the next step.

``step`` runs at the control rate (100 Hz, as the policy was trained; ``control_hz`` changes
it): it publishes, sleeps until the next tick, then reads the freshest odometry; with
``sync_to_odometry`` the odometry paces the loop instead (as the arm's
``sync_to_joint_states``). ``info`` carries ``success`` and ``position_error`` (as in
simulation), ``stamp_ns`` (the odometry's header stamp), ``obs_latency`` (ROS time now minus
that stamp), ``overrun``, ``safety_events`` and, when the safety layer ended the episode,
``abort_reason`` (the episode is then truncated, not terminated).

Safety (:class:`~hw.safety.QuadrotorSafety`): NaN, inf or misshaped actions are never
published; actions are clipped to [-1, 1]; the watchdog (no fresh odometry within
``watchdog_timeout``), a position outside the workspace box and the e-stop service
(``~/estop``, ``std_srvs/Trigger``) end the episode. Whenever an episode ends by an abort or by
the simulator's termination (the vehicle too far, too fast or spinning too fast), the env
streams the safe command (``cut`` or ``land``) at the control rate until the next ``reset``;
``close`` runs the safe command to its end. Between an episode cut short by a time limit and the
next reset, the vehicle keeps its last command.
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

from hw.frames import (
    ENU_FLU,
    MOTOR_ORDERS,
    action_to_setpoint,
    check_convention,
    odometry_to_policy_frame,
    quat_to_rotation,
    reorder,
)
from hw.recorder import TopicRecorder
from hw.recorder import now_ns as recorder_now_ns
from hw.ros import RosRuntime, command_qos, sensor_qos, stamp_to_ns
from hw.safety import QuadrotorSafety, QuadrotorSafetyConfig
from robolearn.robots.quadrotor import (
    CLIP_POSITION,
    CLIP_VELOCITY,
    OBSERVATION_DIM,
    QUADROTOR_SPEC,
    raptor_observation,
)

logger = logging.getLogger("hw.quadrotor_env")


@dataclasses.dataclass(frozen=True)
class QuadrotorTopics:
    """Topic names of the quadrotor driver.

    Attributes:
        odometry: ``nav_msgs/Odometry`` of the vehicle.
        command: ``std_msgs/Float32MultiArray`` of the four motor setpoints in [0, 1].
    """

    odometry: str = "/odometry"
    command: str = "/motor_commands"


@dataclasses.dataclass
class _Sample:
    """The newest odometry: ``value`` is ``[p, q (w, x, y, z), v, omega]`` in ENU/FLU, with the
    velocity in the world frame."""

    value: np.ndarray
    stamp_ns: int
    received: float  # time.monotonic() at arrival


class ROS2QuadrotorEnv(gym.Env):
    """A quadrotor on ROS 2 (or the stand-in hardware node, :mod:`hw.standin_quadrotor`).

    Args:
        vehicle: ``"crazyflie"`` or ``"x500"``: the preset whose arm length sets the
            simulator's termination bound (20 arm lengths from the target) and whose thrust
            curve sets the ``land`` command's setpoint.
        frame: Frame convention of the odometry, ``"enu_flu"`` or ``"ned_frd"``.
        twist_in_body: Read the odometry's linear velocity in the body frame (``nav_msgs``),
            else in the world frame (PX4's ``VehicleOdometry``).
        command_order: Motor order of the published commands, ``"policy"`` or ``"px4"``.
        target: Position (m, world ENU) the policy holds; ``reset(options={"target": ...})``
            changes it for an episode.
        topics: A :class:`QuadrotorTopics` or a mapping of its fields.
        safety: A :class:`~hw.safety.QuadrotorSafetyConfig` or a mapping of its fields.
        scene_reset_node: A node serving ``<node>/reset`` (``std_srvs/Trigger``) with ``seed``
            and ``initial_state`` parameters, called by ``reset`` (the stand-in does this);
            ``None`` on a real vehicle, where ``reset`` only waits for fresh odometry (start
            episodes with the vehicle hovering under its autopilot; the first step takes over).
        node_name: Name of this env's ROS node (its e-stop services live under it).
        domain_id: ROS domain; ``None`` reads ``ROS_DOMAIN_ID``.
        reset_timeout: Seconds ``reset`` waits for the driver.
        control_hz: Control rate in Hz; ``None`` keeps the policy's 100 Hz.
        sync_to_odometry: Pace the loop by the odometry: each step waits for the first message
            stamped at least half a control period after the previous observation's (for at
            most the watchdog timeout), so observations are one link latency old.
        clip_observation: Clip the position and velocity errors (as the deployed RAPTOR
            policy expects, and as ``robolearn/Quadrotor-v0`` does by default).
        terminate_on_velocity: Also terminate on |v_i| > 2 m/s or |omega_i| > 35 rad/s, as
            the simulator does.
        safety_log: JSON-lines file that every safety event is appended to.
    """

    metadata = {"render_modes": [], "render_fps": int(QUADROTOR_SPEC.control_hz)}

    def __init__(
        self,
        vehicle: str = "crazyflie",
        frame: str = ENU_FLU,
        twist_in_body: bool = True,
        command_order: str = "policy",
        target: tuple[float, float, float] | list[float] = (0.0, 0.0, 0.0),
        topics: QuadrotorTopics | Mapping[str, Any] | None = None,
        safety: QuadrotorSafetyConfig | Mapping[str, Any] | None = None,
        scene_reset_node: str | None = None,
        node_name: str = "robolearn_quadrotor",
        domain_id: int | None = None,
        reset_timeout: float = 10.0,
        control_hz: float | None = None,
        sync_to_odometry: bool = False,
        clip_observation: bool = True,
        terminate_on_velocity: bool = True,
        safety_log: str | Path | None = None,
    ) -> None:
        from sims.pybullet.quadrotor import Vehicle
        from sims.quadrotor.params import PRESETS, TERMINATION_ARMS

        if vehicle not in PRESETS:
            raise ValueError(f"vehicle must be one of {PRESETS}, got {vehicle!r}")
        self.frame = check_convention(frame)
        if command_order not in MOTOR_ORDERS:
            raise ValueError(f"command_order must be one of {MOTOR_ORDERS}, got {command_order!r}")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be positive, got {reset_timeout!r}")
        if control_hz is not None and not (math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {control_hz!r}")
        self.target = _position(target, "target")
        if isinstance(topics, Mapping):
            topics = QuadrotorTopics(**topics)
        if isinstance(safety, Mapping):
            safety = QuadrotorSafetyConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in safety.items()}
            )
        self.vehicle = vehicle
        self.twist_in_body = bool(twist_in_body)
        self.command_order = command_order
        self.topics = topics or QuadrotorTopics()
        self.scene_reset_node = scene_reset_node
        self.reset_timeout = float(reset_timeout)
        self.sync_to_odometry = sync_to_odometry
        self.clip_observation = clip_observation
        self.terminate_on_velocity = terminate_on_velocity
        spec = QUADROTOR_SPEC
        if control_hz is not None:
            spec = dataclasses.replace(spec, control_hz=float(control_hz))
            self.metadata = {**self.metadata, "render_fps": int(round(control_hz))}
        self.robot_spec = spec
        self.dt = spec.dt
        numbers = Vehicle.from_preset(vehicle)
        arm = float(np.max(np.linalg.norm(numbers.rotor_positions[:, :2], axis=1)))
        self._max_position = TERMINATION_ARMS * arm
        config = safety or QuadrotorSafetyConfig()
        self.safety = QuadrotorSafety(
            config, numbers.setpoint_for_thrust(config.land_thrust), log_path=safety_log
        )
        # The simulated twin's spaces, built the same way.
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

        self._lock = threading.Lock()
        self._odometry_arrived = threading.Condition(self._lock)
        self._pub_lock = threading.Lock()
        self._latest: _Sample | None = None
        self._problem: str | None = None  # why the last odometry was dropped
        self._ended: str | None = None  # why the episode ended (abort reason or "terminated")
        self._safe_since: float | None = None  # monotonic start of the safe command stream
        self._events_seen = 0
        self._next_tick = 0.0
        self._stamp_ns = 0  # header stamp of the current observation's odometry
        self._episode_target = self.target.copy()
        self._prev_action = np.zeros(4, dtype=np.float32)
        self._last_setpoint = np.zeros(4)
        self._recorder: TopicRecorder | None = None
        self._snapshot_ns = 0
        self._obs_ns = 0
        self._episode: dict[str, Any] | None = None
        self._closed = False

        self._ros = RosRuntime(domain_id)
        try:
            self._setup_node(node_name)
        except BaseException:
            self._ros.close()
            raise

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_node(self, node_name: str) -> None:
        from nav_msgs.msg import Odometry
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import Float32MultiArray
        from std_srvs.srv import Trigger

        node = self._ros.create_node(node_name)
        self.node = node
        # Raw subscription: the recorder keeps the exact wire bytes.
        node.create_subscription(
            Odometry,
            self.topics.odometry,
            lambda data: self._on_odometry(deserialize_message(data, Odometry), data),
            sensor_qos(),
            raw=True,
        )
        self._command_pub = node.create_publisher(
            Float32MultiArray, self.topics.command, command_qos()
        )
        node.create_service(Trigger, "~/estop", self._on_estop)
        node.create_service(Trigger, "~/clear_estop", self._on_clear_estop)
        # Streams the safe command while one is engaged (PX4 drops out of offboard without a
        # steady stream, and a held last policy command is not safe).
        node.create_timer(self.dt, self._publish_safe)
        self._reset_client = self._params_client = None
        if self.scene_reset_node is not None:
            from rcl_interfaces.srv import SetParameters

            base = self.scene_reset_node.rstrip("/")
            self._reset_client = node.create_client(Trigger, f"{base}/reset")
            self._params_client = node.create_client(SetParameters, f"{base}/set_parameters")

    def attach_recorder(self, recorder: TopicRecorder) -> None:
        """Record this env's odometry, motor commands, actions, episodes and safety events."""
        from nav_msgs.msg import Odometry
        from std_msgs.msg import Float32MultiArray

        recorder.add_topic(self.topics.odometry, Odometry)
        recorder.add_topic(self.topics.command, Float32MultiArray)
        self._recorder = recorder

    def _on_odometry(self, msg: Any, data: bytes) -> None:
        pose, twist = msg.pose.pose, msg.twist.twist
        o = pose.orientation
        raw = np.array(
            [
                pose.position.x,
                pose.position.y,
                pose.position.z,
                o.w,
                o.x,
                o.y,
                o.z,
                twist.linear.x,
                twist.linear.y,
                twist.linear.z,
                twist.angular.x,
                twist.angular.y,
                twist.angular.z,
            ]
        )
        problem = None
        if not np.all(np.isfinite(raw)):
            problem = f"non-finite odometry {raw.round(3).tolist()}"
        elif not np.linalg.norm(raw[3:7]) > 0.5:
            problem = f"orientation {raw[3:7].tolist()} is not a unit quaternion"
        log_ns = recorder_now_ns()
        if problem is not None:
            with self._lock:
                if self._problem != problem:
                    logger.warning("dropped a message on %s: %s", self.topics.odometry, problem)
                self._problem = problem
            self._record(self.topics.odometry, data, log_ns)
            return
        p, q, v, w = odometry_to_policy_frame(
            raw[0:3], raw[3:7], raw[7:10], raw[10:13], self.frame, self.twist_in_body
        )
        sample = _Sample(
            np.concatenate([p, q / np.linalg.norm(q), v, w]),
            stamp_to_ns(msg.header.stamp),
            time.monotonic(),
        )
        with self._lock:
            # Log time under the lock that makes it the newest sample (see hw.arm_env).
            self._record(self.topics.odometry, data, recorder_now_ns())
            self._latest = sample
            self._problem = None
            self._odometry_arrived.notify_all()

    def _record(self, topic: str, data: bytes, log_ns: int) -> None:
        if self._recorder is not None:
            self._recorder.write(topic, data, log_ns)

    def _on_estop(self, request: Any, response: Any) -> Any:
        self.safety.trigger_estop("e-stop service called")
        self._engage_safe_command()
        response.success = True
        response.message = (
            f"e-stop latched: safe command '{self.safety.config.safe_command}' engaged; "
            "call clear_estop to release"
        )
        return response

    def _on_clear_estop(self, request: Any, response: Any) -> Any:
        self.safety.clear_estop()
        response.success = True
        response.message = "e-stop cleared"
        return response

    # --- commands ---------------------------------------------------------------------------

    def _send(self, setpoint: np.ndarray, from_policy: bool) -> None:
        """Publish motor setpoints (policy order, [0, 1]) in the configured order; policy
        commands only while no safe command is engaged (an e-stop from another thread wins over
        a step about to publish), safe commands only while one is."""
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Float32MultiArray

        values = reorder(np.clip(setpoint, 0.0, 1.0), self.command_order)
        msg = Float32MultiArray(data=[float(x) for x in values])
        recording = self._recorder is not None
        with self._pub_lock:
            # A policy command after a safe command was engaged, or a safe command (from the
            # timer) after reset released it: neither may go out.
            if (self._safe_since is not None) == from_policy:
                return
            data = serialize_message(msg) if recording else msg
            self._command_pub.publish(data)
            if recording:
                self._record(self.topics.command, data, recorder_now_ns())
            self._last_setpoint = np.asarray(setpoint, dtype=np.float64)

    def _engage_safe_command(self) -> None:
        """Start streaming the safe command (no-op when it already runs)."""
        with self._pub_lock:
            if self._safe_since is None:
                self._safe_since = time.monotonic()
        self._publish_safe()

    def _publish_safe(self) -> None:
        """Send the safe command of this moment, if one is engaged (also the timer callback)."""
        since = self._safe_since
        if since is not None:
            self._send(self.safety.safe_setpoint(time.monotonic() - since), from_policy=False)

    def _command(self, action: np.ndarray) -> str | None:
        """Check the action and publish its motor command; an abort reason or ``None``."""
        safety = self.safety
        if safety.estop_reason is not None:
            return f"estop: {safety.estop_reason}"
        act = safety.check_action(action)
        if act is None:
            if safety.config.abort_on_invalid_action:
                return "invalid_action: the policy produced a misshaped or non-finite action"
            # Keep the stream alive with the previous command; the observation keeps the
            # previous valid action (a NaN fed back would poison a recurrent policy).
            self._send(self._last_setpoint, from_policy=True)
            return None
        # The observation feeds back the raw action, as in simulation.
        self._prev_action = np.asarray(action, dtype=np.float32).copy()
        self._send(action_to_setpoint(act), from_policy=True)
        return None

    # --- observations -----------------------------------------------------------------------

    def _snapshot(self) -> _Sample | None:
        with self._lock:
            self._snapshot_ns = recorder_now_ns()
            return self._latest

    def _observe(self, sample: _Sample) -> tuple[np.ndarray, np.ndarray]:
        """The 22-D observation and the position error (world ENU)."""
        p, q, v, w = np.split(sample.value, [3, 7, 10])
        p_err = p - self._episode_target
        obs = raptor_observation(
            p_err,
            quat_to_rotation(q),
            v,
            w,
            self._prev_action.astype(np.float64),
            clip_position=CLIP_POSITION if self.clip_observation else None,
            clip_velocity=CLIP_VELOCITY if self.clip_observation else None,
        )
        return obs.astype(np.float32), p_err

    def _info(self, sample: _Sample, distance: float, terminated: bool) -> dict[str, Any]:
        from sims.quadrotor.env import SUCCESS_DISTANCE

        now = self.node.get_clock().now().nanoseconds
        return {
            "success": bool(not terminated and distance < SUCCESS_DISTANCE),
            "position_error": distance,
            "stamp_ns": sample.stamp_ns,
            "obs_latency": (now - sample.stamp_ns) * 1e-9,
        }

    def _wait_fresh(self, since: float, since_stamp_ns: int, deadline: float) -> _Sample:
        """Wait for an odometry message received after ``since`` (monotonic) and stamped at or
        after ``since_stamp_ns``; it, or TimeoutError saying what is wrong."""
        while True:
            sample = self._snapshot()
            if sample is not None and sample.received > since and sample.stamp_ns >= since_stamp_ns:
                return sample
            if time.monotonic() > deadline:
                why = f"; {self._problem}" if self._problem else ""
                raise TimeoutError(
                    f"no fresh message on ['{self.topics.odometry}'] within "
                    f"{self.reset_timeout:g} s of reset (is the driver running, in "
                    f"ROS_DOMAIN_ID {self._ros.domain_id}?){why}"
                )
            time.sleep(0.002)

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options`` may hold ``target`` (m, world ENU) and, with a scene
        reset node, ``initial_state`` (17 numbers ``[p, q, v, omega_body, motors]``, ENU/FLU)."""
        super().reset(seed=seed)
        options = dict(options or {})
        reason = self.safety.estop_reason
        if reason is not None:
            raise RuntimeError(
                f"e-stop is latched ({reason}); call "
                f"{self.node.get_fully_qualified_name()}/clear_estop to release it"
            )
        self._end_recorded_episode()
        started = time.monotonic()
        deadline = started + self.reset_timeout
        self._wait_for_driver(deadline)
        since_stamp = 0
        if self.scene_reset_node is not None:
            self._reset_scene(seed, options.get("initial_state"))
            # Messages stamped before the reset returned describe the previous episode.
            since_stamp = self.node.get_clock().now().nanoseconds
        elif options.get("initial_state") is not None:
            raise ValueError("options['initial_state'] needs a scene reset node (the stand-in)")
        sample = self._wait_fresh(started, since_stamp, deadline)
        self._obs_ns = self._snapshot_ns
        self._episode_target = _position(options.get("target", self.target), "target")
        self._prev_action = np.zeros(4, dtype=np.float32)
        self._record_safety_events()
        self.safety.start_episode()
        self._events_seen = len(self.safety.events)
        position = sample.value[:3]
        if self.safety.check_position(position) is not None:
            self._record_safety_events()
            raise RuntimeError(f"the vehicle is outside the workspace at reset ({position})")
        with self._pub_lock:
            self._safe_since = None  # a new episode: the policy commands again
        self._ended = None
        self._next_tick = time.monotonic()
        self._stamp_ns = sample.stamp_ns
        obs, p_err = self._observe(sample)
        distance = float(np.linalg.norm(p_err))
        info = self._info(sample, distance, terminated=False)
        info["overrun"] = False
        info["safety_events"] = []
        if self._recorder is not None:
            event = {"event": "start", "seed": seed, "target": self._episode_target.tolist()}
            self._recorder.episode(event, self._obs_ns)
            self._episode = {"event": "end", "seed": seed, "success": info["success"], "steps": 0}
        return obs, info

    def _wait_for_driver(self, deadline: float) -> None:
        """Wait until the command topic has a subscriber: commands sent before the driver is
        matched are lost."""
        while self._command_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nobody subscribes to ['{self.topics.command}'] within "
                    f"{self.reset_timeout:g} s: is the driver running, in ROS_DOMAIN_ID "
                    f"{self._ros.domain_id}?"
                )
            time.sleep(0.01)

    def _reset_scene(self, seed: int | None, initial_state: Any) -> None:
        """Ask the scene reset node for a new episode: from ``initial_state`` if given, else
        from ``seed`` (a fresh draw when ``None``)."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import Trigger

        node = self.scene_reset_node
        parameters = []
        if initial_state is not None:
            state = np.asarray(initial_state, dtype=np.float64).reshape(-1)
            if state.shape != (17,) or not np.all(np.isfinite(state)):
                raise ValueError(f"initial_state must be 17 finite numbers, got {state.size}")
            value = ParameterValue(
                type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=state.tolist()
            )
            parameters.append(Parameter(name="initial_state", value=value))
        elif seed is not None:
            value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=int(seed))
            parameters.append(Parameter(name="seed", value=value))
        if parameters:
            response = self._ros.call(
                self._params_client,
                SetParameters.Request(parameters=parameters),
                self.reset_timeout,
                f"setting {node} parameters",
            )
            for result in response.results:
                if not result.successful:
                    raise RuntimeError(f"{node} refused the episode parameters: {result.reason}")
        response = self._ros.call(
            self._reset_client, Trigger.Request(), self.reset_timeout, f"{node}/reset"
        )
        if not response.success:
            raise RuntimeError(f"{node}/reset failed: {response.message}")

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._ended is not None:
            raise RuntimeError(f"the episode ended ({self._ended}); call reset()")
        safety = self.safety
        if self._recorder is not None:
            self._recorder.action(action, self._obs_ns)
        prev = np.clip(self._prev_action, -1.0, 1.0)
        abort = self._command(action)
        if self.sync_to_odometry:
            overrun = self._wait_for_next_odometry()
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
        sample = self._snapshot()
        assert sample is not None  # reset waited for one
        self._stamp_ns = sample.stamp_ns
        self._obs_ns = self._snapshot_ns
        if abort is None and safety.estop_reason is not None:
            abort = f"estop: {safety.estop_reason}"
        if abort is None:
            abort = safety.check_fresh([(self.topics.odometry, time.monotonic() - sample.received)])
        if abort is None:
            abort = safety.check_position(sample.value[:3])
        obs, p_err = self._observe(sample)
        d_action = float(np.linalg.norm(np.clip(self._prev_action, -1.0, 1.0) - prev))
        reward, terminated = teacher_reward(
            sample.value, p_err, d_action, self._max_position, self.terminate_on_velocity
        )
        distance = float(np.linalg.norm(p_err))
        terminated = terminated and abort is None
        if abort is not None or terminated:
            self._engage_safe_command()
            self._ended = abort or "terminated"
        info = self._info(sample, distance, terminated)
        info["overrun"] = overrun
        info["safety_events"] = self._record_safety_events()
        if abort is not None:
            info["abort_reason"] = abort
        safety.step_index += 1
        if self._episode is not None:
            episode = self._episode
            episode["steps"] += 1
            episode["success"] = bool(episode["success"] or info["success"])
            episode.update(
                terminated=terminated,
                abort_reason=abort or "",
                final_reward=reward,
                position_error=distance,
            )
            if terminated or abort is not None:
                self._end_recorded_episode()
        return obs, reward, terminated, abort is not None, info

    def _wait_for_next_odometry(self) -> bool:
        """Wait for the first odometry stamped half a control period or more after the current
        observation's (at most the watchdog timeout, which then judges the stale one); whether
        it had already arrived (the loop is late)."""
        earliest = self._stamp_ns + round(0.5e9 * self.dt)

        def arrived() -> bool:
            return self._latest is not None and self._latest.stamp_ns >= earliest

        with self._odometry_arrived:
            late = arrived()
            self._odometry_arrived.wait_for(arrived, self.safety.config.watchdog_timeout)
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
        """Record the open episode's end at its last observation's snapshot time."""
        if self._recorder is not None and self._episode is not None:
            self._recorder.episode(self._episode, self._obs_ns)
            self._recorder.flush()  # a finished episode survives a kill
        self._episode = None

    def close(self) -> None:
        """Run the safe command to its end (``land`` takes ``land_duration``), shut this env's
        ROS node down and close the bag of an attached recorder (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._end_recorded_episode()
        if self._command_pub.get_subscription_count() > 0:
            self._engage_safe_command()
            config = self.safety.config
            if config.safe_command == "land":
                # The executor's timer streams the descent; the last message cuts the motors.
                time.sleep(max(0.0, self._safe_since + config.land_duration - time.monotonic()))
            self._publish_safe()
        self._ros.close()
        if self._recorder is not None:
            self._recorder.close()


def teacher_reward(
    state: np.ndarray,
    p_err: np.ndarray,
    d_action: float,
    max_position: float,
    terminate_on_velocity: bool,
) -> tuple[float, bool]:
    """RAPTOR's teacher-MDP reward and termination of one step, as
    :func:`sims.quadrotor.env.teacher_reward` computes them (a test holds the two equal): numpy
    for one vehicle, since the batched torch version costs a millisecond per call.

    Args:
        state: ``[p, q (w, x, y, z), v, omega_body]`` in ENU/FLU (finite).
        p_err: Position error (3,), m.
        d_action: Norm of the change of the clipped action.
        max_position: Per-axis bound on the position error, m.
        terminate_on_velocity: Also terminate on the velocity and body-rate bounds.
    """
    from sims.quadrotor.env import (
        ACTION_CHANGE_WEIGHT,
        MAX_ANGULAR_VELOCITY,
        MAX_VELOCITY,
        ORIENTATION_WEIGHT,
        TERMINATION_REWARD,
    )

    terminated = bool(np.any(np.abs(p_err) > max_position))
    if terminate_on_velocity:
        terminated |= bool(np.any(np.abs(state[7:10]) > MAX_VELOCITY))
        terminated |= bool(np.any(np.abs(state[10:13]) > MAX_ANGULAR_VELOCITY))
    if terminated:
        return TERMINATION_REWARD, True
    # The quaternion's z component, as the reference states the formula (see sims.quadrotor).
    orientation = math.acos(min(max(1.0 - abs(float(state[6])), -1.0), 1.0))
    cost = (
        float(np.linalg.norm(p_err))
        + ORIENTATION_WEIGHT * orientation
        + ACTION_CHANGE_WEIGHT * d_action
    )
    return 1.5 - cost, False


def _position(value: Any, name: str) -> np.ndarray:
    position = np.asarray(value, dtype=np.float64).reshape(-1)
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise ValueError(f"{name} must be 3 finite numbers (m, world ENU), got {value!r}")
    return position
