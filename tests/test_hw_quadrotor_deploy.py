"""`robolearn deploy policy=raptor_released hw=standin_quadrotor`: the user's command, end to
end over ROS 2, and the deployment's MCAP bag imported back into an EpisodeStore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.hw_fixtures import (  # noqa: F401 - fixture
    ATTEMPTS,
    machine_stalls,
    needs_rclpy,
    ros_domain,
)

pytestmark = needs_rclpy

pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")
pytest.importorskip("foundation_policy", reason="the released RAPTOR policy (baselines extra)")

from hw.safety import LOOP_STALL, WATCHDOG  # noqa: E402
from robolearn.cli import main  # noqa: E402
from robolearn.data.rosbag import read_bag  # noqa: E402
from robolearn.data.store import EpisodeStore  # noqa: E402

#: The two driver interfaces: nav_msgs/Float32MultiArray in PX4's frame and motor conventions,
#: and PX4's own px4_msgs topics (hw.quadrotor_msgs).
INTERFACES = {
    "ros": ["hw.env.frame=ned_frd", "hw.env.command_order=px4"],
    "px4": ["hw.env.interface=px4"],
}
TOPICS = {
    "ros": ("/odometry", "/motor_commands", "ned_frd"),
    "px4": ("/fmu/out/vehicle_odometry", "/fmu/in/actuator_motors", "px4_msgs"),
}


@pytest.fixture(scope="module", params=sorted(INTERFACES))
def deployment(request, tmp_path_factory):
    """One x500 episode (5 s, RAPTOR's initial-state distribution) on the stand-in in PX4's
    conventions, as the README's command runs it; the run folder and the interface.

    Deployed again (at most ``ATTEMPTS`` times in all) when the machine stalled the flight, as
    ``tests.hw_fixtures.machine_stalls`` explains: late or stale observations, a loop stall or
    a watchdog abort (the report counts those safety events)."""
    import os

    if request.param == "px4":
        pytest.importorskip("px4_msgs", reason="px4_msgs is built by ./setup.sh")
    for _ in range(ATTEMPTS):
        run = tmp_path_factory.mktemp("quad") / "run"
        with pytest.MonkeyPatch.context() as env:
            # Like tests.hw_fixtures.ros_domain, for a module-scoped fixture.
            env.setenv("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))
            env.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
            code = main(
                [
                    "deploy",
                    "policy=raptor_released",
                    "hw=standin_quadrotor",
                    "episodes=1",
                    "seed=3",
                    "env.kwargs.params=x500",
                    "env.kwargs.terminate_on_velocity=false",  # RAPTOR's evaluation protocol
                    *INTERFACES[request.param],
                    f"run_dir={run}",
                    "progress=false",
                ]
            )
        assert code == 0
        report = json.loads((run / "report.json").read_text())
        episode = EpisodeStore.open(run / "episodes.zarr").get_episode(0)
        stalls = machine_stalls(episode["stamp_ns"], episode["obs_latency"])
        stalls += [
            f"{kind}: {report['safety_events'][kind]}"
            for kind in (LOOP_STALL, WATCHDOG)
            if kind in report["safety_events"]
        ]
        if not stalls:
            return run, request.param
    pytest.fail(f"the machine stalled each of {ATTEMPTS} deployments: {stalls}")


def test_deploy_records_the_flight(deployment):
    deployment, interface = deployment
    odometry, command, label = TOPICS[interface]
    store = EpisodeStore.open(deployment / "episodes.zarr")
    assert store.attrs["env_id"] == "robolearn/Quadrotor-v0"  # the twin: replayable in sim
    assert store.attrs["hw_env_id"] == "robolearn/ROS2Quadrotor-v0"
    assert store.attrs["observation_keys"] == ["obs"]
    assert store.n_episodes == 1 and list(store.meta("seed")) == [3]
    episode = store.get_episode(0)
    assert episode["obs"].shape == (500, 22) and episode["action"].shape == (500, 4)
    assert np.all(np.diff(episode["stamp_ns"]) > 0)
    assert np.median(np.diff(episode["stamp_ns"])) == pytest.approx(10e6, rel=0.2)  # 100 Hz
    assert np.all((episode["obs_latency"] > 0) & (episode["obs_latency"] < 0.3))
    report = json.loads((deployment / "report.json").read_text())
    assert report["survival_rate"] == 1.0
    assert report["final_error_m"]["mean"] < 0.06  # measured 2.5 cm (the simulator: 2 cm)
    assert f"(x500, {label}) up as /standin_quadrotor" in (deployment / "standin.log").read_text()
    topics = {m.topic for m in read_bag(deployment / "bag")}
    assert {odometry, command, "/robolearn/action"} <= topics


def test_deploy_refuses_a_sampled_vehicle(tmp_path, ros_domain, capsys):  # noqa: F811
    code = main(
        ["deploy", "policy=raptor_released", "hw=standin_quadrotor", "env.kwargs.params=sampled"]
        + [f"run_dir={tmp_path}", "progress=false"]
    )
    assert code == 1
    assert "env.kwargs.params='sampled': hardware is one vehicle" in capsys.readouterr().err


def test_deployment_bag_imports_back_into_the_store(deployment, tmp_path):
    from hw.logs import import_bag

    deployment, _ = deployment
    store = EpisodeStore.open(deployment / "episodes.zarr")
    back = import_bag(deployment / "bag", tmp_path / "back.zarr")
    assert back.attrs["env_id"] == "robolearn/Quadrotor-v0" and back.n_episodes == 1
    a, b = store.get_episode(0), back.get_episode(0)
    # The newest odometry logged before each action is what the policy saw: same 22 numbers.
    for key in ("obs", "action", "stamp_ns", "terminated"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["position_error"], b["position_error"], atol=1e-6)
    np.testing.assert_allclose(a["reward"], b["reward"], atol=1e-4)
    assert back.episode_meta(0)["seed"] == 3


def test_foreign_bag_in_px4_conventions(tmp_path):
    """PX4-style odometry (NED/FRD, world-frame velocity) at 100 Hz on a sensor clock 5 s off
    the recorder's, and PX4-ordered motor setpoints: resampled onto the policy's 100 Hz, in
    ENU/FLU, with the actions in policy order."""
    from hw.frames import policy_frame_to_odometry, policy_to_px4
    from hw.logs import import_bag
    from robolearn.data.rosbag import BagWriter, serialize, typestore

    types = typestore().types
    t0, offset = 1_700_000_000_000_000_000, 5_000_000_000
    setpoint = np.array([0.6, 0.5, 0.4, 0.55])  # FR, BR, BL, FL

    def enu_state(t: float):
        yaw = 0.3 * t  # turning left, climbing, drifting east
        q = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
        return (
            np.array([0.5 * t, 0.1, 1 + 0.2 * t]),
            q,
            np.array([0.5, 0, 0.2]),
            np.array([0, 0, 0.3]),
        )

    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/odometry", "nav_msgs/msg/Odometry")
        bag.add_topic("/motor_commands", "std_msgs/msg/Float32MultiArray")
        for k in range(201):  # 2 s at 100 Hz
            stamp = t0 + k * 10_000_000
            p, q, v, w = policy_frame_to_odometry(*enu_state(k / 100), "ned_frd", False)
            sec, nanosec = divmod(stamp, 1_000_000_000)
            msg = types["nav_msgs/msg/Odometry"](
                header=types["std_msgs/msg/Header"](
                    stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                    frame_id="odom_ned",
                ),
                child_frame_id="base_link_frd",
                pose=types["geometry_msgs/msg/PoseWithCovariance"](
                    pose=types["geometry_msgs/msg/Pose"](
                        position=types["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                        orientation=types["geometry_msgs/msg/Quaternion"](
                            w=q[0], x=q[1], y=q[2], z=q[3]
                        ),
                    ),
                    covariance=np.zeros(36),
                ),
                twist=types["geometry_msgs/msg/TwistWithCovariance"](
                    twist=types["geometry_msgs/msg/Twist"](
                        linear=types["geometry_msgs/msg/Vector3"](x=v[0], y=v[1], z=v[2]),
                        angular=types["geometry_msgs/msg/Vector3"](x=w[0], y=w[1], z=w[2]),
                    ),
                    covariance=np.zeros(36),
                ),
            )
            bag.write(
                "/odometry", serialize(msg, "nav_msgs/msg/Odometry"), stamp + offset + 2_000_000
            )
            command = types["std_msgs/msg/Float32MultiArray"](
                layout=types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                data=policy_to_px4(setpoint).astype(np.float32),
            )
            bag.write(
                "/motor_commands",
                serialize(command, "std_msgs/msg/Float32MultiArray"),
                stamp + offset + 4_000_000,
            )
    store = import_bag(
        tmp_path / "bag",
        tmp_path / "out.zarr",
        env_id="robolearn/Quadrotor-v0",
        frame="ned_frd",
        twist_in_body=False,
        command_order="px4",
        target=[0.0, 0.0, 1.0],
        vehicle="x500",
    )
    episode = store.get_episode(0)
    assert len(episode["action"]) == 200
    np.testing.assert_allclose(episode["action"], np.tile(2 * setpoint - 1, (200, 1)), atol=1e-6)
    for k in (0, 50, 199):
        p, q, v, w = enu_state(k / 100)
        obs = episode["obs"][k]
        np.testing.assert_allclose(obs[:3], np.clip(p - [0, 0, 1], -0.5, 0.5), atol=1e-6)
        np.testing.assert_allclose(obs[12:15], v, atol=1e-6)
        np.testing.assert_allclose(obs[15:18], w, atol=1e-6)
        yaw = 0.3 * k / 100
        np.testing.assert_allclose(obs[3:5], [np.cos(yaw), -np.sin(yaw)], atol=1e-5)
    np.testing.assert_allclose(episode["obs"][1:, 18:], episode["action"][:-1], atol=1e-6)
    np.testing.assert_array_equal(episode["stamp_ns"], t0 + np.arange(200) * 10_000_000)


def test_deployment_replays_in_the_simulator(deployment, tmp_path):
    """The logged actions re-executed open loop in robolearn/Quadrotor-v0 from the seed: the
    same start (the stand-in's first odometry is one period into the flight), then drift."""
    deployment, _ = deployment
    run = tmp_path / "replay"
    assert main(["replay", f"log={deployment}", f"run_dir={run}", "video_episodes=0"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 500 and report["seed"] == 3
    assert report["per_step"]["obs"][0] < 0.1
