"""A quadrotor over ROS 2: a ``gymnasium.Env`` with the spaces, observation, reward and
termination of ``robolearn/Quadrotor-v0`` (:mod:`sims.quadrotor.env`), backed by a flight
controller's odometry and motor topics instead of the torch simulator.

Two driver interfaces (:mod:`hw.quadrotor_msgs`): ``ros`` reads ``nav_msgs/Odometry``
(``/odometry``) in a configurable frame convention (:mod:`hw.frames`: ``enu_flu``, ROS's world
ENU / body FLU, or ``ned_frd``, PX4's world NED / body FRD), the linear velocity in the body
frame (``nav_msgs`` semantics: twist in ``child_frame_id``) or, with ``twist_in_body=False``, in
the world frame, and publishes the motor setpoints ``u = (a + 1) / 2`` of actions ``a`` in
[-1, 1] as ``std_msgs/Float32MultiArray`` (``/motor_commands``) in the policy's [FR, BR, BL, FL]
order or PX4's QuadX order (``command_order``). ``px4`` speaks PX4's own topics:
``px4_msgs/VehicleOdometry`` (``/fmu/out/vehicle_odometry``, frames as each message states),
``px4_msgs/ActuatorMotors`` (``/fmu/in/actuator_motors``, QuadX, NaN = motor stopped) and the
``OffboardControlMode`` heartbeat (``direct_actuator``) at 10 Hz for as long as the env is
open; switching the vehicle into offboard mode and arming it stay with the pilot. Odometry is
subscribed best effort, so best-effort (PX4) and reliable publishers are both heard. Everything
is converted to ENU/FLU and the policy's 22-D input is built by the same
:func:`~robolearn.robots.quadrotor.raptor_observation` as in simulation: position error to
``target`` and velocity error (clipped to +-0.5 m and +-1 m/s), rotation matrix, body rates,
and the previous action.

``step`` runs at the control rate (100 Hz, as the policy was trained; ``control_hz`` changes
it): it publishes, sleeps until the next tick, then reads the freshest odometry; with
``sync_to_odometry`` the odometry paces the loop instead (as the arm's
``sync_to_joint_states``). ``info`` carries ``success`` and ``position_error`` (as in
simulation), ``stamp_ns`` (the odometry's header stamp; PX4's: its ``timestamp_sample``, on
PX4's clock), ``obs_latency`` (ROS time now minus that stamp: meaningful for PX4 only when its
clock is synchronised with this computer's), ``overrun``, ``safety_events`` and, when the
safety layer ended the episode, ``abort_reason`` (the episode is then truncated, not
terminated).

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

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hw.frames import (
    ENU_FLU,
    MOTOR_ORDERS,
    POLICY_ORDER,
    action_to_setpoint,
    check_convention,
    quat_to_rotation,
)
from hw.quadrotor_msgs import (
    HEARTBEAT_HZ,
    PX4,
    ROS,
    QuadrotorTopics,
    check_interface,
    import_px4_msgs,
    message_types,
    motor_command,
    offboard_heartbeat,
    read_odometry,
    register_px4_types,
)
from hw.ros import command_qos
from hw.ros_env import RosEnv, Sample, as_config
from hw.safety import QuadrotorSafety, QuadrotorSafetyConfig
from robolearn.robots.quadrotor import (
    CLIP_POSITION,
    CLIP_VELOCITY,
    OBSERVATION_DIM,
    QUADROTOR_SPEC,
    raptor_observation,
)


class ROS2QuadrotorEnv(RosEnv):
    """A quadrotor on ROS 2 (or the stand-in hardware node, :mod:`hw.standin_quadrotor`).

    Args:
        vehicle: ``"crazyflie"`` or ``"x500"``: the preset whose arm length sets the
            simulator's termination bound (20 arm lengths from the target) and whose thrust
            curve sets the ``land`` command's setpoint.
        interface: The driver's messages, ``"ros"`` or ``"px4"`` (module docstring).
        frame: ``ros`` interface: frame convention of the odometry, ``"enu_flu"`` (default) or
            ``"ned_frd"``. The ``px4`` interface fixes it (leave it ``None``), as it fixes the
            velocity frame and the motor order.
        twist_in_body: ``ros`` interface: read the odometry's linear velocity in the body frame
            (``nav_msgs``, the default), else in the world frame.
        command_order: ``ros`` interface: motor order of the published commands, ``"policy"``
            (default) or ``"px4"``.
        target: Position (m, world ENU) the policy holds; ``reset(options={"target": ...})``
            changes it for an episode.
        topics: A :class:`~hw.quadrotor_msgs.QuadrotorTopics` or a mapping of its fields;
            unset names take the interface's defaults.
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
        realtime_priority: SCHED_FIFO priority (1-99) for the control loop's thread (the one
            that creates the env) and the env's ROS threads; ``None`` leaves scheduling alone
            (see :class:`hw.ros_env.RosEnv`).
    """

    metadata = {"render_modes": [], "render_fps": int(QUADROTOR_SPEC.control_hz)}

    def __init__(
        self,
        vehicle: str = "crazyflie",
        interface: str = ROS,
        frame: str | None = None,
        twist_in_body: bool | None = None,
        command_order: str | None = None,
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
        realtime_priority: int | None = None,
    ) -> None:
        from sims.pybullet.quadrotor import Vehicle
        from sims.quadrotor.params import PRESETS, TERMINATION_ARMS

        if vehicle not in PRESETS:
            raise ValueError(f"vehicle must be one of {PRESETS}, got {vehicle!r}")
        self.interface = check_interface(interface)
        if self.interface == PX4:
            given = [
                name
                for name, value in (
                    ("frame", frame),
                    ("twist_in_body", twist_in_body),
                    ("command_order", command_order),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"the px4 interface fixes the frames and the motor order: leave {given} unset"
                )
            register_px4_types()  # a recorder writes px4_msgs into its bag
        self.frame = check_convention(frame or ENU_FLU)
        self.twist_in_body = True if twist_in_body is None else bool(twist_in_body)
        self.command_order = command_order or POLICY_ORDER
        if self.command_order not in MOTOR_ORDERS:
            raise ValueError(
                f"command_order must be one of {MOTOR_ORDERS}, got {self.command_order!r}"
            )
        self.target = _position(target, "target")
        self.topics = as_config(QuadrotorTopics, topics).resolved(self.interface)
        super().__init__(
            QUADROTOR_SPEC,
            control_hz=control_hz,
            reset_timeout=reset_timeout,
            scene_reset_node=scene_reset_node,
            pacing_topic=self.topics.odometry,
            sync_to_pacing_topic=sync_to_odometry,
            realtime_priority=realtime_priority,
        )
        self.vehicle = vehicle
        self.sync_to_odometry = sync_to_odometry
        self.clip_observation = clip_observation
        self.terminate_on_velocity = terminate_on_velocity
        numbers = Vehicle.from_preset(vehicle)
        arm = float(np.max(np.linalg.norm(numbers.rotor_positions[:, :2], axis=1)))
        self._max_position = TERMINATION_ARMS * arm
        config = as_config(QuadrotorSafetyConfig, safety)
        self.safety = QuadrotorSafety(
            config, numbers.setpoint_for_thrust(config.land_thrust), log_path=safety_log
        )
        # The simulated twin's spaces, built the same way.
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

        self._ended: str | None = None  # why the episode ended (abort reason or "terminated")
        self._safe_since: float | None = None  # monotonic start of the safe command stream
        self._episode_target = self.target.copy()
        self._prev_action = np.zeros(4, dtype=np.float32)
        self._last_setpoint = np.zeros(4)
        self._last_stamp_ns = 0  # of the newest observation: ActuatorMotors.timestamp_sample
        self._start_node(node_name, domain_id)

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_topics(self, node: Any) -> None:
        from hw.recorder import ros_type_name

        odometry_type, command_type = message_types(self.interface)
        self._odometry_type = ros_type_name(odometry_type)
        self._subscribe(odometry_type, self.topics.odometry, self._on_odometry)
        self._required_topics = self._watched_topics = [self.topics.odometry]
        self._command_pub = node.create_publisher(command_type, self.topics.command, command_qos())
        # Streams the safe command while one is engaged (PX4 drops out of offboard without a
        # steady stream, and a held last policy command is not safe).
        node.create_timer(self.dt, self._publish_safe)
        if self.interface == PX4:
            heartbeat = node.create_publisher(
                import_px4_msgs().OffboardControlMode,
                self.topics.offboard_control_mode,
                command_qos(),
            )
            node.create_timer(
                1.0 / HEARTBEAT_HZ,
                lambda: heartbeat.publish(offboard_heartbeat(self._now_ns())),
            )

    def _recorded_topics(self) -> list[tuple[str, type]]:
        odometry_type, command_type = message_types(self.interface)
        return [(self.topics.odometry, odometry_type), (self.topics.command, command_type)]

    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_odometry(self, msg: Any, data: bytes) -> None:
        # The value: [p, q (w, x, y, z), v, omega] in ENU/FLU, the velocity in the world frame.
        state, stamp_ns, problem = read_odometry(
            msg, self._odometry_type, self.frame, self.twist_in_body
        )
        if state is None:
            self._drop(self.topics.odometry, problem, data)
            return
        self._accept(self.topics.odometry, Sample(state, stamp_ns, time.monotonic()), data)

    def _engage_estop(self) -> str:
        self._engage_safe_command()
        return f"safe command '{self.safety.config.safe_command}' engaged"

    # --- commands ---------------------------------------------------------------------------

    def _send(self, setpoint: np.ndarray, from_policy: bool) -> None:
        """Publish motor setpoints (policy order, [0, 1]) in the configured order; policy
        commands only while no safe command is engaged (an e-stop from another thread wins over
        a step about to publish), safe commands only while one is."""
        # A safe command of all zeros is a cut: None stops PX4's motors (NaN), where 0 would
        # leave them idling armed.
        cut = not from_policy and not np.any(setpoint)
        msg = motor_command(
            self.interface,
            None if cut else setpoint,
            self.command_order,
            # Only ActuatorMotors carries timestamps: no clock read on the ros interface's path.
            now_ns=self._now_ns() if self.interface == PX4 else 0,
            sample_ns=self._last_stamp_ns,
        )
        with self._pub_lock:
            # A policy command after a safe command was engaged, or a safe command (from the
            # timer) after reset released it: neither may go out.
            if (self._safe_since is not None) == from_policy:
                return
            self._publish(self._command_pub, self.topics.command, msg)
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

    def _observe(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The 22-D observation and the position error (world ENU); the sample's stamp is what
        the next command answers."""
        self._last_stamp_ns = sample.stamp_ns
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

    def _info(self, sample: Sample, distance: float, terminated: bool) -> dict[str, Any]:
        from sims.quadrotor.env import SUCCESS_DISTANCE

        now = self.node.get_clock().now().nanoseconds
        return {
            "success": bool(not terminated and distance < SUCCESS_DISTANCE),
            "position_error": distance,
            "stamp_ns": sample.stamp_ns,
            "obs_latency": (now - sample.stamp_ns) * 1e-9,
        }

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options`` may hold ``target`` (m, world ENU) and, with a scene
        reset node, ``initial_state`` (17 numbers ``[p, q, v, omega_body, motors]``, ENU/FLU)."""
        super().reset(seed=seed)
        options = dict(options or {})
        self._check_estop_released()
        self._end_recorded_episode()
        started = time.monotonic()
        deadline = started + self.reset_timeout
        self._wait_for_subscribers(
            [(self._command_pub, self.topics.command)], deadline, "is the driver running"
        )
        since_stamp = 0
        if self.scene_reset_node is not None:
            since_stamp = self._reset_scene(_episode_parameters(seed, options.get("initial_state")))
        elif options.get("initial_state") is not None:
            raise ValueError("options['initial_state'] needs a scene reset node (the stand-in)")
        samples = self._wait_fresh(started, since_stamp, deadline)
        self._use_observation(samples)
        sample = samples[self.topics.odometry]
        self._episode_target = _position(options.get("target", self.target), "target")
        self._prev_action = np.zeros(4, dtype=np.float32)
        self._start_safety_episode()
        position = sample.value[:3]
        if self.safety.check_position(position) is not None:
            self._record_safety_events()
            raise RuntimeError(f"the vehicle is outside the workspace at reset ({position})")
        with self._pub_lock:
            self._safe_since = None  # a new episode: the policy commands again
        self._ended = None
        obs, p_err = self._observe(sample)
        info = self._info(sample, float(np.linalg.norm(p_err)), terminated=False)
        self._open_episode(info, seed, target=self._episode_target.tolist())
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._ended is not None:
            raise RuntimeError(f"the episode ended ({self._ended}); call reset()")
        self._begin_step(action)
        prev = np.clip(self._prev_action, -1.0, 1.0)
        abort = self._command(action)
        overrun = self._wait_for_tick()
        samples = self._snapshot()
        self._use_observation(samples)
        sample = samples[self.topics.odometry]
        if abort is None:
            abort = self._safety_abort(samples)
        if abort is None:
            abort = self.safety.check_position(sample.value[:3])
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
        self._finish_step(
            info,
            overrun=overrun,
            abort=abort,
            terminated=terminated,
            reward=reward,
            position_error=distance,
        )
        return obs, reward, terminated, abort is not None, info

    def close(self) -> None:
        """Run the safe command to its end (``land`` takes ``land_duration``), then shut the
        node down and close the bag of an attached recorder (idempotent)."""
        if not self._closed and self._command_pub.get_subscription_count() > 0:
            self._engage_safe_command()
            config = self.safety.config
            if config.safe_command == "land":
                # The executor's timer streams the descent; the last message cuts the motors.
                time.sleep(max(0.0, self._safe_since + config.land_duration - time.monotonic()))
            self._publish_safe()
        super().close()


def _episode_parameters(seed: int | None, initial_state: Any) -> dict[str, Any]:
    """The scene reset node's parameters of an episode: from ``initial_state`` if given, else
    from ``seed`` (a fresh draw when ``None``)."""
    if initial_state is not None:
        state = np.asarray(initial_state, dtype=np.float64).reshape(-1)
        if state.shape != (17,) or not np.all(np.isfinite(state)):
            raise ValueError(f"initial_state must be 17 finite numbers, got {state.size}")
        return {"initial_state": state.tolist()}
    return {} if seed is None else {"seed": int(seed)}


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
