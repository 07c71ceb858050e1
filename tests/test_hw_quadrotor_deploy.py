"""`robolearn deploy policy=raptor_released hw=standin_quadrotor`: the user's command, end to
end over ROS 2, and the deployment's MCAP bag imported back into an EpisodeStore."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.hw_fixtures import needs_rclpy, ros_domain  # noqa: F401 - fixture

pytestmark = needs_rclpy

pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")
pytest.importorskip("foundation_policy", reason="the released RAPTOR policy (baselines extra)")

from robolearn.cli import main  # noqa: E402
from robolearn.data.rosbag import read_bag  # noqa: E402
from robolearn.data.store import EpisodeStore  # noqa: E402


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One x500 episode (5 s, RAPTOR's initial-state distribution) on the stand-in in PX4's
    conventions, as the README's command runs it."""
    import os

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
                "hw.env.frame=ned_frd",
                "hw.env.command_order=px4",
                f"run_dir={run}",
                "progress=false",
            ]
        )
    assert code == 0
    return run


def test_deploy_records_the_flight(deployment):
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
    assert "(x500, ned_frd) up as /standin_quadrotor" in (deployment / "standin.log").read_text()
    topics = {m.topic for m in read_bag(deployment / "bag")}
    assert {"/odometry", "/motor_commands", "/robolearn/action"} <= topics


def test_deploy_refuses_a_sampled_vehicle(tmp_path, ros_domain, capsys):  # noqa: F811
    code = main(
        ["deploy", "policy=raptor_released", "hw=standin_quadrotor", "env.kwargs.params=sampled"]
        + [f"run_dir={tmp_path}", "progress=false"]
    )
    assert code == 1
    assert "env.kwargs.params='sampled': hardware is one vehicle" in capsys.readouterr().err
