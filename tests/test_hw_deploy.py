"""`robolearn deploy` on the stand-in arm: the user's command, end to end over ROS 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.hw_fixtures import needs_rclpy, ros_domain  # noqa: F401 - fixture

pytestmark = needs_rclpy

pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra (pybullet)")

from robolearn.cli import main  # noqa: E402
from robolearn.data.store import EpisodeStore  # noqa: E402


def deploy(run_dir, *overrides: str) -> int:
    return main(["deploy", f"run_dir={run_dir}", "progress=false", *overrides])


def test_deploy_records_observations_actions_stamps_and_aborts(tmp_path, ros_domain):  # noqa: F811
    run = tmp_path / "run"
    assert deploy(run, "env=arm_reach", "episodes=2", "hw.env.controller=forward_command") == 0
    store = EpisodeStore.open(run / "episodes.zarr")
    assert store.n_episodes == 2
    assert store.attrs["env_id"] == "robolearn/ArmReach-v0"  # the twin: replayable in sim
    assert store.attrs["hw_env_id"] == "robolearn/ROS2ArmReach-v0"
    assert store.attrs["hw"]["env"]["controller"] == "forward_command"
    assert list(store.meta("seed")) == [0, 1]
    assert list(store.meta("source").astype(str)) == ["hw:standin_arm"] * 2
    assert list(store.meta("abort_reason").astype(str)) == ["", ""]
    assert store.meta("success").all()
    for i in range(2):
        episode = store.get_episode(i)
        stamps = episode["stamp_ns"]
        # Header stamps of the measurements: real, increasing by about one control period.
        assert stamps.dtype == np.int64 and np.all(np.diff(stamps) > 0)
        assert np.median(np.diff(stamps)) == pytest.approx(50e6, rel=0.3)
        assert np.all((episode["obs_latency"] > 0) & (episode["obs_latency"] < 0.2))
        assert episode["action"].shape[1] == 4 and np.isfinite(episode["action"]).all()
    report = json.loads((run / "report.json").read_text())
    assert report["success_rate"] == 1.0 and report["aborted_episodes"] == 0
    assert "up as /standin_arm" in (run / "standin.log").read_text()


def test_bc_policy_trained_in_mujoco_transfers_to_the_standin(tmp_path, ros_domain):  # noqa: F811
    """Train BC on MuJoCo reach demonstrations, deploy the checkpoint through ROS 2."""
    from robolearn.algos.bc import BCConfig, default_obs_keys, train_bc
    from robolearn.envs import make_env
    from robolearn.rollout import rollout
    from sims.arm.experts import make_expert

    env = make_env("robolearn/ArmReach-v0")
    store = EpisodeStore.create(tmp_path / "demos.zarr")
    rollout(make_expert("robolearn/ArmReach-v0"), env, 40, seed=0, store=store, progress=False)
    data = store.load()
    keys = default_obs_keys(data, list(env.observation_space.spaces))
    cfg = BCConfig(hidden=(128, 128), steps=1500, batch_size=128, lr=2e-3, log_every=500)
    policy = train_bc(data, store.episode_ends, keys, cfg, tmp_path / "train", progress=False)
    ckpt = policy.save(tmp_path / "policy")
    sim = rollout(policy, env, 6, seed=100, progress=False)

    run = tmp_path / "deploy"
    assert deploy(run, f"policy={ckpt}", "env=arm_reach", "episodes=6", "seed=100") == 0
    report = json.loads((run / "report.json").read_text())
    assert report["aborted_episodes"] == 0
    assert report["success_rate"] >= max(0.5, sim.success_rate - 0.34), (sim.success_rate, report)


def test_deploy_refuses_tasks_without_hardware_and_reports_a_dead_standin(
    tmp_path,
    ros_domain,  # noqa: F811
    capsys,
):
    assert deploy(tmp_path / "mw", "env=metaworld_reach") == 2
    assert "env.id='robolearn/MetaWorld-reach-v3': has no ROS 2 hardware env" in (
        capsys.readouterr().err
    )
    assert deploy(tmp_path / "q", "env=quadrotor", "hw=standin_arm") == 2
    assert "hw.name='standin_arm': is for the arm (hw.robot)" in capsys.readouterr().err
    code = deploy(
        tmp_path / "dead", "env=arm_reach", "hw.standin.state_hz=-1", "hw.env.reset_timeout=3"
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "the stand-in arm exited" in err and "state_hz must be positive" in err
