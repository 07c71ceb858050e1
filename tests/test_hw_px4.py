"""PX4's own ROS 2 interface (px4_msgs): message conversions against hand-computed cases, the
bag type store, and the env and the stand-in speaking VehicleOdometry, ActuatorMotors and the
OffboardControlMode heartbeat over real rclpy on loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.hw_fixtures import closing, needs_rclpy, ros_domain, wait_until  # noqa: F401

pytestmark = needs_rclpy

pytest.importorskip("px4_msgs", reason="px4_msgs is built by ./setup.sh (hw/px4_msgs/build.sh)")
pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")

from px4_msgs.msg import ActuatorMotors, OffboardControlMode, VehicleOdometry  # noqa: E402

from hw.quadrotor_env import ROS2QuadrotorEnv  # noqa: E402
from hw.quadrotor_msgs import (  # noqa: E402
    PX4,
    PX4_MOTORS,
    PX4_ODOMETRY,
    motor_command,
    px4_odometry,
    read_motor_command,
    read_odometry,
    register_px4_types,
)
from hw.ros import RosRuntime, command_qos  # noqa: E402
from hw.standin_quadrotor import StandInQuadrotor  # noqa: E402

X500_HOVER = 0.554965710288149
#: An x500 at its target (world ENU), level, at rest, motors at hover.
HOVER = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, *[X500_HOVER] * 4], dtype=float)
QUIET = {"position_noise": 0.0, "attitude_noise": 0.0, "velocity_noise": 0.0}
#: Yawed 90 degrees left (ENU/FLU), moving north-east and up, rolling right.
YAWED = np.array([1.0, 2.0, 3.0, np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4), 0.5, 1.0, -0.2])


def test_vehicle_odometry_in_ned_reads_back_as_the_enu_state():
    state = np.concatenate([YAWED, [0.1, 0.0, 0.3]])  # body rates, FLU
    msg = px4_odometry(state, stamp_ns=1_234_567_000)
    # By hand: NED position (y, x, -z), NED velocity, FRD rates (x, -y, -z).
    np.testing.assert_allclose(msg.position, [2.0, 1.0, -3.0])
    np.testing.assert_allclose(msg.velocity, [1.0, 0.5, 0.2])
    np.testing.assert_allclose(msg.angular_velocity, [0.1, 0.0, -0.3])
    assert msg.timestamp == msg.timestamp_sample == 1_234_567
    back, stamp_ns, problem = read_odometry(msg, PX4_ODOMETRY)
    assert problem == "" and stamp_ns == 1_234_567_000
    np.testing.assert_allclose(back, state, atol=1e-6)


def test_vehicle_odometry_with_body_frame_velocity_and_unknown_frames():
    # Yawed 90 degrees left in ENU = heading east in NED: flying forward is flying east.
    msg = px4_odometry(np.concatenate([YAWED[:7], [0.0, 0.0, 0.0], [0.0] * 3]), stamp_ns=0)
    msg.velocity_frame = VehicleOdometry.VELOCITY_FRAME_BODY_FRD
    msg.velocity = np.array([1.0, 0.0, 0.0], dtype=np.float32)  # forward, FRD
    state, _, problem = read_odometry(msg, PX4_ODOMETRY)
    assert problem == ""
    # ENU: forward for a vehicle yawed 90 degrees left of east is north (+y).
    np.testing.assert_allclose(state[7:10], [0.0, 1.0, 0.0], atol=1e-6)
    msg.velocity_frame = VehicleOdometry.VELOCITY_FRAME_UNKNOWN
    state, _, problem = read_odometry(msg, PX4_ODOMETRY)
    assert state is None and "velocity_frame 0 is unknown" in problem
    msg.velocity_frame = VehicleOdometry.VELOCITY_FRAME_NED
    msg.q = np.array([np.nan, 0, 0, 0], dtype=np.float32)  # PX4's "attitude invalid"
    state, _, problem = read_odometry(msg, PX4_ODOMETRY)
    assert state is None and "non-finite" in problem


def test_actuator_motors_quadx_slots_nan_stops_and_timestamps():
    setpoint = np.array([0.1, 0.2, 0.3, 0.4])  # policy order [FR, BR, BL, FL]
    msg = motor_command(PX4, setpoint, now_ns=5_000_000_999, sample_ns=4_990_000_000)
    # QuadX: motor 1 front-right, 2 back-left, 3 front-left, 4 back-right.
    np.testing.assert_allclose(msg.control[:4], [0.1, 0.3, 0.4, 0.2], atol=1e-7)
    assert np.all(np.isnan(msg.control[4:]))
    assert (msg.timestamp, msg.timestamp_sample, msg.reversible_flags) == (5_000_000, 4_990_000, 0)
    np.testing.assert_allclose(read_motor_command(msg, PX4_MOTORS), setpoint, atol=1e-7)
    cut = motor_command(PX4, None)
    assert np.all(np.isnan(cut.control))
    np.testing.assert_array_equal(read_motor_command(cut, PX4_MOTORS), np.zeros(4))


def test_px4_messages_go_through_the_bag_type_store():
    from rclpy.serialization import serialize_message

    from robolearn.data.rosbag import BagMessage

    register_px4_types()
    state = np.concatenate([YAWED, [0.1, 0.0, 0.3]])
    wire = serialize_message(px4_odometry(state, stamp_ns=42_000))
    decoded = BagMessage("/fmu/out/vehicle_odometry", PX4_ODOMETRY, 0, wire).decode()
    back, stamp_ns, _ = read_odometry(decoded, PX4_ODOMETRY)
    np.testing.assert_allclose(back, state, atol=1e-6)
    assert stamp_ns == 42_000
    wire = serialize_message(motor_command(PX4, np.array([0.1, 0.2, 0.3, 0.4])))
    decoded = BagMessage("/fmu/in/actuator_motors", PX4_MOTORS, 0, wire).decode()
    np.testing.assert_allclose(read_motor_command(decoded, PX4_MOTORS), [0.1, 0.2, 0.3, 0.4])


def test_env_refuses_ros_conventions_with_the_px4_interface(ros_domain):  # noqa: F811
    with pytest.raises(ValueError, match=r"px4 interface fixes .* leave \['frame'\] unset"):
        ROS2QuadrotorEnv(interface=PX4, frame="ned_frd", domain_id=ros_domain)


class Px4Spy:
    """A separate participant: keeps ActuatorMotors and heartbeats, and can send motor commands
    with or without a heartbeat of its own."""

    def __init__(self, domain: int) -> None:
        self.runtime = RosRuntime(domain)
        self.node = self.runtime.create_node("px4_spy")
        self.motors: list[tuple[float, np.ndarray]] = []
        self.heartbeats: list[float] = []
        self._lock = threading.Lock()
        qos = command_qos(depth=1000)
        self.node.create_subscription(ActuatorMotors, "/fmu/in/actuator_motors", self._on, qos)
        self.node.create_subscription(
            OffboardControlMode, "/fmu/in/offboard_control_mode", self._on_heartbeat, qos
        )

    def _on(self, msg) -> None:
        with self._lock:
            self.motors.append((time.monotonic(), np.asarray(msg.control, dtype=float)))

    def _on_heartbeat(self, msg) -> None:
        if msg.direct_actuator:
            with self._lock:
                self.heartbeats.append(time.monotonic())

    def since(self, t: float) -> list[np.ndarray]:
        with self._lock:
            return [control for arrived, control in self.motors if arrived >= t]

    def close(self) -> None:
        self.runtime.close()


def test_standin_obeys_motor_commands_only_with_the_offboard_heartbeat(ros_domain, closing):  # noqa: F811
    standin = closing(
        StandInQuadrotor({"vehicle": "x500", "interface": PX4, **QUIET}, domain_id=ros_domain)
    )
    node = closing(RosRuntime(ros_domain)).create_node("pilot")
    motors = node.create_publisher(ActuatorMotors, "/fmu/in/actuator_motors", command_qos())
    heartbeat = node.create_publisher(
        OffboardControlMode, "/fmu/in/offboard_control_mode", command_qos()
    )
    wait_until(lambda: motors.get_subscription_count() >= 1, 10.0, "the stand-in to match")

    def send_for(seconds: float, with_heartbeat: bool) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if with_heartbeat:
                heartbeat.publish(OffboardControlMode(direct_actuator=True))
            motors.publish(motor_command(PX4, np.full(4, 0.8)))
            time.sleep(0.01)

    # No heartbeat: PX4 is not in offboard mode, so the commands stop the motors.
    send_for(0.6, with_heartbeat=False)
    assert np.all(standin.state()[13:] < 0.2), standin.state()[13:]
    # With it: the motors spin up towards the commanded 0.8.
    send_for(0.6, with_heartbeat=True)
    assert np.all(standin.state()[13:] > 0.7), standin.state()[13:]


def test_env_streams_the_heartbeat_and_cuts_with_nan(ros_domain, closing):  # noqa: F811
    from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy

    pytest.importorskip("foundation_policy", reason="the released RAPTOR policy")
    closing(StandInQuadrotor({"vehicle": "x500", "interface": PX4, **QUIET}, domain_id=ros_domain))
    spy = closing(Px4Spy(ros_domain))
    env = closing(
        ROS2QuadrotorEnv(
            vehicle="x500",
            interface=PX4,
            scene_reset_node="/standin_quadrotor",
            sync_to_odometry=True,
            terminate_on_velocity=False,
            safety={"safe_command": "cut"},
            domain_id=ros_domain,
        )
    )
    policy = ReleasedRaptorPolicy()
    policy.reset(1)
    obs, _ = env.reset(options={"initial_state": HOVER})
    started = time.monotonic()
    errors = []
    for _ in range(100):
        obs, _, terminated, truncated, info = env.step(policy.act(obs[None])[0])
        assert not (terminated or truncated), info
        errors.append(info["position_error"])
    # One second of hover under the released policy, through PX4's messages (measured 1.6-2.0 cm
    # over the last half second on a quiet machine).
    assert np.mean(errors[-50:]) < 0.06, errors[-50:]
    flying = spy.since(started)
    assert len(flying) >= 50
    for control in flying:  # motors 1-4 in [0, 1], the unused slots NaN (disarmed)
        assert np.all((control[:4] >= 0) & (control[:4] <= 1)) and np.all(np.isnan(control[4:]))
    assert np.mean([control[:4] for control in flying]) > 0.4  # carrying the x500 (hover 0.55)
    assert sum(t >= started for t in spy.heartbeats) >= 7  # 10 Hz for one second
    _, _, _, truncated, info = env.step(np.array([np.nan, 0, 0, 0], dtype=np.float32))
    assert truncated and info["abort_reason"].startswith("invalid_action")
    aborted = time.monotonic()
    wait_until(lambda: len(spy.since(aborted)) >= 3, 5.0, "the streamed cut")
    assert all(np.all(np.isnan(c)) for c in spy.since(aborted))
