"""The ROS 2 arm env against the PyBullet stand-in arm, over real rclpy on loopback."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest

from tests.hw_fixtures import closing, needs_rclpy, ros_domain, wait_until  # noqa: F401

pytestmark = needs_rclpy

pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")

from hw.arm_env import ROS2ArmEnv  # noqa: E402
from hw.ros import RosRuntime, realtime_permitted  # noqa: E402
from hw.standin_arm import ALL_JOINTS, StandInArm  # noqa: E402
from robolearn.envs import make_env  # noqa: E402
from robolearn.robots.panda import HOME_QPOS, JOINT_NAMES  # noqa: E402
from robolearn.rollout import rollout  # noqa: E402
from sims.arm.experts import ArmExpert  # noqa: E402

TRAJECTORY = "/arm_controller/joint_trajectory"
FORWARD = "/arm_controller/commands"
GRIPPER = "/gripper_controller/commands"


class Spy:
    """A separate ROS participant recording every message on some topics."""

    def __init__(self, domain: int, topics: dict[str, type]) -> None:
        from hw.ros import command_qos

        self.runtime = RosRuntime(domain)
        self.node = self.runtime.create_node("spy")
        self.messages: dict[str, list] = {topic: [] for topic in topics}
        self._lock = threading.Lock()
        for topic, msg_type in topics.items():
            self.node.create_subscription(
                msg_type, topic, lambda m, t=topic: self._add(t, m), command_qos(depth=1000)
            )

    def _add(self, topic: str, msg) -> None:
        with self._lock:
            self.messages[topic].append(msg)

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.messages[topic])

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def make(ros_domain, closing):  # noqa: F811 - the fixtures
    """Factory of stand-ins, envs, drivers and spies in the test's domain, all closed at
    teardown."""

    def factory(kind: str, **kwargs):
        if kind == "standin":
            return closing(StandInArm(kwargs, domain_id=ros_domain))
        if kind == "env":
            kwargs.setdefault("scene_reset_node", "/standin_arm")
            return closing(ROS2ArmEnv(domain_id=ros_domain, **kwargs))
        if kind == "driver":
            return closing(FakeDriver(ros_domain, **kwargs))
        return closing(Spy(ros_domain, kwargs))

    return factory


def wait_for_subscribers(publishers: list, count: int) -> None:
    """Wait until every one of ``publishers`` has matched ``count`` subscriptions: a sample
    published before discovery matched a subscriber is lost to it."""
    wait_until(
        lambda: min(p.get_subscription_count() for p in publishers) >= count,
        15.0,
        f"{count} subscriptions on each command topic",
    )


class FakeDriver:
    """A best-effort driver publishing the arm at home (joints reversed, an extra joint) and a
    goal in the base frame at ``hz``, each JointState stamped at its publish time."""

    def __init__(self, domain: int, hz: float = 100.0) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        from hw.ros import sensor_qos

        self.runtime = RosRuntime(domain)
        node = self.runtime.create_node("fake_driver")
        self._joints_pub = node.create_publisher(JointState, "/joint_states", sensor_qos())
        self._goal_pub = node.create_publisher(PoseStamped, "/goal_pose", sensor_qos())
        self._node = node
        self._period = 1.0 / hz
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        names = ["camera_pan", *reversed(ALL_JOINTS)]
        positions = [0.3, 0.04, 0.04, *reversed(HOME_QPOS.tolist())]
        tick = time.monotonic()
        while self._running.is_set():
            msg = JointState(name=names, position=positions)
            msg.header.stamp = self._node.get_clock().now().to_msg()
            self._joints_pub.publish(msg)
            goal = PoseStamped()
            goal.header.frame_id = "panda_link0"
            goal.pose.position.x, goal.pose.position.z = 0.5, 0.3
            self._goal_pub.publish(goal)
            tick += self._period
            time.sleep(max(0.0, tick - time.monotonic()))

    def close(self) -> None:
        self._running.clear()
        self._thread.join()
        self.runtime.close()


def run_expert(env, task: str, episodes: int, seed: int = 0):
    return rollout(ArmExpert(task), env, episodes, seed=seed, progress=False)


@pytest.mark.parametrize("task", ["reach", "push", "pick_place"])
def test_spaces_and_limits_match_the_simulated_twin(task, ros_domain):  # noqa: F811
    ids = {
        "reach": "ArmReach-v0",
        "push": "ArmPush-v0",
        "pick_place": "ArmPickPlace-v0",
    }
    sim = make_env(f"robolearn/{ids[task]}")
    hw = make_env(f"robolearn/ROS2{ids[task]}", {"domain_id": ros_domain})
    try:
        assert hw.observation_space == sim.observation_space
        assert hw.action_space == sim.action_space
        assert hw.spec.max_episode_steps == sim.spec.max_episode_steps
        assert hw.unwrapped.robot_spec == sim.unwrapped.robot_spec
    finally:
        hw.close()
        sim.close()


def test_expert_reaches_through_the_joint_trajectory_controller(make):
    make("standin", task="reach")
    env = make("env", task="reach", controller="joint_trajectory")
    result = run_expert(env, "reach", episodes=3)
    assert result.success_rate == 1.0, result.summary()


def test_expert_pushes_through_the_forward_command_controller(make):
    make("standin", task="push")
    env = make("env", task="push", controller="forward_command")
    result = run_expert(env, "push", episodes=3)
    assert result.success_rate >= 2 / 3, result.summary()


def test_episode_starts_where_the_simulated_one_of_its_seed_starts(make):
    make("standin", task="push", joint_noise=0.0, pose_noise=0.0)
    env = make("env", task="push")
    sim = make_env("robolearn/ArmPush-v0")
    for seed in (3, 11):
        hw_obs, _ = env.reset(seed=seed)
        sim_obs, _ = sim.reset(seed=seed)
        for key in ("joint_pos", "ee_pos", "object_pos", "goal_pos"):
            np.testing.assert_allclose(hw_obs[key], sim_obs[key], atol=2e-3, err_msg=key)


def test_joints_in_another_order_with_extra_joints(make):
    standin = make(
        "standin",
        task="reach",
        joint_order=list(reversed(ALL_JOINTS)),
        extra_joints=["conveyor_joint", "camera_pan"],
        joint_noise=0.0,
    )
    env = make("env", task="reach")
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(np.array([0.5, -0.5, 0.2, 1.0], dtype=np.float32))
    time.sleep(0.05)  # let the arm settle so the measurement and the truth agree
    obs, *_ = env.step(np.zeros(4, dtype=np.float32))
    np.testing.assert_allclose(obs["joint_pos"], standin.joint_positions(), atol=0.02)
    assert run_expert(env, "reach", episodes=1, seed=1).success_rate == 1.0


def test_real_robot_mode_with_a_best_effort_driver_goes_home_on_reset(make, ros_domain):  # noqa: F811
    """No scene reset service: reset drives home; a best-effort publisher is heard."""
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    make("driver")
    spy = make("spy", **{TRAJECTORY: JointTrajectory, GRIPPER: Float64MultiArray})
    env = make("env", task="reach", scene_reset_node=None, home_duration=0.2)
    obs, info = env.reset()  # waits for a subscriber (the spy) on the command topics
    np.testing.assert_allclose(obs["joint_pos"], HOME_QPOS, atol=1e-6)
    np.testing.assert_allclose(obs["goal_pos"], [0.5, 0.0, 0.3])
    assert obs["gripper"][0] == pytest.approx(0.08)
    assert info["stamp_ns"] > 0 and 0 <= info["obs_latency"] < 1.0
    wait_until(lambda: spy.count(TRAJECTORY) >= 4, 15.0, "the move home's 4 commands")
    command = spy.messages[TRAJECTORY][-1]
    assert list(command.joint_names) == list(JOINT_NAMES)
    assert len(command.points) == 1
    np.testing.assert_allclose(command.points[0].positions, HOME_QPOS, atol=1e-9)
    assert command.points[0].time_from_start.nanosec == 50_000_000
    assert list(spy.messages[GRIPPER][-1].data) == [0.04, 0.04]  # opened


def test_control_hz_sets_the_rate_and_the_trajectory_time(make):
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    with pytest.raises(ValueError, match="control_hz must be a positive number"):
        ROS2ArmEnv(task="reach", control_hz=0.0)
    make("driver")
    spy = make("spy", **{TRAJECTORY: JointTrajectory, GRIPPER: Float64MultiArray})
    env = make("env", task="reach", scene_reset_node=None, home_duration=0.05, control_hz=50)
    assert env.dt == pytest.approx(0.02) and env.robot_spec.control_hz == 50.0
    env.reset()
    start = time.monotonic()
    for _ in range(10):
        env.step(np.zeros(4, dtype=np.float32))
    assert time.monotonic() - start >= 9 * 0.02  # paced: never faster than 50 Hz
    wait_until(lambda: spy.count(TRAJECTORY) >= 11, 15.0, "the commands")
    assert spy.messages[TRAJECTORY][-1].points[0].time_from_start.nanosec == 20_000_000


def test_sync_to_joint_states_paces_the_loop_by_the_driver(make):
    """Each step takes the next joint state: the driver's rate, not control_hz, sets the pace,
    and the watchdog still ends the episode when the driver stops."""
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    driver = make("driver", hz=25.0)
    make("spy", **{TRAJECTORY: JointTrajectory, GRIPPER: Float64MultiArray})
    env = make(
        "env",
        task="reach",
        scene_reset_node=None,
        home_duration=0.05,
        control_hz=50,
        sync_to_joint_states=True,
        safety={"watchdog_timeout": 0.3},
    )
    _, info = env.reset()
    stamps = [info["stamp_ns"]]
    start = time.monotonic()
    for _ in range(10):
        _, _, _, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert not truncated
        stamps.append(info["stamp_ns"])
    # Ten new joint states, one per step: 25 Hz, where the 50 Hz tick would take 0.2 s.
    assert time.monotonic() - start >= 9 * 0.04
    assert np.all(np.diff(stamps) >= 0.5 * 0.02 * 1e9)
    driver.close()
    for _ in range(10):
        _, _, _, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        if truncated:
            break
    assert truncated and info["abort_reason"].startswith("watchdog")


def test_realtime_priority_runs_the_loop_and_its_ros_threads_fifo_until_close(make, caplog):
    """The creating thread and the executor thread run SCHED_FIFO while the env is open and the
    creating thread gets its scheduling back on close; where the OS refuses, a warning says so
    and nothing changes."""
    with pytest.raises(ValueError, match="realtime_priority"):
        make("env", task="reach", realtime_priority=100)
    before = os.sched_getscheduler(0)
    env = make("env", task="reach", realtime_priority=10)
    executors = [t.native_id for t in threading.enumerate() if t.name == "ros-executor"]
    assert executors
    if realtime_permitted(10):
        assert os.sched_getscheduler(0) == os.SCHED_FIFO
        assert os.sched_getparam(0).sched_priority == 10
        assert all(os.sched_getscheduler(tid) == os.SCHED_FIFO for tid in executors)
    else:
        assert "realtime_priority=10 refused" in caplog.text
        assert os.sched_getscheduler(0) == before
    env.close()
    assert os.sched_getscheduler(0) == before


def test_watchdog_holds_the_arm_and_ends_the_episode_when_the_standin_stops(make):
    from trajectory_msgs.msg import JointTrajectory

    standin = make("standin", task="reach")
    env = make("env", task="reach", safety={"watchdog_timeout": 0.2})
    spy = make("spy", **{TRAJECTORY: JointTrajectory})
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([0.3, 0.0, -0.3, 1.0], dtype=np.float32))
    standin.close()
    stopped = time.monotonic()
    for _ in range(20):
        obs, _, terminated, truncated, info = env.step(np.array([1.0, 0, 0, 1], np.float32))
        if truncated:
            break
    assert truncated and not terminated
    assert info["abort_reason"].startswith("watchdog: no fresh message on /joint_states")
    assert [e["kind"] for e in info["safety_events"]] == ["watchdog"]
    # 0.2 s timeout at 20 Hz steps; the margin is for a loaded 2-core machine.
    assert time.monotonic() - stopped < 1.0, "the watchdog fired late"
    # The last command out is the hold: the last measured joint positions.
    wait_until(
        lambda: np.allclose(
            spy.messages[TRAJECTORY][-1].points[0].positions, obs["joint_pos"], atol=1e-6
        ),
        1.0,
        "the hold command",
    )
    with pytest.raises(RuntimeError, match="aborted .*watchdog"):
        env.step(np.zeros(4, dtype=np.float32))


def test_nan_and_inf_actions_never_reach_the_command_topics(make):
    from std_msgs.msg import Float64MultiArray

    make("standin", task="reach")
    spy = make("spy", **{FORWARD: Float64MultiArray, GRIPPER: Float64MultiArray})
    env = make("env", task="reach", controller="forward_command")
    # Each env's publishers must have matched the spy and the stand-in before it sends.
    wait_for_subscribers([env._command_pub, env._gripper_pub], 2)
    env.reset(seed=0)
    env.step(np.array([0.5, 0, 0, -1], dtype=np.float32))
    obs, _, _, truncated, info = env.step(np.array([np.nan, 0, 0, 1], dtype=np.float32))
    assert truncated and info["abort_reason"].startswith("invalid_action")

    lenient = make(
        "env",
        task="reach",
        controller="forward_command",
        node_name="lenient_arm",
        safety={"abort_on_invalid_action": False},
    )
    wait_for_subscribers([lenient._command_pub, lenient._gripper_pub], 2)
    lenient.reset(seed=1)
    for action in ([0, np.inf, 0, 0], [0, 0, 0, -np.inf], [np.nan] * 4, [0.2, 0, 0, 0]):
        _, _, _, truncated, info = lenient.step(np.array(action, dtype=np.float32))
        assert not truncated
    # (A loop stall would be the machine's: only the action checks are under test here.)
    assert [e["kind"] for e in info["safety_events"] if e["kind"] != "loop_stall"] == []
    # 2 from the first env (its step, its abort's hold), 4 from the lenient one.
    wait_until(lambda: spy.count(FORWARD) >= 6, 15.0, "the commands")
    time.sleep(0.1)
    for topic in (FORWARD, GRIPPER):
        assert spy.count(topic) > 0
        for msg in spy.messages[topic]:
            assert all(math.isfinite(x) for x in msg.data), (topic, list(msg.data))


def test_estop_service_holds_latches_and_clears(make, ros_domain):  # noqa: F811
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    make("standin", task="reach")
    env = make("env", task="reach")
    spy = make("spy", **{TRAJECTORY: JointTrajectory})
    client_node = spy.node
    estop = client_node.create_client(Trigger, "/robolearn_arm/estop")
    clear = client_node.create_client(Trigger, "/robolearn_arm/clear_estop")
    wait_for_subscribers([env._command_pub], 2)  # the spy and the stand-in
    env.reset(seed=0)
    sent = spy.count(TRAJECTORY)
    env.step(np.array([1.0, 0, 0, 1], dtype=np.float32))
    # The step's own command must have reached the spy first, or its late delivery would pass
    # for the e-stop's hold.
    wait_until(lambda: spy.count(TRAJECTORY) > sent, 10.0, "the step's command")
    sent = spy.count(TRAJECTORY)
    response = spy.runtime.call(estop, Trigger.Request(), 5.0, "estop")
    assert response.success and "latched" in response.message
    # The hold goes out from the service callback, without waiting for the next step.
    wait_until(lambda: spy.count(TRAJECTORY) > sent, 10.0, "the e-stop's hold command")
    _, _, _, truncated, info = env.step(np.array([1.0, 0, 0, 1], dtype=np.float32))
    assert truncated and info["abort_reason"].startswith("estop")
    with pytest.raises(RuntimeError, match="e-stop is latched.*clear_estop"):
        env.reset(seed=1)
    assert spy.runtime.call(clear, Trigger.Request(), 5.0, "clear").success
    env.reset(seed=1)
    assert not env.step(np.zeros(4, dtype=np.float32))[3]


def test_reset_without_a_driver_says_what_is_missing(make):
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    env = make("env", task="reach", scene_reset_node=None, reset_timeout=0.3)
    with pytest.raises(TimeoutError, match=r"nobody subscribes to \['/arm_controller/joint_traj"):
        env.reset(seed=0)
    # Controllers up (the spy subscribes), but no driver publishing joint states.
    make("spy", **{TRAJECTORY: JointTrajectory, GRIPPER: Float64MultiArray})
    with pytest.raises(TimeoutError, match=r"no fresh message on \['/joint_states'.*DOMAIN_ID"):
        env.reset(seed=0)
    stand_in = make(
        "env", task="push", scene_reset_node="/nobody", node_name="other", reset_timeout=0.3
    )
    with pytest.raises(TimeoutError, match="service /nobody/set_parameters not available"):
        stand_in.reset(seed=0)


def test_a_failing_callback_does_not_stop_the_executor(ros_domain, caplog):  # noqa: F811
    from std_msgs.msg import String

    from hw.ros import command_qos

    runtime = RosRuntime(ros_domain)
    try:
        node = runtime.create_node("flaky")
        received = []

        def callback(msg) -> None:
            received.append(msg.data)
            if len(received) == 1:
                raise RuntimeError("the first message breaks this callback")

        node.create_subscription(String, "/flaky", callback, command_qos(depth=10))
        pub = node.create_publisher(String, "/flaky", command_qos(depth=10))
        wait_until(lambda: pub.get_subscription_count() > 0, 10.0, "the subscription")
        pub.publish(String(data="a"))
        wait_until(lambda: len(received) == 1, 10.0, "the first message")
        pub.publish(String(data="b"))
        wait_until(lambda: len(received) == 2, 10.0, "a message after the failure")
        assert "a ROS callback failed" in caplog.text
    finally:
        runtime.close()
