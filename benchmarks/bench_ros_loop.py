"""A 100 Hz control loop through the ROS 2 arm adapter on loopback, against a minimal rclpy
subscriber-publisher loop measured the same way in the same run (issue 4's loop benchmark).

A fake arm driver runs in a child process (its own interpreter, as a real driver would): it
publishes ``/joint_states`` (9 joints, header stamped at publish time) at 100 Hz on an absolute
schedule and a goal pose at 10 Hz, and timestamps every JointTrajectory command it receives.
Each loop variant runs for ``--seconds`` against a fresh driver:

- ``adapter, tick``: ``ROS2ArmEnv`` (reach, JointTrajectory controller, ``control_hz=100``)
  stepped with a zero action: fixed-rate stepping, IK, the safety layer, the arm and gripper
  commands; the newest joint state at each tick is the observation;
- ``adapter, synced``: the same with ``sync_to_joint_states=True`` (each tick waits for the
  next joint state);
- ``rclpy, timer``: a node whose 100 Hz timer publishes a JointTrajectory from the newest
  joint state (the anchor of ``adapter, tick``);
- ``rclpy, per message``: a node publishing a JointTrajectory from each joint state in its
  callback (the anchor of ``adapter, synced``).

All measured at the driver, as the robot sees it: achieved rate (commands / s), period jitter
``|t_k - t_{k-1} - 10 ms|`` of command arrivals, and observation-to-command latency (command
arrival minus the header stamp of the joint state that command was computed from; commands are
matched to observations in order, checked by count). Plus the CPU time of the loop's process
per command. Run: ``python -m benchmarks.bench_ros_loop [--seconds 60] [--note TEXT]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import table, write_section
from hw.ros import check_realtime_priority, realtime_permitted

HZ = 100.0
TRAJECTORY = "/arm_controller/joint_trajectory"
GRIPPER = "/gripper_controller/commands"
HOME_DURATION = 0.05  # s: the adapter's reset drives home in ceil(0.05 * HZ) commands


#: How to read the table (mechanisms, true for any run; the numbers are in the table).
READING = (
    "Reading it: `adapter, tick` takes the newest joint state at each tick of its own 100 Hz "
    "clock. With the driver at 100 Hz too, the observation's age is the phase between the two "
    "clocks, 0-10 ms, constant within a run and arbitrary between runs, so its latency (and "
    "that of the timer anchor, which works the same way) is a matter of luck, not of "
    "overhead. `sync_to_joint_states=True` removes that: each step waits for the next joint "
    "state. What remains over the per-message anchor is the step's own work between the "
    "observation and the arm command, from an instrumented run (p50): the hand-over from the "
    "executor thread, which receives the message, to the loop's thread, ~0.1 ms (0.6 ms before "
    "the executor yielded the GIL on the pacing message); the observation, reward and info, "
    "~0.2 ms; the action's checks, IK and safety bounds, ~0.3 ms; building and publishing the "
    "JointTrajectory, ~0.2 ms. The extra CPU per step is mostly the gripper command's publish "
    "(rclpy converts and publishes each message in ~0.2 ms of Python and C under the GIL) and "
    "decoding the raw subscriptions in Python. The p99s depend on the machine's scheduling as "
    "much as on the loop (compare the anchors'). SCHED_FIFO (the env's `realtime_priority`, as "
    "ros2_control runs its control thread) takes away the competition of the machine's other "
    "processes, not the host's: a VM stalls at times, the driver's own joint states included."
)


def isolated_ros_domain() -> int:
    """A ROS domain of this run, discovery limited to this machine (inherited by the driver)."""
    domain = 200 + os.getpid() % 30
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain


# --- the fake driver (child process) ---------------------------------------------------------


def run_driver(out: Path, priority: int) -> None:
    """Publish joint states at HZ and timestamp arriving commands until SIGINT; write JSON.
    ``priority`` > 0: SCHED_FIFO at it, as a real robot's driver (ros2_control) runs."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_system_default
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from hw.ros import RosRuntime, command_qos, ns_to_stamp, sensor_qos, use_realtime_priority
    from robolearn.robots.panda import FINGER_JOINT_NAMES, HOME_QPOS, JOINT_NAMES

    if priority:
        use_realtime_priority(priority)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    arrivals: list[int] = []
    published: list[int] = []
    with RosRuntime() as ros:
        node = ros.create_node("bench_driver")
        # Reliable, like ros2_control's joint_state_broadcaster.
        joints_pub = node.create_publisher(JointState, "/joint_states", qos_profile_system_default)
        goal_pub = node.create_publisher(PoseStamped, "/goal_pose", sensor_qos())
        node.create_subscription(
            JointTrajectory, TRAJECTORY, lambda _: arrivals.append(time.time_ns()), command_qos(100)
        )
        node.create_subscription(Float64MultiArray, GRIPPER, lambda _: None, command_qos(100))
        names = list(JOINT_NAMES + FINGER_JOINT_NAMES)
        positions = [*HOME_QPOS.tolist(), 0.04, 0.04]
        goal = PoseStamped()
        goal.header.frame_id = "world"
        goal.pose.position.x, goal.pose.position.y, goal.pose.position.z = 0.7, 0.3, 0.4
        tick = time.monotonic()
        i = 0
        while not stop.is_set():
            now = time.time_ns()
            msg = JointState(name=names, position=positions)
            msg.header.stamp = ns_to_stamp(now)
            joints_pub.publish(msg)
            published.append(now)
            if i % 10 == 0:
                goal.header.stamp = msg.header.stamp
                goal_pub.publish(goal)
            i += 1
            tick += 1.0 / HZ
            time.sleep(max(0.0, tick - time.monotonic()))
    out.write_text(json.dumps({"arrivals": arrivals, "published": published}))


class Driver:
    """The fake driver as a child process; ``stop()`` returns its JSON record."""

    def __init__(self, tmp: Path, name: str, priority: int) -> None:
        self.out = tmp / f"driver-{name}.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_ros_loop", "--driver", str(self.out)]
        cmd += ["--priorities", str(priority)]
        self.process = subprocess.Popen(cmd)

    def stop(self) -> dict[str, list[int]]:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        return json.loads(self.out.read_text())


# --- the loops (this process) ----------------------------------------------------------------


def adapter_loop(steps: int, sync: bool, priority: int) -> tuple[list[int], int, dict[str, Any]]:
    """Step the arm adapter ``steps`` times (``priority`` > 0: its ``realtime_priority``); the
    stamps each command came from, the number of commands sent before the loop (the reset's
    move home) and loop statistics (``cpu_s``: this process's CPU time while stepping)."""
    from hw.arm_env import ROS2ArmEnv

    env = ROS2ArmEnv(
        task="reach",
        scene_reset_node=None,
        node_name="bench_adapter",
        home_duration=HOME_DURATION,
        terminate_on_success=False,
        control_hz=HZ,
        sync_to_joint_states=sync,
        realtime_priority=priority or None,
    )
    try:
        _, info = env.reset()
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        stamps, overruns, aborts = [], 0, []
        cpu = time.process_time()
        for _ in range(steps):
            stamps.append(info["stamp_ns"])
            _, _, _, truncated, info = env.step(action)
            overruns += info["overrun"]
            if truncated:  # a safety abort ends the measurement
                aborts.append(info["abort_reason"])
                break
        cpu = time.process_time() - cpu
    finally:
        env.close()
    home = max(1, math.ceil(HOME_DURATION * HZ))
    return stamps, home, {"overruns": overruns, "aborts": aborts, "cpu_s": cpu}


def rclpy_loop(
    steps: int, per_message: bool, priority: int
) -> tuple[list[int], int, dict[str, Any]]:
    """The anchor: a minimal node publishing one JointTrajectory per joint state (callback) or
    per timer tick (from the newest joint state), same QoS, executor and scheduling as the
    adapter."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from hw.ros import (
        RosRuntime,
        command_qos,
        seconds_to_duration,
        sensor_qos,
        stamp_to_ns,
        use_realtime_priority,
    )
    from robolearn.robots.panda import JOINT_NAMES

    stamps: list[int] = []
    latest: list[Any] = []
    done = threading.Event()
    restore = use_realtime_priority(priority) if priority else None
    try:
        with RosRuntime() as ros:
            node = ros.create_node("bench_rclpy")
            pub = node.create_publisher(JointTrajectory, TRAJECTORY, command_qos())
            gripper = node.create_publisher(Float64MultiArray, GRIPPER, command_qos())

            def command(msg: Any) -> None:
                if len(stamps) >= steps:
                    done.set()
                    return
                point = JointTrajectoryPoint(
                    positions=list(msg.position[:7]), time_from_start=seconds_to_duration(1 / HZ)
                )
                pub.publish(JointTrajectory(joint_names=list(JOINT_NAMES), points=[point]))
                stamps.append(stamp_to_ns(msg.header.stamp))

            def on_joints(msg: Any) -> None:
                if per_message:
                    command(msg)
                else:
                    latest[:] = [msg]

            # Commands before the driver subscribes would be lost (as the adapter's reset waits).
            deadline = time.monotonic() + 30
            while pub.get_subscription_count() == 0 or gripper.get_subscription_count() == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the fake driver did not subscribe the command topics")
                time.sleep(0.01)
            cpu = time.process_time()
            node.create_subscription(JointState, "/joint_states", on_joints, sensor_qos())
            if not per_message:
                node.create_timer(1 / HZ, lambda: command(latest[0]) if latest else None)
            done.wait()
            cpu = time.process_time() - cpu
    finally:
        if restore is not None:
            restore()
    return stamps, 0, {"overruns": 0, "aborts": [], "cpu_s": cpu}


def measure(
    tmp: Path,
    name: str,
    loop: Callable[[int], tuple[list[int], int, dict[str, Any]]],
    priority: int,
) -> dict[str, Any]:
    """Run one loop variant at ``priority`` against a fresh driver; its statistics as seen by
    the driver."""
    driver = Driver(tmp, name.replace(" ", "_").replace(",", ""), priority)
    try:
        stamps, before, stats = loop(priority)
    finally:
        record = driver.stop()
    arrivals = np.asarray(record["arrivals"], dtype=np.int64)
    n = len(stamps)
    # A safety abort ends the loop with one more command, the hold.
    lost = before + n + len(stats["aborts"]) - len(arrivals)
    loop_arrivals = arrivals[before : before + n]
    period = np.diff(loop_arrivals) * 1e-9
    jitter_ms = np.abs(period - 1 / HZ) * 1e3
    result = {
        "variant": name,
        "priority": priority,
        "commands": n,
        "lost": int(lost),
        "rate": float((n - 1) / (period.sum())),
        "jitter_ms": [float(np.percentile(jitter_ms, q)) for q in (50, 99)],
        "cpu_ms_per_step": stats.pop("cpu_s") * 1e3 / n,
        "driver_rate": float((len(record["published"]) - 1) / np.ptp(record["published"]) * 1e9),
        **stats,
    }
    if lost == 0:  # commands matched to observations by order: only without losses
        latency_ms = (loop_arrivals - np.asarray(stamps, dtype=np.int64)) * 1e-6
        result["latency_ms"] = [float(np.percentile(latency_ms, q)) for q in (50, 99)]
    print(json.dumps(result), flush=True)
    return result


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's repeated runs as one: the median of each statistic over the runs (of the
    latency over the runs that lost nothing), losses and overruns summed, and the range of the
    latency p99 over the runs (``latency_p99_range``)."""
    combined: dict[str, Any] = {
        "commands": sum(r["commands"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "overruns": sum(r["overruns"] for r in runs),
        "aborts": [a for r in runs for a in r["aborts"]],
        "rate": float(np.median([r["rate"] for r in runs])),
        "cpu_ms_per_step": float(np.median([r["cpu_ms_per_step"] for r in runs])),
        "jitter_ms": np.median([r["jitter_ms"] for r in runs], axis=0).tolist(),
    }
    latencies = [r["latency_ms"] for r in runs if "latency_ms" in r]
    if latencies:
        combined["latency_ms"] = np.median(latencies, axis=0).tolist()
        p99 = [x[1] for x in latencies]
        combined["latency_p99_range"] = [min(p99), max(p99)]
    return combined


def fmt(result: dict[str, Any], key: str) -> str:
    values = result.get(key)
    return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """The table of one scheduling setting's combined results, with its ratio lines."""
    rows = []
    for name, r in results.items():
        rate_ok = abs(r["rate"] - HZ) <= 0.01 * HZ
        jitter_ok = r["jitter_ms"][0] <= 2 and r["jitter_ms"][1] <= 2
        latency_ok = r.get("latency_ms") is not None and r["latency_ms"][1] <= 5
        rows.append(
            [
                name,
                r["commands"],
                f"{r['rate']:.2f}" + ("" if rate_ok else " (**no**)"),
                fmt(r, "jitter_ms") + ("" if jitter_ok else " (**no**)"),
                fmt(r, "latency_ms") + ("" if latency_ok else " (**no**)"),
                fmt(r, "latency_p99_range").replace(" / ", " - "),
                f"{r['cpu_ms_per_step']:.2f}",
                f"{r['lost']}",
                f"{r['overruns']}",
                f"{len(r['aborts'])}",
            ]
        )
    ratios = []
    for adapter, anchor in (
        ("adapter, tick", "rclpy, timer"),
        ("adapter, synced", "rclpy, per message"),
    ):
        a, b = results[adapter], results[anchor]
        if "latency_ms" in a and "latency_ms" in b:
            p50 = a["latency_ms"][0] / b["latency_ms"][0]
            p99 = a["latency_ms"][1] / b["latency_ms"][1]
            latency = f"latency p50 {p50:.2f}x, p99 {p99:.2f}x"
        else:
            latency = "latency n/a (commands lost)"
        cpu = a["cpu_ms_per_step"] / b["cpu_ms_per_step"]
        ratios.append(f"- {adapter} vs {anchor}: {latency}, CPU per step {cpu:.2f}x")
    header = [
        "loop",
        "commands",
        "rate Hz",
        "jitter p50 / p99 ms",
        "obs-to-command p50 / p99 ms",
        "p99 range ms",
        "CPU ms / step",
        "lost",
        "overruns",
        "aborts",
    ]
    aborts = [f"- {name}: {reason}" for name, r in results.items() for reason in r["aborts"]]
    abort_lines = "\n\nSafety aborts (each ends its run early):\n\n" + "\n".join(aborts)
    return (
        table(header, rows)
        + (abort_lines if aborts else "")
        + "\n\nAdapter over its anchor (same pacing):\n\n"
        + "\n".join(ratios)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per loop variant and run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every variant")
    parser.add_argument(
        "--priorities",
        type=int,
        nargs="+",
        default=[0, 50],
        help="scheduling settings to measure: 0 = normal, 1-99 = SCHED_FIFO at that priority "
        "(loops and driver alike; needs CAP_SYS_NICE)",
    )
    parser.add_argument("--note", default="", help="appended to the section (e.g. machine load)")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.driver is not None:
        run_driver(args.driver, args.priorities[0])
        return
    for priority in args.priorities:
        if priority:
            check_realtime_priority(priority)
    isolated_ros_domain()
    steps = round(args.seconds * HZ)
    load = os.getloadavg()
    variants: list[tuple[str, Callable[[int], tuple[list[int], int, dict[str, Any]]]]] = [
        ("adapter, tick", lambda p: adapter_loop(steps, sync=False, priority=p)),
        ("adapter, synced", lambda p: adapter_loop(steps, sync=True, priority=p)),
        ("rclpy, timer", lambda p: rclpy_loop(steps, per_message=False, priority=p)),
        ("rclpy, per message", lambda p: rclpy_loop(steps, per_message=True, priority=p)),
    ]
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        p: {name: [] for name, _ in variants} for p in args.priorities
    }
    with tempfile.TemporaryDirectory(prefix="bench-ros-loop-") as tmp:
        for _ in range(args.repeats):  # interleaved, so that a slow spell hits every variant
            for priority in args.priorities:
                for name, loop in variants:
                    result = measure(Path(tmp), name, loop, priority)
                    runs[priority][name].append(result)
    load_after = os.getloadavg()

    tables = []
    for priority, by_variant in runs.items():
        title = "normal scheduling" if priority == 0 else f"SCHED_FIFO, priority {priority}"
        if priority and not realtime_permitted(priority):
            title += " (refused by the OS: ran at normal priority)"
        combined = {name: combine(r) for name, r in by_variant.items()}
        tables.append(f"### {title}\n\n" + results_table(combined))
    loads = "/".join(f"{x:.1f}" for x in load)
    loads_after = "/".join(f"{x:.1f}" for x in load_after)
    body = (
        f"{args.seconds:g} s per variant and run at {HZ:g} Hz on loopback (isolated ROS "
        f"domain), {args.repeats} runs of every variant, interleaved; each run against a fresh "
        "fake driver in a child process publishing `/joint_states` at 100 Hz and timestamping "
        "the commands it receives, under the same scheduling as the loop. Each statistic is "
        "the median over the runs (`p99 range`: the latency p99's lowest and highest run). "
        "Targets: rate within 1% of 100 Hz, period jitter p50/p99 <= 2 ms, obs-to-command "
        "latency p99 <= 5 ms. Jitter: `|command inter-arrival - 10 ms|` at the driver. Latency: "
        "command arrival at the driver minus the header stamp of the joint state it was "
        "computed from (set at the driver's publish). CPU: this process's CPU time per command "
        "while looping (all threads: the executor thread's message handling and the loop's own "
        "work). Lost: commands the driver never received (latency needs none lost: it matches "
        "commands to observations in order).\n\n"
        + "\n\n".join(tables)
        + "\n\n"
        + READING
        + f"\n\nLoad average (1/5/15 min) {loads} before, {loads_after} after."
        + (f" {args.note}" if args.note else "")
    )
    write_section("ros-loop", "100 Hz control loop through the ROS 2 arm adapter", body)


if __name__ == "__main__":
    main()
