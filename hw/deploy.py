"""Deploy a policy on an arm or a quadrotor over ROS 2 without ROS launch: ``robolearn deploy``
calls :func:`deploy_policy`.

It starts what the deployment needs (the stand-in node, arm or quadrotor, in a subprocess when
the hardware config has one; nothing for a real robot, whose driver is already running), makes
the ROS 2 env, runs the policy for N episodes at the robot's control rate, and writes into the
run folder:

* ``episodes.zarr``: an EpisodeStore of the deployment (observations, actions, rewards, the
  nominal ``timestamp`` plus the measurements' header stamps ``stamp_ns``, their age
  ``obs_latency``, control-loop ``overrun`` flags (and the quadrotor's ``position_error``) per
  step; per episode ``seed``,
  ``success``, ``source`` and ``abort_reason``). Its ``env_id`` is the simulated twin's, so
  ``robolearn replay`` and training read it like a simulated recording; ``hw_env_id`` and
  ``hw`` name the hardware side;
* ``bag/``: a rosbag2 MCAP of the raw topics the env received and sent (with receive and send
  times; header stamps inside the messages), the policy's actions, episode and safety events
  (:mod:`hw.recorder`); flushed every second and after every episode, so a killed deployment
  leaves a bag that :func:`robolearn.data.rosbag.open_bag` repairs. A resumed deployment writes
  ``bag-2/``, ``bag-3/``, ...;
* ``safety_events.jsonl``: every safety event; ``standin.log``: the stand-in's output;
* ``report.json`` / ``report.md``: success, aborts, latency and loop statistics (for the
  quadrotor also survival and the final position error, RAPTOR's statistics).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hw import SIM_TWINS
from hw.recorder import TopicRecorder
from hw.ros import import_rclpy
from robolearn.data.store import EpisodeStore
from robolearn.envs import make_env
from robolearn.policy import FLAT_OBS_KEY, Policy
from robolearn.rollout import control_hz, rollout

#: Per-step info entries recorded beside the observations, and per-episode ones.
STEP_INFO_KEYS = ("stamp_ns", "obs_latency", "overrun")
QUADROTOR_STEP_INFO_KEYS = (*STEP_INFO_KEYS, "position_error")
EPISODE_INFO_KEYS = ("abort_reason",)
#: RAPTOR's final error: the mean position error over the last second (100 steps at 100 Hz).
FINAL_WINDOW_STEPS = 100


class StandInProcess:
    """A stand-in node (``python -m hw.standin_arm`` or ``hw.standin_quadrotor``) as a child
    process.

    Args:
        config: :class:`~hw.standin_arm.StandInArmConfig` (or quadrotor config) fields.
        domain_id: ROS domain of the node; ``None`` inherits ``ROS_DOMAIN_ID``.
        log_path: File receiving the node's stdout and stderr.
        robot: ``"arm"`` or ``"quadrotor"``: which stand-in.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        domain_id: int | None,
        log_path: Path,
        robot: str = "arm",
    ) -> None:
        self.log_path = log_path
        self.robot = robot
        module = f"hw.standin_{robot}"
        cmd = [sys.executable, "-m", module, "--config", json.dumps(dict(config))]
        if domain_id is not None:
            cmd += ["--domain-id", str(domain_id)]
        self._log = open(log_path, "w")  # closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        """Raise RuntimeError with the end of its log if the node has exited."""
        code = self.process.poll()
        if code is not None:
            self._log.flush()
            tail = "".join(self.log_path.read_text().splitlines(keepends=True)[-15:])
            raise RuntimeError(f"the stand-in {self.robot} exited with code {code}:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT (a clean shutdown), then SIGKILL if it does not exit within ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def deploy_policy(
    policy: Policy,
    sim_env_id: str,
    hw_config: Mapping[str, Any],
    run_dir: Path,
    episodes: int,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``policy`` on the task of ``sim_env_id`` over ROS 2 and record the deployment.

    Args:
        policy: Any robolearn policy for the simulated task (same spaces).
        sim_env_id: The simulated task, e.g. ``robolearn/ArmReach-v0`` or
            ``robolearn/Quadrotor-v0``.
        hw_config: The ``hw`` config group: ``name``, ``domain_id``, ``robot`` (``arm`` when
            absent, or ``quadrotor``), ``standin`` (stand-in node fields, or ``None`` for a real
            robot) and ``env`` (the hardware env's kwargs).
        run_dir: Folder the store, logs and report go to (created if needed).
        episodes: Number of episodes; episode ``i`` is reset with seed ``seed + i``.
        seed: First episode's seed (the stand-in draws the simulated task's initial state of it).
        env_kwargs: The simulated env's kwargs; those that define the task carry over so the
            hardware env means the same (the arm's ``use_yaw`` and ``terminate_on_success``; the
            quadrotor's vehicle ``params``, ``init``, ``clip_observation`` and
            ``terminate_on_velocity``).
        progress: Show a progress bar.
        say: Status line printer.

    Returns:
        The report summary (also written to ``report.json``).
    """
    from hw import HW_IDS, hw_robot

    if sim_env_id not in HW_IDS:
        raise ValueError(f"{sim_env_id} has no ROS 2 hardware env; tasks that do: {sorted(HW_IDS)}")
    hw_env_id = HW_IDS[sim_env_id]
    robot = hw_robot(hw_env_id)
    if hw_config.get("robot", "arm") != robot:
        raise ValueError(
            f"hw={hw_config.get('name')} is for the {hw_config.get('robot', 'arm')} "
            f"(hw.robot) but {sim_env_id} is a {robot} task"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    sim_kwargs = dict(env_kwargs or {})
    kwargs = dict(hw_config.get("env") or {})
    kwargs.update(
        domain_id=hw_config.get("domain_id"), safety_log=str(run_dir / "safety_events.jsonl")
    )
    standin_cfg = hw_config.get("standin")
    if robot == "quadrotor":
        standin_cfg = quadrotor_setup(sim_kwargs, kwargs, standin_cfg)
        info_keys = QUADROTOR_STEP_INFO_KEYS
    else:
        kwargs.update(
            use_yaw=bool(sim_kwargs.get("use_yaw", False)),
            terminate_on_success=bool(sim_kwargs.get("terminate_on_success", True)),
        )
        if standin_cfg is not None:
            standin_cfg = {**standin_cfg, "task": hw_env_task(hw_env_id)}
        info_keys = STEP_INFO_KEYS
    standin = None
    if standin_cfg is not None:
        import_rclpy()  # fail before starting a process if ROS 2 is missing
        standin = StandInProcess(
            standin_cfg, hw_config.get("domain_id"), run_dir / "standin.log", robot
        )
        what = standin_cfg.get("task") or standin_cfg.get("vehicle")
        say(f"stand-in {robot} ({what}) started, pid {standin.process.pid}; log {standin.log_path}")
    store_path = run_dir / "episodes.zarr"
    stopped = None
    try:
        env = make_env(hw_env_id, kwargs)
        try:
            store = _open_store(store_path, env, sim_env_id, hw_env_id, sim_kwargs, hw_config)
            bag = new_bag_dir(run_dir)
            recorder = TopicRecorder(
                bag, {**store.attrs, "store": store_path.name, "first_episode": store.n_episodes}
            )
            env.unwrapped.attach_recorder(recorder)  # env.close() closes the bag
            say(f"recording the raw topics into {bag}")
            first = seed + store.n_episodes
            remaining = episodes - store.n_episodes
            say(f"deploying on {hw_config.get('name')}: {remaining} episodes of {hw_env_id}")
            try:
                rollout(
                    policy,
                    env,
                    remaining,
                    seed=first,
                    store=store,
                    source=f"hw:{hw_config.get('name')}",
                    progress=progress,
                    desc=f"deploy {hw_config.get('name')}",
                    info_keys=info_keys,
                    episode_info_keys=EPISODE_INFO_KEYS,
                )
            except (RuntimeError, TimeoutError) as err:
                # A latched e-stop or a driver that went away: keep what was recorded.
                if standin is not None:
                    standin.check_alive()
                stopped = str(err)
                say(f"deployment stopped: {stopped}")
        finally:
            env.close()
    except (RuntimeError, TimeoutError):
        if standin is not None:
            standin.check_alive()
        raise
    finally:
        if standin is not None:
            standin.stop()
    return _report(EpisodeStore.open(store_path), run_dir, hw_env_id, hw_config, stopped, say)


def quadrotor_setup(
    sim_kwargs: Mapping[str, Any],
    kwargs: dict[str, Any],
    standin_cfg: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """Carry the simulated quadrotor task over to the hardware env's ``kwargs`` (in place) and
    the stand-in's config (returned; ``None`` for a real vehicle): the same vehicle, initial
    states and observation, and the env's frame convention, motor order and topics, so the
    two ends of the link always agree."""
    from sims.quadrotor.params import PRESETS

    vehicle = sim_kwargs.get("params", "crazyflie")
    if vehicle not in PRESETS:
        raise ValueError(
            f"env.kwargs.params={vehicle!r}: hardware is one vehicle; choose one of {PRESETS}"
        )
    if sim_kwargs.get("reference") is not None:
        raise ValueError(
            "env.kwargs.reference: the ROS 2 quadrotor env holds a position (hw.env.target); "
            "reference trajectories are not supported on hardware"
        )
    kwargs.update(
        vehicle=vehicle,
        clip_observation=bool(sim_kwargs.get("clip_observation", True)),
        terminate_on_velocity=bool(sim_kwargs.get("terminate_on_velocity", True)),
    )
    if standin_cfg is None:
        return None
    from hw.quadrotor_msgs import QuadrotorTopics

    topics = QuadrotorTopics(**(kwargs.get("topics") or {}))
    twist_in_body = kwargs.get("twist_in_body")
    return {
        **standin_cfg,
        "vehicle": vehicle,
        "init": sim_kwargs.get("init", "raptor"),
        "interface": kwargs.get("interface", "ros"),
        # The ros interface's conventions (the px4 interface fixes them; unset there).
        "frame": kwargs.get("frame") or "enu_flu",
        "twist_in_body": True if twist_in_body is None else bool(twist_in_body),
        "command_order": kwargs.get("command_order") or "policy",
        "odometry_topic": topics.odometry,
        "command_topic": topics.command,
        "offboard_topic": topics.offboard_control_mode,
    }


def new_bag_dir(run_dir: Path) -> Path:
    """``run_dir/bag``, or ``bag-2``, ``bag-3``, ... for the sessions of a resumed deployment."""
    path, n = run_dir / "bag", 1
    while path.exists():
        n += 1
        path = run_dir / f"bag-{n}"
    return path


def hw_env_task(hw_env_id: str) -> str:
    """The task name of a hardware arm env id."""
    from hw import ARM_ENVS

    return ARM_ENVS[hw_env_id][0]


def _open_store(
    path: Path,
    env: Any,
    sim_env_id: str,
    hw_env_id: str,
    sim_kwargs: Mapping[str, Any],
    hw_config: Mapping[str, Any],
) -> EpisodeStore:
    """Continue the deployment store at ``path`` or create it with the deployment's attrs."""
    if path.exists():
        store = EpisodeStore.open(path, mode="a")
        if store.attrs.get("hw_env_id") != hw_env_id:
            raise ValueError(f"{path} holds {store.attrs.get('hw_env_id')} episodes")
        return store
    # A flat observation (the quadrotor's) is stored under one key, as `robolearn record` does.
    spaces = getattr(env.observation_space, "spaces", {FLAT_OBS_KEY: env.observation_space})
    return EpisodeStore.create(
        path,
        attrs={
            # The simulated twin: replay and training read the log like a sim recording.
            "env_id": sim_env_id,
            "env_kwargs": dict(sim_kwargs),
            "hw_env_id": hw_env_id,
            "sim_env_id": SIM_TWINS[hw_env_id],
            "hw": json.loads(json.dumps(dict(hw_config), default=str)),
            "robot_spec": env.unwrapped.robot_spec.to_dict(),
            "control_hz": control_hz(env),
            "observation_keys": list(spaces),
            "observation_space": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in spaces.items()
            },
            "action_space": {
                "shape": list(env.action_space.shape),
                "dtype": str(env.action_space.dtype),
            },
            "ros_domain_id": hw_config.get("domain_id") or os.environ.get("ROS_DOMAIN_ID", "0"),
        },
    )


def _report(
    store: EpisodeStore,
    run_dir: Path,
    hw_env_id: str,
    hw_config: Mapping[str, Any],
    stopped: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Summarise the deployment from its store (so a resumed run reports every episode)."""
    from robolearn.report import write_report

    n = store.n_episodes
    data = store.load(["obs_latency", "overrun"]) if n else {}
    latency = data.get("obs_latency", np.zeros(0))
    aborts = [str(a) for a in store.meta("abort_reason")] if n else []
    events_file = run_dir / "safety_events.jsonl"
    events = events_file.read_text().splitlines() if events_file.exists() else []
    kinds: dict[str, int] = {}
    for line in events:
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = {
        "hw_env_id": hw_env_id,
        "hw": hw_config.get("name"),
        "episodes": n,
        "success_rate": float(np.mean(store.meta("success"))) if n else 0.0,
        "aborted_episodes": sum(bool(a) for a in aborts),
        "abort_reasons": [a for a in aborts if a],
        "safety_events": kinds,
        "obs_latency_ms": {
            "p50": float(np.percentile(latency, 50) * 1e3) if latency.size else None,
            "p99": float(np.percentile(latency, 99) * 1e3) if latency.size else None,
        },
        "overrun_fraction": float(np.mean(data["overrun"])) if n else 0.0,
        "stopped": stopped,
        "store": str(store.path),
    }
    if n and "position_error" in store.keys:
        summary.update(_flight_statistics(store, aborts))
    highlights = {
        "robot": f"{hw_config.get('name')} ({hw_env_id})",
        "episodes": n,
        "success rate": f"{summary['success_rate']:.1%}",
        "aborted episodes": summary["aborted_episodes"],
        "safety events": sum(kinds.values()),
        "observation latency p50 / p99 (ms)": (
            f"{summary['obs_latency_ms']['p50']:.1f} / {summary['obs_latency_ms']['p99']:.1f}"
            if latency.size
            else "-"
        ),
        "loop overruns": f"{summary['overrun_fraction']:.1%}",
    }
    if "survival_rate" in summary:
        highlights["survival"] = f"{summary['survival_rate']:.1%}"
        error = summary["final_error_m"]["mean"]
        highlights["final error, mean over the last 1 s (cm)"] = (
            "-" if error is None else f"{100 * error:.1f}"
        )
    if stopped:
        highlights["stopped early"] = stopped
    _, md_path = write_report(
        run_dir, f"deployment on {hw_config.get('name')}", summary, highlights
    )
    say(
        f"success rate {summary['success_rate']:.1%} over {n} episodes, "
        f"{summary['aborted_episodes']} aborted; store {store.path}; report {md_path}"
    )
    return summary


def _flight_statistics(store: EpisodeStore, aborts: list[str]) -> dict[str, Any]:
    """RAPTOR's statistics of quadrotor episodes: survival (neither terminated nor aborted)
    and the final error, the mean position error over an episode's last second, of survivors."""
    survived, final = [], []
    for i in range(store.n_episodes):
        episode = store.get_episode(i, ["position_error", "terminated"])
        alive = not bool(episode["terminated"][-1]) and not aborts[i]
        survived.append(alive)
        if alive:
            final.append(float(episode["position_error"][-FINAL_WINDOW_STEPS:].mean()))
    return {
        "survival_rate": float(np.mean(survived)),
        "final_error_m": {
            "mean": float(np.mean(final)) if final else None,
            "median": float(np.median(final)) if final else None,
            "max": float(np.max(final)) if final else None,
        },
    }
