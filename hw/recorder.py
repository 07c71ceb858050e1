"""Recording what a hardware env saw and sent, as a rosbag2 MCAP (:mod:`robolearn.data.rosbag`).

A :class:`TopicRecorder` is attached to a hardware env (``env.attach_recorder``); the env hands
it every raw message it receives (with the receive time as log time) and every command it
publishes (with the send time), plus robolearn's step-level topics: the policy's action of each
step, episode start/end events and safety events. The bag therefore replays without the
EpisodeStore and imports back into one (:mod:`hw.logs`). The arm env uses it today; a
quadrotor env records ``nav_msgs/Odometry`` and its motor commands through the same calls.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from robolearn.data.rosbag import (
    ACTION_TOPIC,
    ACTION_TYPE,
    CUSTOM_DATA_KEY,
    EPISODE_TOPIC,
    SAFETY_TOPIC,
    STRING_TYPE,
    BagWriter,
    action_message,
    string_message,
)


def ros_type_name(msg_class: type) -> str:
    """``sensor_msgs/msg/JointState`` for rclpy's ``sensor_msgs.msg.JointState`` class."""
    package = msg_class.__module__.split(".")[0]
    return f"{package}/msg/{msg_class.__name__}"


def now_ns() -> int:
    """The log clock: system time in nanoseconds (ROS time when not using sim time)."""
    return time.time_ns()


class TopicRecorder:
    """Writes raw ROS messages and robolearn's step topics into a crash-safe MCAP bag.

    Args:
        path: Bag directory to create.
        description: JSON-able description of the log (env ids, robot spec, control rate...),
            stored in the bag's ``custom_data`` under :data:`CUSTOM_DATA_KEY`.
        flush_seconds: Longest stretch of messages a kill of the process can lose.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        description: Mapping[str, Any] | None = None,
        flush_seconds: float = 1.0,
    ) -> None:
        from rclpy.serialization import serialize_message

        self._serialize = serialize_message
        custom = {CUSTOM_DATA_KEY: json.dumps(dict(description or {}), default=str)}
        self.bag = BagWriter(path, custom, flush_seconds=flush_seconds)
        self.path = self.bag.path
        for topic, msgtype in (
            (ACTION_TOPIC, ACTION_TYPE),
            (EPISODE_TOPIC, STRING_TYPE),
            (SAFETY_TOPIC, STRING_TYPE),
        ):
            self.bag.add_topic(topic, msgtype)

    def add_topic(self, topic: str, msg_class: type) -> None:
        """Declare a raw topic and its rclpy message class."""
        self.bag.add_topic(topic, ros_type_name(msg_class))

    def message(self, topic: str, msg: Any, log_ns: int) -> None:
        """Record an rclpy message of a declared topic (serialized here; prefer :meth:`write`
        with the wire bytes where the caller has them)."""
        self.bag.write(topic, self._serialize(msg), log_ns)

    def write(self, topic: str, data: bytes, log_ns: int) -> None:
        """Record a message of a declared topic as the CDR bytes received or sent."""
        self.bag.write(topic, data, log_ns)

    def action(self, action: Any, log_ns: int) -> None:
        """Record the policy's action, logged at the time of the observation it acted on."""
        self.bag.write(ACTION_TOPIC, action_message(action), log_ns)

    def episode(self, event: Mapping[str, Any], log_ns: int) -> None:
        """Record an episode event (``{"event": "start" | "end", ...}``)."""
        self.bag.write(EPISODE_TOPIC, string_message(event), log_ns)

    def safety(self, event: Mapping[str, Any], log_ns: int) -> None:
        """Record a safety event."""
        self.bag.write(SAFETY_TOPIC, string_message(event), log_ns)

    def flush(self) -> None:
        """Make everything recorded so far survive a kill."""
        self.bag.flush()

    def close(self) -> None:
        """Close the bag (index, summary, ``metadata.yaml``); idempotent."""
        self.bag.close()
