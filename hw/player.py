"""Play a rosbag2 MCAP back onto ROS 2 topics at its original timing, with rclpy.

Each message goes out as the CDR bytes it was recorded with (``publish_raw``: no decode and
re-encode), at its log time relative to the first message, scaled by ``rate``. Publishers are
reliable with a deep queue, which matches reliable and best-effort subscribers alike.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from hw.ros import RosRuntime, command_qos
from robolearn.data.rosbag import read_bag


def message_class(msgtype: str) -> type:
    """The rclpy class of a ROS type name such as ``sensor_msgs/msg/JointState``."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"no Python message class for {msgtype} (is the {package} package installed?)"
        ) from err


def play_bag(
    bag: str | os.PathLike,
    topics: Iterable[str] | None = None,
    rate: float = 1.0,
    domain_id: int | None = None,
    wait_for_subscribers: float = 0.0,
    start_delay: float = 0.2,
) -> dict[str, Any]:
    """Publish the bag's messages at their recorded relative times; a timing summary.

    Args:
        bag: The bag directory.
        topics: Only these topics (default: all).
        rate: Playback speed (2.0 plays twice as fast).
        domain_id: ROS domain; ``None`` reads ``ROS_DOMAIN_ID``.
        wait_for_subscribers: Seconds to wait, before the first message, for every topic to
            have a subscriber (messages published before discovery completes are lost).
        start_delay: Seconds between setting up the publishers and the first message.

    Returns:
        ``messages`` (count), ``topics``, ``duration_s`` and the lateness of the sends behind
        schedule (``late_ms_p50``, ``late_ms_p99``, ``late_ms_max``).
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    messages = list(read_bag(bag, topics))
    if not messages:
        raise ValueError(f"{bag}: no messages to play")
    runtime = RosRuntime(domain_id)
    try:
        node = runtime.create_node("robolearn_bag_player")
        types = {m.topic: m.msgtype for m in messages}
        publishers = {
            topic: node.create_publisher(message_class(msgtype), topic, command_qos(depth=1000))
            for topic, msgtype in types.items()
        }
        deadline = time.monotonic() + wait_for_subscribers
        while time.monotonic() < deadline and any(
            p.get_subscription_count() == 0 for p in publishers.values()
        ):
            time.sleep(0.01)
        first = messages[0].log_ns
        start = time.monotonic() + start_delay
        late = np.empty(len(messages))
        for i, m in enumerate(messages):
            due = start + (m.log_ns - first) * 1e-9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publishers[m.topic].publish(m.data)
            late[i] = time.monotonic() - due
        # Reliable delivery of the tail: give the middleware a moment before tearing down.
        time.sleep(0.1)
    finally:
        runtime.close()
    return {
        "messages": len(messages),
        "topics": sorted(types),
        "duration_s": (messages[-1].log_ns - first) * 1e-9 / rate,
        "late_ms_p50": float(np.percentile(late, 50) * 1e3),
        "late_ms_p99": float(np.percentile(late, 99) * 1e3),
        "late_ms_max": float(late.max() * 1e3),
    }
