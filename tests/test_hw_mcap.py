"""rosbag2 MCAP logs: crash safety, store <-> bag round trips, import of foreign bags, and a
stand-in deployment's bag replayed onto ROS topics and through a policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hw.logs import ArmLogImporter, export_store, import_bag
from robolearn.cli import main
from robolearn.data.rosbag import (
    ACTION_TOPIC,
    BagWriter,
    open_bag,
    read_bag,
    serialize,
    typestore,
)
from robolearn.data.store import EpisodeStore
from robolearn.robots.panda import HOME_QPOS, JOINT_NAMES, ArmIK
from tests.hw_fixtures import needs_rclpy, wait_until

JOINT_STATE = "sensor_msgs/msg/JointState"
KILLED_WRITER = """
import sys, time
import numpy as np
from robolearn.data.rosbag import BagWriter, action_message
with BagWriter(sys.argv[1], {"robolearn": "{}"}, flush_seconds=0.05) as bag:
    bag.add_topic("/robolearn/action", "std_msgs/msg/Float32MultiArray")
    i = 0
    while True:
        bag.write("/robolearn/action", action_message([i, i + 0.5]), 1_000_000 * i)
        i += 1
        if i == 50:
            print("ready", flush=True)
        time.sleep(0.001)
"""


def _stamp(ns: int):
    types = typestore().types
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id="world"
    )


def test_a_killed_recording_leaves_a_readable_bag(tmp_path):
    bag = tmp_path / "bag"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(bag)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (bag / "metadata.yaml").exists()
    messages = list(read_bag(bag))  # repairs the bag first
    assert (bag / "metadata.yaml").exists()
    # Everything up to the last flush survives, in order and intact.
    assert len(messages) >= 50
    for i, m in enumerate(messages):
        assert m.log_ns == 1_000_000 * i
        assert m.decode().data.tolist() == [i, i + 0.5]
    reader = open_bag(bag)  # a repaired bag is an ordinary closed bag now
    assert reader.message_count == len(messages)
    reader.close()


@pytest.fixture(scope="module")
def push_store(tmp_path_factory):
    from robolearn.envs import make_env
    from robolearn.rollout import rollout
    from sims.arm.experts import make_expert

    root = tmp_path_factory.mktemp("mcap")
    store = EpisodeStore.create(
        root / "push.zarr", attrs={"env_id": "robolearn/ArmPush-v0", "control_hz": 20.0}
    )
    env = make_env("robolearn/ArmPush-v0")
    rollout(make_expert("robolearn/ArmPush-v0"), env, 2, seed=3, store=store, progress=False)
    return store


def test_store_to_bag_to_store_round_trip(push_store, tmp_path):
    export_store(push_store, tmp_path / "bag")
    back = import_bag(tmp_path / "bag", tmp_path / "back.zarr")
    assert back.attrs["env_id"] == "robolearn/ArmPush-v0" and back.n_episodes == 2
    for i in range(2):
        a, b = push_store.get_episode(i), back.get_episode(i)
        for key in ("action", "joint_pos", "gripper", "object_pos", "goal_pos", "terminated"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a["timestamp"], b["timestamp"])
        # ee_pos is recomputed by forward kinematics from the float32 joint positions.
        np.testing.assert_allclose(a["ee_pos"], b["ee_pos"], atol=1e-6)
        np.testing.assert_allclose(a["reward"], b["reward"], atol=1e-5)
        meta_a, meta_b = push_store.episode_meta(i), back.episode_meta(i)
        assert (meta_a["seed"], meta_a["success"]) == (meta_b["seed"], meta_b["success"])


def test_foreign_bag_with_reordered_and_extra_joints(tmp_path):
    """A 100 Hz JointState in another joint order with extra joints, 20 Hz JointTrajectory
    commands naming joints in yet another order, and a goal pose, on a sensor clock 5 s off
    the recorder's: resampled onto 20 Hz by header stamps, actions recovered from commands."""
    types = typestore().types
    ik = ArmIK()
    t0 = 1_700_000_000_000_000_000

    def q_at(t: float) -> np.ndarray:
        return HOME_QPOS + 0.15 * np.sin(2 * np.pi * 0.4 * t + np.arange(7))

    names = [
        "conveyor",
        *reversed(JOINT_NAMES),
        "panda_finger_joint2",
        "aux",
        "panda_finger_joint1",
    ]
    cmd_order = [JOINT_NAMES[i] for i in (3, 0, 6, 1, 5, 2, 4)]
    offset = 5_000_000_000  # recorder clock minus sensor clock
    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/joint_states", JOINT_STATE)
        bag.add_topic("/goal_pose", "geometry_msgs/msg/PoseStamped")
        bag.add_topic("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory")
        for k in range(301):  # 3 s at 100 Hz
            t = k / 100
            stamp = t0 + k * 10_000_000
            q = q_at(t)
            by_name = dict(zip(JOINT_NAMES, q)) | {"panda_finger_joint1": 0.02}
            by_name |= {"panda_finger_joint2": 0.02, "conveyor": 9.0, "aux": -9.0}
            msg = types[JOINT_STATE](
                header=_stamp(stamp),
                name=names,
                position=np.array([by_name[n] for n in names]),
                velocity=np.zeros(0),
                effort=np.zeros(0),
            )
            bag.write("/joint_states", serialize(msg, JOINT_STATE), stamp + offset + 2_000_000)
            if k % 10 == 0:
                pose = types["geometry_msgs/msg/PoseStamped"](
                    header=_stamp(stamp),
                    pose=types["geometry_msgs/msg/Pose"](
                        position=types["geometry_msgs/msg/Point"](x=0.5, y=0.1, z=0.3),
                        orientation=types["geometry_msgs/msg/Quaternion"](x=0, y=0, z=0, w=1),
                    ),
                )
                bag.write(
                    "/goal_pose",
                    serialize(pose, "geometry_msgs/msg/PoseStamped"),
                    stamp + offset,
                )
            if k % 5 == 0:  # a command 3 ms after each 20 Hz tick, for the next tick's posture
                target = dict(zip(JOINT_NAMES, q_at(t + 0.05)))
                traj_t = types["trajectory_msgs/msg/JointTrajectory"]
                point = types["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=np.array([target[n] for n in cmd_order]),
                    velocities=np.zeros(0),
                    accelerations=np.zeros(0),
                    effort=np.zeros(0),
                    time_from_start=types["builtin_interfaces/msg/Duration"](
                        sec=0, nanosec=50_000_000
                    ),
                )
                traj = traj_t(header=_stamp(0), joint_names=cmd_order, points=[point])
                bag.write(
                    "/arm_controller/joint_trajectory",
                    serialize(traj, "trajectory_msgs/msg/JointTrajectory"),
                    stamp + offset + 3_000_000,
                )
    store = import_bag(tmp_path / "bag", tmp_path / "out.zarr", env_id="robolearn/ArmReach-v0")
    episode = store.get_episode(0)
    n = len(episode["action"])
    assert n == 60  # 3 s at 20 Hz
    grid = np.arange(n) * 0.05
    expected_q = np.stack([q_at(t) for t in grid])
    np.testing.assert_allclose(episode["joint_pos"], expected_q, atol=2e-3)
    np.testing.assert_allclose(episode["gripper"], 0.04, atol=1e-6)
    np.testing.assert_allclose(episode["goal_pos"], np.tile([0.5, 0.1, 0.3], (n, 1)), atol=1e-6)
    np.testing.assert_array_equal(episode["stamp_ns"], t0 + np.arange(n) * 50_000_000)
    # The command issued after tick k asks for tick k+1's posture: the action is the TCP's move.
    expected = np.stack(
        [(ik.fk(q_at(t + 0.05))[0] - ik.fk(q_at(t))[0]) / ik.max_step for t in grid]
    )
    np.testing.assert_allclose(episode["action"][:, :3], np.clip(expected, -1, 1), atol=0.05)
    np.testing.assert_allclose(episode["action"][:, 3], 2 * 0.04 / 0.08 - 1, atol=1e-6)
    assert store.attrs["env_id"] == "robolearn/ArmReach-v0" and store.meta("seed")[0] == -1


def test_import_names_missing_topics(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/joint_states", JOINT_STATE)
    importer = ArmLogImporter("push")
    with pytest.raises(ValueError, match="/object_pose"):
        list(importer.episodes(list(read_bag(tmp_path / "bag"))))


# --- a stand-in deployment over ROS 2 -------------------------------------------------------


class RawSpy:
    """A separate participant keeping the serialized bytes and arrival time of every message."""

    def __init__(self, domain: int, topics: dict[str, type]) -> None:
        from hw.ros import RosRuntime, command_qos

        self.runtime = RosRuntime(domain)
        node = self.runtime.create_node("raw_spy")
        self.messages: dict[str, list[tuple[float, bytes]]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        for topic, msg_type in topics.items():
            node.create_subscription(
                msg_type,
                topic,
                lambda data, t=topic: self._add(t, data),
                command_qos(depth=5000),
                raw=True,
            )

    def _add(self, topic: str, data: bytes) -> None:
        with self._lock:
            self.messages[topic].append((time.monotonic(), bytes(data)))

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Two expert reach episodes on the stand-in arm through ROS 2, recorded into a store and a
    bag, with a raw spy listening on the same topics."""
    # Like tests.hw_fixtures.ros_domain, for a module-scoped fixture: this process's own domain.
    domain = 101 + os.getpid() % 100
    pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from hw.arm_env import ROS2ArmEnv
    from hw.recorder import TopicRecorder
    from hw.standin_arm import StandInArm
    from robolearn.rollout import rollout
    from sims.arm.experts import ArmExpert

    root = tmp_path_factory.mktemp("deploy")
    topics = {
        "/joint_states": JointState,
        "/arm_controller/commands": Float64MultiArray,
        "/gripper_controller/commands": Float64MultiArray,
    }
    spy = RawSpy(domain, topics)
    standin = StandInArm({"task": "reach", "extra_joints": ["conveyor"]}, domain_id=domain)
    # Messages published before a subscriber matches are lost to it: the env starts listening
    # only once the spy hears the stand-in, and commands only once the spy hears the env, so the
    # spy gets everything the env receives and sends.
    wait_until(lambda: len(spy.messages["/joint_states"]) > 0, 15.0, "the spy hearing joints")
    env = ROS2ArmEnv(
        task="reach",
        controller="forward_command",
        scene_reset_node="/standin_arm",
        domain_id=domain,
    )
    wait_until(
        lambda: (
            min(
                env._command_pub.get_subscription_count(), env._gripper_pub.get_subscription_count()
            )
            >= 2
        ),
        15.0,
        "the stand-in and the spy subscribing the commands",
    )
    store = EpisodeStore.create(
        root / "episodes.zarr", attrs={"env_id": "robolearn/ArmReach-v0", "control_hz": 20.0}
    )
    env.attach_recorder(TopicRecorder(root / "bag", {"env_id": "robolearn/ArmReach-v0"}))
    try:
        rollout(
            ArmExpert("reach"),
            env,
            2,
            seed=0,
            store=store,
            progress=False,
            info_keys=("stamp_ns", "obs_latency"),
            episode_info_keys=("abort_reason",),
        )
    finally:
        env.close()
        standin.close()
        time.sleep(0.2)
        spy.close()
    return {"root": root, "store": store, "bag": root / "bag", "spy": spy, "domain": domain}


@needs_rclpy
def test_deployment_bag_reproduces_the_store_and_the_wire_bytes(deployment, tmp_path):
    store, bag = deployment["store"], deployment["bag"]
    assert store.n_episodes == 2 and store.meta("success").all()
    back = import_bag(bag, tmp_path / "back.zarr")
    assert back.n_episodes == 2
    for i in range(2):
        a, b = store.get_episode(i), back.get_episode(i)
        # The newest message of each topic logged before the action is what the policy saw.
        for key in ("joint_pos", "ee_pos", "gripper", "goal_pos", "action", "stamp_ns", "reward"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a["terminated"], b["terminated"])
        np.testing.assert_allclose(a["obs_latency"], b["obs_latency"], atol=5e-3)
        assert store.episode_meta(i)["seed"] == back.episode_meta(i)["seed"] == i
        assert back.episode_meta(i)["success"]
    spy = deployment["spy"].messages
    recorded = {}
    for m in read_bag(bag):
        recorded.setdefault(m.topic, []).append(m.data)
    # Every joint state the env received is byte-equal to one on the wire (extra joint and
    # all); the commands the env sent arrived, in order, exactly as recorded.
    wire = {data for _, data in spy["/joint_states"]}
    assert len(recorded["/joint_states"]) > 100
    assert all(data in wire for data in recorded["/joint_states"])
    for topic in ("/arm_controller/commands", "/gripper_controller/commands"):
        assert recorded[topic] == [data for _, data in spy[topic]], topic
    assert len(recorded[ACTION_TOPIC]) == store.n_steps


@needs_rclpy
def test_bag_played_back_onto_ros_topics_at_its_timing(deployment, tmp_path):
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from hw.player import play_bag

    bag, domain = deployment["bag"], deployment["domain"]
    topics = {"/joint_states": JointState, "/arm_controller/commands": Float64MultiArray}
    logged = [m for m in read_bag(bag, topics) if m.log_ns]
    spy = RawSpy(domain, topics)
    try:
        summary = play_bag(bag, topics, rate=2.0, domain_id=domain, wait_for_subscribers=5.0)
        wait_until(
            lambda: sum(len(spy.messages[t]) for t in topics) >= len(logged), 10.0, "the replay"
        )
    finally:
        spy.close()
    assert summary["messages"] == len(logged)
    for topic in topics:
        sent = [m for m in logged if m.topic == topic]
        got = spy.messages[topic]
        assert [data for _, data in got] == [m.data for m in sent], topic  # order and content
        # Arrival times follow the log times at twice the speed, up to a constant transport
        # latency: the first arrival alone is no reference (measured once 7.7 ms late, which
        # read as every later message being early by as much).
        want = (np.array([m.log_ns for m in sent]) - sent[0].log_ns) * 1e-9 / 2.0
        have = np.array([t for t, _ in got]) - got[0][0]
        error = np.abs(have - want - np.median(have - want))
        assert np.median(error) < 0.005 and error.max() < 0.15, (np.median(error), error.max())


@needs_rclpy
def test_policy_rerun_and_sim_replay_reports(deployment, tmp_path):
    store = deployment["store"]
    run = tmp_path / "rerun"
    args = ["replay", f"log={store.path}", "policy=expert", "to=policy", "env=arm_reach"]
    assert main([*args, f"run_dir={run}", "progress=false"]) == 0
    report = json.loads((run / "report.json").read_text())
    # The scripted expert is a function of the observation: it re-issues the logged actions.
    assert report["steps"] == store.n_steps and report["max_action_difference"] < 1e-6
    assert (run / "actions.png").stat().st_size > 0
    sim = tmp_path / "sim"
    assert main(["replay", f"log={store.path}", f"run_dir={sim}", "video_episodes=0"]) == 0
    report = json.loads((sim / "report.json").read_text())
    # The PyBullet stand-in (with latency and noise) vs MuJoCo: similar, not equal.
    assert 0 < report["max_divergence"] < 0.5
    assert report["final_divergence"] <= report["max_divergence"]
    # One divergence per replayed step: all of the log's, unless the simulation ends the episode
    # first (the stand-in's latency and noise can make MuJoCo reach the goal a step earlier).
    assert report["steps"] == store.episode_lengths[0]
    assert 0 < report["replayed_steps"] <= report["steps"]
    assert len(report["per_step"]["joint_pos"]) == report["replayed_steps"]
    assert (sim / "divergence.png").stat().st_size > 0
