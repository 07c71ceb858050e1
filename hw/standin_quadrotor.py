"""Stand-in quadrotor hardware: a ROS 2 node with a flight controller's odometry out and motor
commands in, simulated in PyBullet (:mod:`sims.pybullet.quadrotor`), the rehearsal for a real
vehicle.

Topics and services:

* publishes the odometry (best effort like PX4's ``/fmu/out`` topics) at ``odometry_hz``
  (100 Hz, PX4's ``vehicle_odometry`` rate), stamped with the measurement time. With the
  ``ros`` interface (:mod:`hw.quadrotor_msgs`): ``/odometry``, ``nav_msgs/Odometry`` in the
  configured frame convention (``enu_flu`` or ``ned_frd``, :mod:`hw.frames`), pose in the world
  frame, twist in the body frame (``nav_msgs`` semantics) or, with ``twist_in_body: false``,
  the linear velocity in the world frame. With ``px4``: ``/fmu/out/vehicle_odometry``,
  ``px4_msgs/VehicleOdometry`` as PX4's estimator sends it (NED, velocity in NED);
* subscribes the motor commands: ``ros``: ``/motor_commands``, ``std_msgs/Float32MultiArray``
  of four setpoints in [0, 1] in the configured order (``policy`` [FR, BR, BL, FL] or ``px4``
  QuadX); ``px4``: ``/fmu/in/actuator_motors``, ``px4_msgs/ActuatorMotors``, obeyed only while
  the ``OffboardControlMode`` heartbeat with ``direct_actuator`` (``/fmu/in/
  offboard_control_mode``) is fresher than ``offboard_timeout``, as PX4 obeys them only in
  offboard mode (a command without it stops the motors). Setpoints are clipped, a NaN stops
  its motor (PX4's convention), and the last command is held;
* serves ``~/reset`` (``std_srvs/Trigger``): a new episode from the ``initial_state``
  parameter when it is set (17 numbers ``[p, q (w, x, y, z), v, omega_body, motors]`` in
  ENU/FLU), else drawn exactly as ``robolearn/Quadrotor-v0`` draws it (``init``) for the seed in
  the ``seed`` parameter; both are consumed. Motors hold their initial state until the first
  command, so a deployment's episodes start where the simulated ones of the same seeds start.

Imperfections, all configurable: measurement-to-delivery latency with uniform jitter, command
latency, Gaussian noise on position, attitude, velocity and body rates, and parameter offsets
(mass, inertia, thrust curve, yaw torque constant, motor time constants;
:class:`~sims.pybullet.quadrotor.QuadrotorPhysics`).

Run it on its own with ``python -m hw.standin_quadrotor --vehicle x500`` (``--help``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hw.frames import (
    ENU_FLU,
    MOTOR_ORDERS,
    check_convention,
    policy_frame_to_odometry,
    quat_multiply,
)
from hw.quadrotor_msgs import (
    PX4,
    ROS,
    QuadrotorTopics,
    check_interface,
    import_px4_msgs,
    message_types,
    px4_odometry,
    read_motor_command,
)
from hw.ros import ns_to_stamp, sensor_qos
from hw.standin import StandIn, config_from_mapping, standin_config, standin_main

#: Initial-state distributions of ``robolearn/Quadrotor-v0`` the reset draws from.
INITS = ("raptor", "hover", "motors_off")


@dataclasses.dataclass(frozen=True)
class StandInQuadrotorConfig:
    """Configuration of the stand-in quadrotor.

    Attributes:
        vehicle: ``"crazyflie"`` or ``"x500"``, the preset of :mod:`sims.quadrotor.params`.
        node_name: The node's name (its reset service is ``/<node_name>/reset``).
        odometry_hz: Rate of the odometry (a measurement per tick of the physics loop).
        physics_hz: Rate of the PyBullet steps (a multiple of ``odometry_hz``).
        interface: The driver's messages: ``"ros"`` or ``"px4"`` (module docstring).
        frame: ``ros``: frame convention of the odometry, ``"enu_flu"`` or ``"ned_frd"``.
        twist_in_body: ``ros``: linear velocity in the body frame (``nav_msgs/Odometry``), else
            in the world frame.
        command_order: ``ros``: motor order of the commands, ``"policy"`` or ``"px4"``.
        offboard_timeout: ``px4``: seconds a heartbeat keeps the motor commands obeyed.
        init: Initial-state distribution of seeded resets (as ``robolearn/Quadrotor-v0``'s).
        latency: Seconds from a measurement to its delivery.
        jitter: Extra delivery delay, uniform in ``[0, jitter]`` seconds (order is kept).
        command_latency: Seconds from a command's arrival to its effect.
        position_noise: Standard deviation of the position noise (m).
        attitude_noise: Standard deviation of the attitude noise, a small rotation (rad).
        velocity_noise: Standard deviation of the velocity noise (m/s).
        angular_velocity_noise: Standard deviation of the body-rate noise (rad/s).
        seed: Seed of the noise and of episodes reset without a seed.
        physics: Mapping of :class:`~sims.pybullet.quadrotor.QuadrotorPhysics` fields.
        odometry_topic: Published odometry topic (``None``: the interface's default).
        command_topic: Subscribed motor command topic (``None``: the interface's default).
        offboard_topic: ``px4``: the subscribed offboard heartbeat topic.
        world_frame_id: ``header.frame_id`` of the odometry.
        body_frame_id: ``child_frame_id`` of the odometry.
    """

    vehicle: str = "crazyflie"
    node_name: str = "standin_quadrotor"
    odometry_hz: float = 100.0
    physics_hz: float = 400.0
    interface: str = ROS
    frame: str = ENU_FLU
    twist_in_body: bool = True
    command_order: str = "policy"
    offboard_timeout: float = 0.5
    init: str = "raptor"
    latency: float = 0.003
    jitter: float = 0.002
    command_latency: float = 0.002
    position_noise: float = 0.001
    attitude_noise: float = 0.002
    velocity_noise: float = 0.005
    angular_velocity_noise: float = 0.01
    seed: int = 0
    physics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    odometry_topic: str | None = None
    command_topic: str | None = None
    offboard_topic: str = QuadrotorTopics.offboard_control_mode
    world_frame_id: str = "odom"
    body_frame_id: str = "base_link"

    def __post_init__(self) -> None:
        from sims.quadrotor.params import PRESETS

        if self.vehicle not in PRESETS:
            raise ValueError(f"standin.vehicle must be one of {PRESETS}, got {self.vehicle!r}")
        check_interface(self.interface, "standin.interface")
        check_convention(self.frame, "standin.frame")
        if self.command_order not in MOTOR_ORDERS:
            raise ValueError(
                f"standin.command_order must be one of {MOTOR_ORDERS}, got {self.command_order!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"standin.init must be one of {INITS}, got {self.init!r}")
        if not (math.isfinite(self.odometry_hz) and self.odometry_hz > 0):
            raise ValueError(f"standin.odometry_hz must be positive, got {self.odometry_hz}")
        ratio = self.physics_hz / self.odometry_hz
        if not (ratio >= 1 and abs(ratio - round(ratio)) < 1e-9):
            raise ValueError(
                f"standin.physics_hz {self.physics_hz} must be a multiple of "
                f"standin.odometry_hz {self.odometry_hz}"
            )
        for name in (
            "latency",
            "jitter",
            "command_latency",
            "offboard_timeout",
            "position_noise",
            "attitude_noise",
            "velocity_noise",
            "angular_velocity_noise",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"standin.{name} must be >= 0, got {value}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StandInQuadrotorConfig:
        """Build from a (YAML / JSON) mapping; unknown keys raise."""
        return config_from_mapping(cls, values)


def sample_initial_state(vehicle: str, init: str, seed: int) -> np.ndarray:
    """The 17-D initial state ``robolearn/Quadrotor-v0`` (``params=vehicle``, ``init``) starts
    from when reset with ``seed``: the same generator and the same sampler."""
    from gymnasium.utils.seeding import np_random

    from sims.quadrotor.env import QuadrotorBatch

    batch = QuadrotorBatch(1, params=vehicle, init=init)
    batch.reset(np.zeros(1, dtype=np.int64), [np_random(seed)[0]])
    return batch.state[0].double().numpy()


class StandInQuadrotor(StandIn):
    """The stand-in quadrotor node with its PyBullet vehicle, running in this process (see
    :class:`~hw.standin.StandIn`; the physics thread steps the vehicle and publishes odometry
    at ``odometry_hz``). :func:`main` runs one as a process.

    Args:
        config: A :class:`StandInQuadrotorConfig` or a mapping of its fields.
        domain_id: ROS domain; ``None`` reads ``ROS_DOMAIN_ID``.
    """

    def __init__(
        self,
        config: StandInQuadrotorConfig | Mapping[str, Any] | None = None,
        domain_id: int | None = None,
    ) -> None:
        from sims.pybullet.quadrotor import PyBulletQuadrotor, QuadrotorPhysics, Vehicle

        config = standin_config(StandInQuadrotorConfig, config)
        physics = QuadrotorPhysics(**config.physics)
        self.vehicle = Vehicle.from_preset(config.vehicle, physics)
        self.quad = PyBulletQuadrotor(self.vehicle, physics.timestep)
        super().__init__(config, config.odometry_hz, "standin-quad")
        self._substeps = max(1, round(1.0 / (config.odometry_hz * physics.timestep)))
        self._start(
            domain_id,
            lambda: self._reset_vehicle(sample_initial_state(config.vehicle, "hover", 0), None),
        )

    # --- ROS wiring -------------------------------------------------------------------------

    def _setup_node(self, node: Any) -> None:
        from rcl_interfaces.msg import ParameterDescriptor
        from std_srvs.srv import Trigger

        from hw.recorder import ros_type_name

        cfg = self.config
        topics = QuadrotorTopics(cfg.odometry_topic, cfg.command_topic).resolved(cfg.interface)
        odometry_type, command_type = message_types(cfg.interface)
        self._command_type = ros_type_name(command_type)
        self._heartbeat_at: float | None = None  # monotonic arrival of the last heartbeat
        node.declare_parameter("seed", -1)
        node.declare_parameter(
            "initial_state",
            [0.0],
            ParameterDescriptor(description="17 numbers [p, q, v, omega, motors]; [0.0] = none"),
        )
        self._odom_pub = node.create_publisher(odometry_type, topics.odometry, sensor_qos())
        # Best effort hears both kinds of publisher; only the newest command matters.
        node.create_subscription(
            command_type, topics.command, self._on_command, sensor_qos(depth=1)
        )
        if cfg.interface == PX4:
            node.create_subscription(
                import_px4_msgs().OffboardControlMode,
                cfg.offboard_topic,
                self._on_heartbeat,
                sensor_qos(depth=1),
            )
        node.create_service(Trigger, "~/reset", self._on_reset)

    def _on_heartbeat(self, msg: Any) -> None:
        if msg.direct_actuator:
            self._heartbeat_at = time.monotonic()

    def _in_offboard(self) -> bool:
        """Whether PX4 would obey motor commands now (the ``ros`` interface always does)."""
        if self.config.interface != PX4:
            return True
        at = self._heartbeat_at
        return at is not None and time.monotonic() - at < self.config.offboard_timeout

    def _on_command(self, msg: Any) -> None:
        setpoint = read_motor_command(msg, self._command_type, self.config.command_order)
        if setpoint is None:
            self.node.get_logger().error("motor command of the wrong size or infinite; ignored")
            return
        if not self._in_offboard():
            self.node.get_logger().warning(
                "motor command without a fresh OffboardControlMode heartbeat: motors stopped",
                throttle_duration_sec=1.0,
            )
            setpoint = np.zeros(4)

        def apply() -> None:
            with self._lock:
                self.quad.set_command(setpoint)

        self._apply_later(apply)

    def _on_reset(self, request: Any, response: Any) -> Any:
        from rclpy.parameter import Parameter

        state = np.asarray(self.node.get_parameter("initial_state").value, dtype=np.float64)
        seed = int(self.node.get_parameter("seed").value)
        # Both are consumed: a reset without new ones draws a fresh episode.
        self.node.set_parameters(
            [
                Parameter("seed", Parameter.Type.INTEGER, -1),
                Parameter("initial_state", Parameter.Type.DOUBLE_ARRAY, [0.0]),
            ]
        )
        if state.size > 1:
            if state.shape != (17,) or not np.all(np.isfinite(state)):
                response.success = False
                response.message = f"initial_state must be 17 finite numbers, got {state.size}"
                return response
            self._reset_vehicle(state, None)
            response.message = "episode from the given initial state"
        else:
            if seed < 0:
                seed = int(self._rng.integers(2**31))
            cfg = self.config
            self._reset_vehicle(sample_initial_state(cfg.vehicle, cfg.init, seed), seed)
            response.message = f"episode seed {seed}"
        response.success = True
        return response

    # --- simulation -------------------------------------------------------------------------

    def _reset_vehicle(self, state: np.ndarray, seed: int | None) -> None:
        self._inbox.clear()  # commands of the previous episode must not reach this one
        with self._lock:
            self.quad.reset(state)
            self.episode_seed = seed

    def _step_physics(self) -> np.ndarray:
        self.quad.step(self._substeps)
        return self.quad.state()

    def _publish(self, stamp_ns: int, state: np.ndarray) -> None:
        """Queue the odometry of ``state`` for delivery after the link latency."""
        cfg, rng = self.config, self._rng
        p, q, v, w = state[0:3], state[3:7], state[7:10], state[10:13]
        if cfg.position_noise:
            p = p + rng.normal(0.0, cfg.position_noise, 3)
        if cfg.attitude_noise:
            half = 0.5 * rng.normal(0.0, cfg.attitude_noise, 3)
            q = quat_multiply(q, np.concatenate([[1.0], half]))
            q = q / np.linalg.norm(q)
        if cfg.velocity_noise:
            v = v + rng.normal(0.0, cfg.velocity_noise, 3)
        if cfg.angular_velocity_noise:
            w = w + rng.normal(0.0, cfg.angular_velocity_noise, 3)
        if cfg.interface == PX4:
            msg = px4_odometry(np.concatenate([p, q, v, w]), stamp_ns)
            self._deliver(lambda: self._odom_pub.publish(msg))
            return
        from nav_msgs.msg import Odometry

        p, q, v, w = policy_frame_to_odometry(p, q, v, w, cfg.frame, cfg.twist_in_body)
        msg = Odometry()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.header.frame_id = cfg.world_frame_id
        msg.child_frame_id = cfg.body_frame_id
        pose, twist = msg.pose.pose, msg.twist.twist
        pose.position.x, pose.position.y, pose.position.z = (float(x) for x in p)
        o = pose.orientation
        o.w, o.x, o.y, o.z = (float(x) for x in q)
        twist.linear.x, twist.linear.y, twist.linear.z = (float(x) for x in v)
        twist.angular.x, twist.angular.y, twist.angular.z = (float(x) for x in w)
        self._deliver(lambda: self._odom_pub.publish(msg))

    # --- lifecycle --------------------------------------------------------------------------

    def state(self) -> np.ndarray:
        """The simulated 17-D state (ENU/FLU, without noise), for tests and tools."""
        with self._lock:
            return self.quad.state()

    def _close_simulation(self) -> None:
        self.quad.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in quadrotor until SIGINT or SIGTERM."""
    return standin_main(
        argv,
        StandInQuadrotor,
        StandInQuadrotorConfig,
        ("vehicle", ["crazyflie", "x500"]),
        '{"frame": "ned_frd", "physics": {"mass_scale": 1.1}}',
        lambda config: (
            f"quadrotor ({config.vehicle}, "
            f"{'px4_msgs' if config.interface == PX4 else config.frame})"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
