"""The quadrotor's ROS 2 messages, for both driver interfaces robolearn speaks.

* ``ros``: ``nav_msgs/Odometry`` in, four motor setpoints in [0, 1] out as
  ``std_msgs/Float32MultiArray``; the frame convention, the velocity's frame and the motor order
  are configured (:mod:`hw.frames`).
* ``px4``: PX4's own uXRCE-DDS topics (reference: quadrotor_sims_and_ros2.md section 8).
  ``px4_msgs/VehicleOdometry`` in (``/fmu/out/vehicle_odometry``, NED world / FRD body, each
  message saying which frame its velocity is in, time in microseconds), ``px4_msgs/
  ActuatorMotors`` out (``/fmu/in/actuator_motors``: ``control[12]``, motors 1-4 of the QuadX
  airframe in slots 0-3, NaN = stopped) and the ``px4_msgs/OffboardControlMode`` heartbeat with
  ``direct_actuator`` set (``/fmu/in/offboard_control_mode``), which PX4 needs at >= 2 Hz to
  enter and stay in offboard mode.

The functions read and write both rclpy messages and the ``rosbags`` dataclasses a bag decodes
to (their fields have the same names), so the env, the stand-in and the log importer share one
conversion. ``px4_msgs`` has no PyPI wheel: ``./setup.sh`` builds the messages of
``hw/px4_msgs`` into the venv (:func:`import_px4_msgs` says what to do when they are missing).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from hw.frames import (
    NED_FRD,
    odometry_to_policy_frame,
    policy_frame_to_odometry,
    px4_actuator_controls,
    px4_to_policy,
    reorder,
    to_policy_order,
)
from hw.ros import stamp_to_ns

ROS, PX4 = "ros", "px4"
INTERFACES = (ROS, PX4)
#: Message type names, as bags store them.
NAV_ODOMETRY = "nav_msgs/msg/Odometry"
MOTOR_SETPOINTS = "std_msgs/msg/Float32MultiArray"
PX4_ODOMETRY = "px4_msgs/msg/VehicleOdometry"
PX4_MOTORS = "px4_msgs/msg/ActuatorMotors"
PX4_OFFBOARD = "px4_msgs/msg/OffboardControlMode"
#: PX4 drops out of offboard mode when the heartbeat is older than COM_OF_LOSS_T (1 s by
#: default) and refuses to enter it below 2 Hz; 10 Hz keeps a margin over a busy link.
HEARTBEAT_HZ = 10.0
#: VehicleOdometry frame enums (px4_msgs, MESSAGE_VERSION 0).
_POSE_NED, _POSE_FRD = 1, 2
_VELOCITY_NED, _VELOCITY_FRD, _VELOCITY_BODY_FRD = 1, 2, 3
_MSG_DIR = Path(__file__).parent / "px4_msgs" / "msg"


@dataclasses.dataclass(frozen=True)
class QuadrotorTopics:
    """Topic names of the quadrotor driver; ``None`` takes the interface's default
    (:meth:`resolved`).

    Attributes:
        odometry: The vehicle's odometry (``/odometry``; PX4: ``/fmu/out/vehicle_odometry``).
        command: The motor commands (``/motor_commands``; PX4: ``/fmu/in/actuator_motors``).
        offboard_control_mode: PX4's offboard heartbeat (``px4`` interface only).
    """

    odometry: str | None = None
    command: str | None = None
    offboard_control_mode: str = "/fmu/in/offboard_control_mode"

    def resolved(self, interface: str) -> QuadrotorTopics:
        """These topics with every ``None`` replaced by ``interface``'s default."""
        defaults = {
            ROS: ("/odometry", "/motor_commands"),
            PX4: ("/fmu/out/vehicle_odometry", "/fmu/in/actuator_motors"),
        }[check_interface(interface)]
        return dataclasses.replace(
            self, odometry=self.odometry or defaults[0], command=self.command or defaults[1]
        )


def check_interface(interface: str, what: str = "interface") -> str:
    """``interface`` if it is ``"ros"`` or ``"px4"``, else a ValueError naming ``what``."""
    if interface not in INTERFACES:
        raise ValueError(f"{what} must be one of {INTERFACES}, got {interface!r}")
    return interface


def import_px4_msgs() -> Any:
    """The ``px4_msgs.msg`` module, or an ImportError that says how to get it."""
    try:
        import px4_msgs.msg
    except ImportError as err:
        raise ImportError(
            "the px4 interface needs px4_msgs, which has no PyPI wheel: ./setup.sh builds it "
            "into .venv (hw/px4_msgs/build.sh); with a ROS 2 install, build PX4's px4_msgs for "
            "your firmware release and source its workspace"
        ) from err
    return px4_msgs.msg


def message_types(interface: str) -> tuple[type, type]:
    """The rclpy (odometry, motor command) message classes of ``interface``."""
    if check_interface(interface) == PX4:
        msgs = import_px4_msgs()
        return msgs.VehicleOdometry, msgs.ActuatorMotors
    from nav_msgs.msg import Odometry
    from std_msgs.msg import Float32MultiArray

    return Odometry, Float32MultiArray


@functools.cache
def register_px4_types() -> None:
    """Teach the bag type store (:func:`robolearn.data.rosbag.typestore`) the PX4 messages of
    ``hw/px4_msgs``, so that bags of the ``px4`` interface are written and read without ROS."""
    from rosbags.typesys import get_types_from_msg

    from robolearn.data.rosbag import typestore

    types: dict[str, Any] = {}
    for path in sorted(_MSG_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"px4_msgs/msg/{path.stem}"))
    typestore().register(types)


# --- odometry --------------------------------------------------------------------------------


def read_odometry(
    msg: Any, msgtype: str, frame: str = "enu_flu", twist_in_body: bool = True
) -> tuple[np.ndarray | None, int, str]:
    """An odometry message as the policy-frame state ``[p, q (w, x, y, z), v, omega]`` (world
    ENU position and velocity, unit body FLU -> world quaternion, body FLU rates).

    ``frame`` and ``twist_in_body`` describe a ``nav_msgs/Odometry``; a ``VehicleOdometry``
    carries its own frames. Returns ``(state, stamp_ns, problem)``: ``state`` is None and
    ``problem`` says why when the message is unusable (non-finite values, no unit quaternion,
    unknown PX4 frames).
    """
    if msgtype == PX4_ODOMETRY:
        raw = np.concatenate([msg.position, msg.q, msg.velocity, msg.angular_velocity]).astype(
            np.float64
        )
        stamp_ns = int(msg.timestamp_sample or msg.timestamp) * 1000
        if msg.pose_frame not in (_POSE_NED, _POSE_FRD):
            return None, stamp_ns, f"VehicleOdometry pose_frame {msg.pose_frame} is unknown"
        if msg.velocity_frame not in (_VELOCITY_NED, _VELOCITY_FRD, _VELOCITY_BODY_FRD):
            return None, stamp_ns, f"VehicleOdometry velocity_frame {msg.velocity_frame} is unknown"
        # An FRD pose frame is NED turned about the vertical: to the policy, just another world.
        frame, twist_in_body = NED_FRD, msg.velocity_frame == _VELOCITY_BODY_FRD
    elif msgtype == NAV_ODOMETRY:
        pose, twist = msg.pose.pose, msg.twist.twist
        o, p, v, w = pose.orientation, pose.position, twist.linear, twist.angular
        raw = np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z, v.x, v.y, v.z, w.x, w.y, w.z])
        stamp_ns = stamp_to_ns(msg.header.stamp)
    else:
        raise ValueError(f"not an odometry type: {msgtype}")
    if not np.all(np.isfinite(raw)):
        return None, stamp_ns, f"non-finite odometry {raw.round(3).tolist()}"
    if not np.linalg.norm(raw[3:7]) > 0.5:
        return None, stamp_ns, f"orientation {raw[3:7].tolist()} is not a unit quaternion"
    p, q, v, w = odometry_to_policy_frame(
        raw[0:3], raw[3:7], raw[7:10], raw[10:13], frame, twist_in_body
    )
    return np.concatenate([p, q / np.linalg.norm(q), v, w]), stamp_ns, ""


def px4_odometry(state: np.ndarray, stamp_ns: int) -> Any:
    """A ``VehicleOdometry`` (rclpy) of a policy-frame state ``[p, q, v, omega]``: NED pose,
    NED velocity, FRD body rates, as PX4's estimator publishes it."""
    msgs = import_px4_msgs()
    p, q, v, w = policy_frame_to_odometry(
        state[0:3], state[3:7], state[7:10], state[10:13], NED_FRD, twist_in_body=False
    )
    stamp_us = int(stamp_ns) // 1000
    msg = msgs.VehicleOdometry(timestamp=stamp_us, timestamp_sample=stamp_us)
    msg.pose_frame, msg.velocity_frame = _POSE_NED, _VELOCITY_NED
    msg.position, msg.q = p.astype(np.float32), q.astype(np.float32)
    msg.velocity, msg.angular_velocity = v.astype(np.float32), w.astype(np.float32)
    return msg


# --- motor commands --------------------------------------------------------------------------


def motor_command(
    interface: str,
    setpoint: np.ndarray | None,
    order: str = "policy",
    now_ns: int = 0,
    sample_ns: int = 0,
) -> Any:
    """The command message of policy-ordered motor setpoints in [0, 1] (clipped); ``None``
    stops the motors (PX4: NaN, which stops them where 0 would idle them armed; ``ros``: 0).

    ``order`` is the ``ros`` interface's motor order (``ActuatorMotors`` is always QuadX);
    ``now_ns`` and ``sample_ns`` become the ``ActuatorMotors`` timestamps (when it was sent and
    when the observation it answers was measured).
    """
    if check_interface(interface) == PX4:
        msgs = import_px4_msgs()
        return msgs.ActuatorMotors(
            timestamp=int(now_ns) // 1000,
            timestamp_sample=int(sample_ns) // 1000,
            reversible_flags=0,
            control=px4_actuator_controls(setpoint),
        )
    from std_msgs.msg import Float32MultiArray

    values = np.zeros(4) if setpoint is None else reorder(np.clip(setpoint, 0.0, 1.0), order)
    return Float32MultiArray(data=[float(x) for x in values])


def read_motor_command(msg: Any, msgtype: str, order: str = "policy") -> np.ndarray | None:
    """Policy-ordered setpoints of a motor command (NaN: a stopped motor, 0); None when the
    message does not hold four motors' values (``order``: the ``Float32MultiArray``'s)."""
    if msgtype == PX4_MOTORS:
        control = np.asarray(msg.control, dtype=np.float64)
        if control.shape != (12,):
            return None
        values = px4_to_policy(control[:4])
    elif msgtype == MOTOR_SETPOINTS:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (4,):
            return None
        values = to_policy_order(values, order)
    else:
        raise ValueError(f"not a motor command type: {msgtype}")
    if np.any(np.isinf(values)):
        return None
    return np.clip(np.where(np.isnan(values), 0.0, values), 0.0, 1.0)


def offboard_heartbeat(now_ns: int) -> Any:
    """PX4's ``OffboardControlMode`` proof of life for direct motor control."""
    msgs = import_px4_msgs()
    return msgs.OffboardControlMode(timestamp=int(now_ns) // 1000, direct_actuator=True)
