"""The robolearn command: every verb end to end on the arm, and clear one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from robolearn.cli import main, resumed_config
from robolearn.data.store import EpisodeStore

QUICK = ["progress=false", "seed=0"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Five clean expert reach episodes, recorded through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "demos.zarr"
    code = main(
        [
            "record",
            "env=arm_reach",
            "policy=expert",
            "episodes=5",
            f"out={out}",
            f"run_dir={root / 'record'}",
            *QUICK,
        ]
    )
    assert code == 0
    return out


def test_record_writes_a_store_with_env_attributes(demos):
    store = EpisodeStore.open(demos)
    assert store.n_episodes == 5
    assert store.attrs["env_id"] == "robolearn/ArmReach-v0"
    assert store.attrs["robot_spec"]["name"]
    assert store.attrs["control_hz"] == 20
    assert store.meta("success").all()
    assert {"action", "ee_pos", "goal_pos", "reward", "terminated", "timestamp"} <= set(store.keys)


def test_info(demos, capsys):
    assert main(["info", str(demos)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 5 and info["success_rate"] == 1.0 and info["control_hz"] == 20


def test_replay_reproduces_recorded_states(demos, tmp_path, capsys):
    assert main(["replay", f"log={demos}", "episode=2", f"run_dir={tmp_path / 'r'}", *QUICK]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["max_divergence"] < 1e-9
    assert report["replayed_steps"] == report["steps"]  # the same simulator: the whole episode
    assert (tmp_path / "r" / "replay.mp4").stat().st_size > 0


def test_train_eval_and_resume(demos, tmp_path):
    run = tmp_path / "train"
    args = [
        "train",
        f"data={demos}",
        "algo.steps=60",
        "algo.checkpoint_every=30",
        "episodes=2",
        "video_episodes=1",
        f"run_dir={run}",
        *QUICK,
    ]
    assert main(args) == 0
    for name in (
        "config.yaml",
        "loss.png",
        "eval.png",
        "eval.mp4",
        "report.md",
        "report.json",
        "policy/policy.json",
        "checkpoints/latest/train_state.pt",
        "metrics.csv",
    ):
        assert (run / name).exists(), name
    # Resuming a finished run continues from its last checkpoint and trains nothing more.
    assert main(["train", f"resume={run}", *QUICK]) == 0
    assert (run / "metrics.csv").read_text().count("train/loss") == 1

    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                f"policy={run / 'policy'}",
                "env=arm_reach",
                "episodes=2",
                "video_episodes=1",
                f"run_dir={out}",
                *QUICK,
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 2 and 0.0 <= report["success_rate"] <= 1.0


def test_record_resume_continues_to_the_episode_count(tmp_path):
    run = tmp_path / "rec"
    assert main(["record", "env=arm_reach", "episodes=2", f"run_dir={run}", *QUICK]) == 0
    assert main(["record", f"resume={run}", "episodes=3", *QUICK]) == 0
    store = EpisodeStore.open(run / "episodes.zarr")
    assert store.n_episodes == 3
    np.testing.assert_array_equal(store.meta("seed"), [0, 1, 2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "episods=5"], "unknown config key 'episods' (did you mean 'episodes'?)"),
        (["eval", "env=arm_pusj"], "env=arm_pusj: no such option"),
        (["eval", "episodes=0"], "episodes=0: must be an integer >= 1"),
        (["eval", "device=tpu"], "device='tpu'"),
        (["eval", "policy=/no/such/ckpt"], "policy.path='/no/such/ckpt'"),
        (["train", "algo.lr=-1", "data=/"], "algo.lr=-1: must be > 0"),
        (["replay"], "log=None: is required"),
        (["train", "data=/no/such/store.zarr"], "data='/no/such/store.zarr': does not exist"),
        (["eval", "env.id=robolearn/Nope-v0"], "env.id='robolearn/Nope-v0': unknown environment"),
        (["record", "policy.noise=abc"], "policy.noise='abc': must be >= 0"),
        (["train", "algo.activation=foo"], "algo.activation='foo': must be one of"),
        (["train", "algo.steps=abc"], "algo.steps='abc': must be an integer >= 1"),
        (["train", "algo.obs_keys=foo"], "algo.obs_keys='foo': must be null or a list"),
        (["eval", "device=cuda:7"], "device='cuda:7'"),
        (["train", "algo=raptor", "algo.teachers=0"], "teachers=0: must be an integer >= 1"),
        (["train", "algo=raptor", "algo.distill.lr=0"], "distill.lr=0: must be > 0"),
        (["train", "algo=raptor", "env=arm_push"], "algo=raptor trains quadrotors"),
    ],
)
def test_bad_config_fails_with_one_clear_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_or_corrupted_store_names_its_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 1
    assert "missing.zarr" in capsys.readouterr().err
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{garbage")
    assert main(["info", str(bad)]) == 1
    assert "bad.zarr" in capsys.readouterr().err


def test_unknown_verb(capsys):
    assert main(["fly"]) == 2
    assert "unknown verb 'fly'" in capsys.readouterr().err


def test_resume_rejects_typos_and_group_changes(tmp_path, capsys):
    run = tmp_path / "rec"
    assert main(["record", "env=arm_reach", "episodes=1", f"run_dir={run}", *QUICK]) == 0
    assert main(["record", f"resume={run}", "epsiodes=3"]) == 2
    assert "unknown config key 'epsiodes'" in capsys.readouterr().err
    assert main(["record", f"resume={run}", "env=arm_push"]) == 2
    assert "a resumed run keeps its env" in capsys.readouterr().err


def test_resume_fills_keys_added_since_the_run_with_their_defaults(tmp_path):
    run = tmp_path / "rec"
    assert main(["record", "env=arm_reach", "episodes=1", f"run_dir={run}", *QUICK]) == 0
    saved = OmegaConf.load(run / "config.yaml")
    del saved.video_episodes  # as if the run predates the key
    del saved.env.kwargs
    saved.episodes = 2  # and a saved value wins over the default
    OmegaConf.save(saved, run / "config.yaml")
    cfg = resumed_config([f"resume={run}"])
    assert cfg.video_episodes == 3 and "kwargs" in cfg.env and cfg.episodes == 2


def test_policy_for_another_env_fails_in_one_line(tmp_path, capsys):
    # A push policy reads object_pos, which the reach env does not observe.
    push = tmp_path / "push.zarr"
    assert (
        main(
            [
                "record",
                "env=arm_push",
                "episodes=1",
                f"out={push}",
                f"run_dir={tmp_path / 'r'}",
                *QUICK,
            ]
        )
        == 0
    )
    run = tmp_path / "train"
    assert (
        main(
            [
                "train",
                f"data={push}",
                "algo.steps=5",
                "algo.val_ratio=0",
                "episodes=1",
                "video_episodes=0",
                f"run_dir={run}",
                *QUICK,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                f"policy={run / 'policy'}",
                "env=arm_reach",
                "episodes=1",
                f"run_dir={tmp_path / 'e'}",
                *QUICK,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "observation lacks keys ['object_pos']" in err and "\n" not in err


def test_quadrotor_record_and_replay_with_the_released_policy(tmp_path):
    out = tmp_path / "quad.zarr"
    assert (
        main(
            [
                "record",
                "env=quadrotor",
                "policy=raptor_released",
                "episodes=2",
                f"out={out}",
                f"run_dir={tmp_path / 'rec'}",
                *QUICK,
            ]
        )
        == 0
    )
    store = EpisodeStore.open(out)
    assert store.n_episodes == 2 and store.attrs["control_hz"] == 100
    assert store.get_episode(0)["obs"].shape[1] == 22
    assert main(["replay", f"log={out}", "episode=1", f"run_dir={tmp_path / 'r'}", *QUICK]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["max_divergence"] == 0.0


def test_quadrotor_eval_runs_the_raptor_protocol(tmp_path, capsys):
    run = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "env=quadrotor",
                "policy=raptor_released",
                "episodes=8",
                f"run_dir={run}",
                *QUICK,
            ]
        )
        == 0
    )
    assert "survival" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["held_out"]["episodes"] == 8 and len(report["held_out"]["per_vehicle"]) == 8
    for name in ("trajectories.png", "figure_eight.png", "trajectories.mp4", "report.md"):
        assert (run / name).exists(), name


def test_raptor_pipeline_end_to_end_and_resume(tmp_path, capsys):
    run = tmp_path / "raptor"
    tiny = [
        "algo=raptor_small",
        "algo.teachers=2",
        "algo.teacher.steps=400",
        "algo.teacher.sac.warmup_steps=200",
        "algo.teacher.sac.batch_size=32",
        "algo.distill.epochs=2",
        "algo.distill.episode_steps=50",
        "algo.distill.episodes_per_teacher=2",
        "algo.eval_vehicles=4",
    ]
    assert main(["train", *tiny, f"run_dir={run}", *QUICK]) == 0
    for name in (
        "teachers/policy.json",
        "policy/policy.json",
        "export/raptor_student.py",
        "export/raptor_student.h",
        "distill.png",
        "eval/report.md",
    ):
        assert (run / name).exists(), name
    assert "| held-out survival (%) |" in capsys.readouterr().out
    stages = json.loads((run / "raptor_summary.json").read_text())["stage_wall_s"]
    assert set(stages) == {"teachers", "selection", "distillation"}
    assert all(seconds > 0 for seconds in stages.values())
    saved = OmegaConf.load(run / "config.yaml")  # algo=raptor brings its env along
    assert (saved.env.name, saved.env.id) == ("quadrotor", "robolearn/Quadrotor-v0")
    # A resumed run reuses the trained teachers instead of training them again.
    assert main(["train", f"resume={run}", *QUICK]) == 0
    assert "loading the 2 trained teachers" in capsys.readouterr().out
    stages = json.loads((run / "raptor_summary.json").read_text())["stage_wall_s"]
    assert set(stages) == {"distillation"}  # the teachers and their selection were loaded


def test_diffusion_then_dsrl_steering_and_resume(demos, tmp_path):
    base_run = tmp_path / "diffusion"
    args = [
        "train",
        "algo=diffusion_mlp",
        f"data={demos}",
        "algo.steps=40",
        "algo.log_every=20",
        "episodes=2",
        "video_episodes=0",
        f"run_dir={base_run}",
        *QUICK,
    ]
    assert main(args) == 0
    assert (base_run / "loss.png").is_file() and (base_run / "policy" / "policy.json").is_file()

    run = tmp_path / "dsrl"
    steer = [
        "train",
        "algo=dsrl",
        "env=arm_reach",
        f"base={base_run / 'policy'}",
        f"algo.demo_store={demos}",
        "algo.env_steps=200",
        "algo.warmup_env_steps=100",
        "algo.eval_every=100",
        "algo.eval_episodes=2",
        "algo.batch_size=32",
        "algo.net_arch=[32,32]",
        "episodes=2",
        "video_episodes=0",
        f"run_dir={run}",
        *QUICK,
    ]
    assert main(steer) == 0
    for name in ("success.png", "policy/policy.json", "policy/base/policy.json", "report.json"):
        assert (run / name).exists(), name
    evals = (run / "metrics.csv").read_text().count(",eval/success,")
    assert evals >= 3  # env step 0, ~100 and ~200
    # A resumed run with a larger budget continues from its checkpoint, not from scratch.
    assert main(["train", f"resume={run}", "algo.env_steps=300", *QUICK]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:] if r.split(",")[1] == "eval/success"]
    assert steps[0] == 0 and steps.count(0) == 1 and steps[-1] >= 300
    assert main(["train", "algo=dsrl", f"base={demos}", *QUICK]) == 2
