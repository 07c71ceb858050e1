"""Sim-to-"hardware" transfer: the same policies, same seeds, in the training simulator (MuJoCo,
or the torch quadrotor dynamics) and on the stand-in hardware through ROS 2 (issue 4's transfer
table).

Arm half: for each task (reach, push, pick-place) and policy, N episodes on the held-out seeds
``EVAL_SEED, EVAL_SEED + 1, ...`` (those ``robolearn eval`` uses) in ``robolearn/Arm*-v0`` and on
the PyBullet stand-in arm (``hw/standin_arm.py`` in a child process, configured as
``configs/hw/standin_arm.yaml``: 4 ms + up to 2 ms latency, sensor noise) driven by the
``robolearn/ROS2Arm*-v0`` env at its 20 Hz control rate, which starts each seed's episode where
MuJoCo starts it. Policies:

- ``expert``: the scripted expert, noise 0;
- ``bc``: robolearn's BC MLP (default config) trained in MuJoCo on 500 clean expert
  demonstrations (seeds 0..499); the checkpoint is cached in ``benchmarks/results/transfer/``.

On the stand-in the script also measures, per step, the observation-to-command latency (the
observation's JointState header stamp, taken in the stand-in when it measured, to the call of
``env.step`` that publishes the command computed from it: link latency, the wait for the control
tick, the policy and observation building) and counts safety aborts and interventions.

Quadrotor half: a quadrotor policy (``--quad-policy``: the released RAPTOR policy, or a
checkpoint such as ``pretrained:quadrotor``), N episodes per vehicle on the held-out seeds in
``robolearn/Quadrotor-v0`` (RAPTOR's evaluation protocol: teacher-MDP initial states, no
velocity termination, 5 s) and on the PyBullet stand-in quadrotor (``hw/standin_quadrotor.py``
in a child process, configured as ``configs/hw/standin_quadrotor.yaml``: 3 ms + up to 2 ms
latency, 2 ms command latency, sensor noise) driven by ``robolearn/ROS2Quadrotor-v0`` synced to
the 100 Hz odometry; each seed starts where the simulator starts it. Survival (neither terminated
nor aborted) and the final error (the mean position error over an episode's last second, of
survivors), RAPTOR's statistics; ``crazyflie-no-latency`` is the Crazyflie with the stand-in's
link latencies set to 0, which isolates what the latency costs. ``--quad-interface`` picks the
adapter's topics: ``ros`` (nav_msgs/Odometry, Float32MultiArray) or ``px4`` (px4_msgs, as on a
PX4 vehicle).

Each platform's results are kept as JSON in ``benchmarks/results/transfer/<platform>.json`` and
the section is rebuilt from all of them, so one platform can be re-run alone; a quadrotor run
replaces only the rows of its (policy, interface, variant):
``python -m benchmarks.bench_transfer [--episodes 50] [--platforms arm quadrotor]
[--tasks reach push pick_place] [--policies expert bc] [--quad-episodes 20]
[--quad-variants crazyflie x500 crazyflie-no-latency] [--quad-policy released|<checkpoint>]
[--quad-interface ros|px4]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.report import table, write_section
from robolearn.policy import Policy, load_policy

RESULTS = Path(__file__).resolve().parent / "results" / "transfer"
HW_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hw" / "standin_arm.yaml"
QUAD_HW_CONFIG = HW_CONFIG.with_name("standin_quadrotor.yaml")
EVAL_SEED = 1_000_000  # the seeds `robolearn eval` uses: disjoint from the BC demonstrations
BC_DEMOS = 500
ARM_TASKS = {
    "reach": ("robolearn/ArmReach-v0", "robolearn/ROS2ArmReach-v0"),
    "push": ("robolearn/ArmPush-v0", "robolearn/ROS2ArmPush-v0"),
    "pick_place": ("robolearn/ArmPickPlace-v0", "robolearn/ROS2ArmPickPlace-v0"),
}


def isolated_ros_domain() -> int:
    """A ROS domain of this run, discovery limited to this machine (also for child processes),
    so the benchmark neither hears nor disturbs other ROS traffic."""
    domain = 150 + os.getpid() % 50
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain


def bc_policy(task: str, sim_id: str) -> Policy:
    """The BC policy of ``task`` trained in MuJoCo: the cached checkpoint, or train and cache it."""
    from robolearn.algos.bc import BCConfig, default_obs_keys, train_bc
    from robolearn.data.store import EpisodeStore
    from robolearn.envs import make_env
    from robolearn.rollout import rollout
    from sims.arm.experts import make_expert

    ckpt = RESULTS / f"bc-{task}" / "policy"
    if not (ckpt / "policy.json").exists():
        env = make_env(sim_id)
        with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
            store = EpisodeStore.create(
                Path(tmp) / "demos.zarr",
                attrs={"observation_keys": list(env.observation_space.spaces)},
            )
            rollout(make_expert(sim_id), env, BC_DEMOS, seed=0, store=store, progress=False)
            data = store.load()
            keys = default_obs_keys(data, store.attrs["observation_keys"])
            start = time.perf_counter()
            policy = train_bc(
                data, store.episode_ends, keys, BCConfig(), Path(tmp) / "run", progress=False
            )
            print(f"trained BC on {task} in {time.perf_counter() - start:.0f} s", flush=True)
            policy.save(ckpt)
        env.close()
    return load_policy(ckpt)


def make_policy(name: str, task: str, sim_id: str) -> Policy:
    from sims.arm.experts import make_expert

    if name == "expert":
        return make_expert(sim_id, noise=0.0)
    if name == "bc":
        return bc_policy(task, sim_id)
    raise ValueError(f"unknown policy {name!r}")


def sim_success(policy: Policy, sim_id: str, episodes: int) -> float:
    """Success rate of ``policy`` in MuJoCo on the evaluation seeds."""
    from robolearn.envs import make_env
    from robolearn.rollout import rollout

    env = make_env(sim_id)
    try:
        return rollout(policy, env, episodes, seed=EVAL_SEED, progress=False).success_rate
    finally:
        env.close()


class LoopStats:
    """The control loop's health over a stand-in run, the same for every robot: the
    observation-to-command latency of each step, overruns, and safety aborts and
    interventions by kind."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.steps = self.overruns = 0
        self.aborts: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()

    def step(self, env: Any, action: Any, info: dict[str, Any]) -> tuple[Any, ...]:
        """``env.step(action)``, timed from the stamp of the observation the action answers
        (``info``, of the previous step or the reset), and tallied."""
        # ROS time is the system clock: comparable with the stand-in's stamps.
        self.latencies.append((time.time_ns() - info["stamp_ns"]) * 1e-6)
        result = env.step(action)
        info = result[-1]
        self.steps += 1
        self.overruns += bool(info["overrun"])
        self.events.update(e["kind"] for e in info["safety_events"])
        if "abort_reason" in info:
            self.aborts[info["abort_reason"].split(":", 1)[0]] += 1
        return result

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies)
        return {
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "steps": self.steps,
            "overruns": self.overruns,
            "aborts": dict(self.aborts),
            "safety_events": dict(self.events),
        }


def standin_episodes(policy: Policy, task: str, hw_id: str, episodes: int) -> dict[str, Any]:
    """Run ``policy`` back to back on one stand-in arm; success, latency and safety numbers."""
    from hw.deploy import StandInProcess
    from robolearn.envs import make_env

    config = yaml.safe_load(HW_CONFIG.read_text())
    log = RESULTS / f"standin-{task}.log"
    standin = StandInProcess({**config["standin"], "task": task}, None, log)
    successes, lengths = [], []
    loop = LoopStats()
    try:
        env = make_env(hw_id, config["env"])
        try:
            for i in range(episodes):
                policy.reset(1)
                obs, info = env.reset(seed=EVAL_SEED + i)
                success, done, length = bool(info["success"]), False, 0
                while not done:
                    action = policy.act({k: v[None] for k, v in obs.items()})[0]
                    obs, _, terminated, truncated, info = loop.step(env, action, info)
                    done = terminated or truncated
                    success = success or bool(info["success"])
                    length += 1
                successes.append(success)
                lengths.append(length)
                standin.check_alive()
        finally:
            env.close()
    finally:
        standin.stop()
    return {
        "success": float(np.mean(successes)),
        "mean_length": float(np.mean(lengths)),
        **loop.summary(),
    }


def arm_results(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One result per (task, policy) of the arm half."""
    import hw  # noqa: F401 - registers the ROS 2 env ids

    results = []
    for task in args.tasks:
        sim_id, hw_id = ARM_TASKS[task]
        for name in args.policies:
            policy = make_policy(name, task, sim_id)
            start = time.perf_counter()
            sim = sim_success(policy, sim_id, args.episodes)
            sim_s = time.perf_counter() - start
            start = time.perf_counter()
            real = standin_episodes(policy, task, hw_id, args.episodes)
            hw_s = time.perf_counter() - start
            result = {
                "task": task,
                "policy": name,
                "episodes": args.episodes,
                "sim_success": sim,
                "hw": real,
                "sim_s": sim_s,
                "hw_s": hw_s,
            }
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def arm_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        h = r["hw"]
        aborts = ", ".join(f"{k} {v}" for k, v in sorted(h["aborts"].items())) or "none"
        events = ", ".join(f"{k} {v}" for k, v in sorted(h["safety_events"].items())) or "none"
        rows.append(
            [
                r["task"],
                r["policy"],
                r["episodes"],
                f"{r['sim_success']:.0%}",
                f"{h['success']:.0%}",
                f"{h['success'] - r['sim_success']:+.0%}",
                f"{h['latency_ms_mean']:.1f} / {h['latency_ms_p99']:.1f}",
                aborts,
                events,
                f"{h['overruns']} / {h['steps']}",
                f"{r['hw_s']:.0f}",
            ]
        )
    header = [
        "task",
        "policy",
        "episodes",
        "MuJoCo success",
        "stand-in success",
        "gap",
        "obs-to-command ms, mean / p99",
        "safety aborts",
        "safety interventions",
        "overruns / steps",
        "stand-in wall s",
    ]
    return table(header, rows)


#: Quadrotor rows: name -> (vehicle, stand-in overrides of configs/hw/standin_quadrotor.yaml).
QUAD_VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "crazyflie": ("crazyflie", {}),
    "x500": ("x500", {}),
    "crazyflie-no-latency": ("crazyflie", {"latency": 0.0, "jitter": 0.0, "command_latency": 0.0}),
}
#: RAPTOR's evaluation protocol in the simulator (robolearn/algos/raptor/evaluate.py).
QUAD_SIM_KWARGS = {"init": "raptor", "terminate_on_velocity": False}
QUAD_STEPS = 500  # 5 s at 100 Hz: the episode limit of both envs
FINAL_WINDOW = 100  # the last second


def flight_statistics(survived: list[bool], final: list[float]) -> dict[str, Any]:
    """Survival rate and the final errors (m) of the survivors."""
    return {
        "survival": float(np.mean(survived)),
        "final_error_mean": float(np.mean(final)) if final else None,
        "final_error_median": float(np.median(final)) if final else None,
    }


def quad_sim_flights(policy: Policy, vehicle: str, episodes: int) -> dict[str, Any]:
    """The policy on ``episodes`` seeds of the simulator, batched (sub-env ``i`` of the vector
    env flies exactly as ``robolearn/Quadrotor-v0`` reset with the same seed)."""
    from robolearn.envs import make_vector_env

    env = make_vector_env(
        "robolearn/Quadrotor-v0", episodes, {**QUAD_SIM_KWARGS, "params": vehicle}
    )
    try:
        obs, _ = env.reset(seed=[EVAL_SEED + i for i in range(episodes)])
        policy.reset(episodes)
        alive = np.ones(episodes, dtype=bool)
        errors = []
        for _ in range(QUAD_STEPS):
            obs, _, terminated, _, info = env.step(policy.act(obs))
            alive &= ~terminated
            errors.append(info["position_error"])
        final = np.mean(errors[-FINAL_WINDOW:], axis=0)
        return flight_statistics(alive.tolist(), final[alive].tolist())
    finally:
        env.close()


def quad_standin_flights(
    policy: Policy,
    vehicle: str,
    overrides: dict[str, float],
    episodes: int,
    name: str,
    interface: str = "ros",
) -> dict[str, Any]:
    """The policy on the same seeds on one stand-in quadrotor through ROS 2, the adapter and the
    stand-in speaking ``interface``'s topics."""
    from hw.deploy import StandInProcess, quadrotor_setup
    from robolearn.envs import make_env

    config = yaml.safe_load(QUAD_HW_CONFIG.read_text())
    kwargs = {**config["env"], "interface": interface}
    standin_cfg = quadrotor_setup(
        {**QUAD_SIM_KWARGS, "params": vehicle}, kwargs, {**config["standin"], **overrides}
    )
    standin = StandInProcess(standin_cfg, None, RESULTS / f"standin-{name}.log", "quadrotor")
    survived, final = [], []
    loop = LoopStats()
    try:
        env = make_env("robolearn/ROS2Quadrotor-v0", kwargs)
        try:
            for i in range(episodes):
                policy.reset(1)
                obs, info = env.reset(seed=EVAL_SEED + i)
                errors, alive = [], True
                for _ in range(QUAD_STEPS):
                    action = policy.act(obs[None])[0]
                    obs, _, terminated, truncated, info = loop.step(env, action, info)
                    errors.append(info["position_error"])
                    if terminated or "abort_reason" in info:
                        alive = False
                    if terminated or truncated:  # truncated: an abort, or the time limit
                        break
                survived.append(alive)
                if alive:
                    final.append(float(np.mean(errors[-FINAL_WINDOW:])))
                standin.check_alive()
        finally:
            env.close()
    finally:
        standin.stop()
    return {**flight_statistics(survived, final), **loop.summary()}


def quadrotor_results(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One result per quadrotor variant: ``args.quad_policy`` in sim and on the stand-in."""
    import hw  # noqa: F401 - registers the ROS 2 env ids
    from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy

    results = []
    for name in args.quad_variants:
        vehicle, overrides = QUAD_VARIANTS[name]
        if args.quad_policy == "released":
            policy: Policy = ReleasedRaptorPolicy()
        else:
            policy = load_policy(args.quad_policy)
        load = os.getloadavg()
        start = time.perf_counter()
        sim = quad_sim_flights(policy, vehicle, args.quad_episodes)
        sim_s = time.perf_counter() - start
        start = time.perf_counter()
        log = f"{name}-{args.quad_interface}"
        real = quad_standin_flights(
            policy, vehicle, overrides, args.quad_episodes, log, args.quad_interface
        )
        result = {
            "policy": args.quad_policy,
            "interface": args.quad_interface,
            "load_before": load,
            "variant": name,
            "vehicle": vehicle,
            "standin_overrides": overrides,
            "episodes": args.quad_episodes,
            "sim": sim,
            "hw": real,
            "sim_s": sim_s,
            "hw_s": time.perf_counter() - start,
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def quadrotor_table(results: list[dict[str, Any]]) -> str:
    def cm(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        variants = list(QUAD_VARIANTS)
        variant = variants.index(r["variant"]) if r["variant"] in variants else len(variants)
        return r["policy"] != "released", r["policy"], r["interface"] != "ros", variant

    rows = []
    for r in sorted(results, key=order):
        s, h = r["sim"], r["hw"]
        aborts = ", ".join(f"{k} {v}" for k, v in sorted(h["aborts"].items())) or "none"
        rows.append(
            [
                r["policy"],
                r["interface"],
                r["variant"],
                r["episodes"],
                f"{s['survival']:.0%}",
                f"{h['survival']:.0%}",
                f"{cm(s['final_error_mean'])} / {cm(s['final_error_median'])}",
                f"{cm(h['final_error_mean'])} / {cm(h['final_error_median'])}",
                f"{h['latency_ms_mean']:.1f} / {h['latency_ms_p99']:.1f}",
                aborts,
                f"{h['overruns']} / {h['steps']}",
                f"{r['hw_s']:.0f}",
                f"{r['load_before'][0]:.1f}",
            ]
        )
    header = [
        "policy",
        "interface",
        "vehicle",
        "episodes",
        "sim survival",
        "stand-in survival",
        "sim final error cm, mean / median",
        "stand-in final error cm, mean / median",
        "obs-to-command ms, mean / p99",
        "safety aborts",
        "overruns / steps",
        "stand-in wall s",
        "load at start",
    ]
    return table(header, rows)


#: Platform -> (function producing its results, function rendering them as markdown).
PLATFORMS: dict[str, tuple[Callable[..., list[dict[str, Any]]], Callable[..., str]]] = {
    "arm": (arm_results, arm_table),
    "quadrotor": (quadrotor_results, quadrotor_table),
}
#: What each platform's table compares (in the section, above the table).
PLATFORM_NOTES = {
    "arm": (
        "Same policies, same seeds (held-out seeds from 1,000,000) in MuJoCo and on the "
        "PyBullet stand-in arm through ROS 2 (`configs/hw/standin_arm.yaml`: JointTrajectory "
        "controller, 4 ms + 0-2 ms link latency, 2 ms command latency, sensor noise; another "
        "physics engine with its own contacts and friction), 20 Hz control. Policies: the "
        "scripted expert (noise 0) and BC (default config, 500 MuJoCo demos). "
        "Obs-to-command: the JointState's header stamp (set in the stand-in at measurement) to "
        "the `env.step` call that publishes the command computed from it. Safety interventions: "
        "events by kind where the safety layer bounded or held a command and the episode went "
        "on; an abort ends the episode. Overruns: control ticks the loop missed."
    ),
    "quadrotor": (
        "The released RAPTOR policy or our student, same seeds (from 1,000,000), 5 s episodes "
        "from RAPTOR's teacher-MDP initial states (up to 10 arm lengths away, 1 rad tilt, 1 "
        "m/s, 1 rad/s), in `robolearn/Quadrotor-v0` (torch L2F dynamics, RK4) and on the "
        "PyBullet stand-in quadrotor through ROS 2 (`configs/hw/standin_quadrotor.yaml`: "
        "another integrator, the motor lag in the node, 3 ms + 0-2 ms odometry latency, 2 ms "
        "command latency, sensor noise; the env steps on each 100 Hz odometry). Survival: "
        "neither terminated (20 arm lengths from the target) nor aborted by the safety layer; "
        "final error: the mean distance to the target over the last second, of survivors. "
        "Obs-to-command as for the arm (the Odometry's header stamp, or VehicleOdometry's "
        "`timestamp_sample` on the px4 interface). The stand-in's episode starts where the "
        "simulator's does, but it flies in real time: the first observation is already one "
        "odometry period into the flight."
    ),
}


#: The fields that name a row: a run replaces the saved rows with the same values.
ROW_KEYS = {"arm": ("task", "policy"), "quadrotor": ("policy", "interface", "variant")}


def row_key(platform: str, result: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(result[k] for k in ROW_KEYS[platform])


def saved_results(path: Path) -> list[dict[str, Any]]:
    """A platform's saved rows."""
    return json.loads(path.read_text())["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=50, help="per task, policy and side")
    parser.add_argument("--platforms", nargs="+", choices=sorted(PLATFORMS), default=["arm"])
    parser.add_argument("--tasks", nargs="+", choices=sorted(ARM_TASKS), default=list(ARM_TASKS))
    parser.add_argument("--policies", nargs="+", choices=["expert", "bc"], default=["expert", "bc"])
    parser.add_argument("--quad-episodes", type=int, default=20, help="per quadrotor variant")
    parser.add_argument(
        "--quad-variants", nargs="+", choices=list(QUAD_VARIANTS), default=list(QUAD_VARIANTS)
    )
    parser.add_argument(
        "--quad-policy",
        default="released",
        help="released (the released RAPTOR policy) or a checkpoint, e.g. pretrained:quadrotor",
    )
    parser.add_argument("--quad-interface", choices=["ros", "px4"], default="ros")
    args = parser.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    isolated_ros_domain()
    load = os.getloadavg()
    for platform in args.platforms:
        start = time.perf_counter()
        results = PLATFORMS[platform][0](args)
        path = RESULTS / f"{platform}.json"
        kept = saved_results(path) if path.exists() else []
        new_keys = {row_key(platform, r) for r in results}
        kept = [r for r in kept if row_key(platform, r) not in new_keys]
        path.write_text(
            json.dumps(
                {
                    "results": kept + results,
                    "wall_s": time.perf_counter() - start,
                    "load_before": load,
                    "load_after": os.getloadavg(),
                },
                indent=1,
            )
        )
    write_transfer_section()


def write_transfer_section() -> None:
    """Rebuild the BENCHMARKS.md section from every platform's saved JSON."""
    parts = []
    for platform, (_, render) in PLATFORMS.items():
        path = RESULTS / f"{platform}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            loads = "/".join(f"{x:.1f}" for x in saved["load_before"])
            parts.append(
                f"**{platform}** (latest run {saved['wall_s'] / 60:.0f} min; 1/5/15-min load "
                f"average {loads} at its start). {PLATFORM_NOTES[platform]}\n\n"
                f"{render(saved_results(path))}"
            )
    body = "\n\n".join(parts)
    write_section("transfer", "Transfer: training simulator vs stand-in hardware over ROS 2", body)


if __name__ == "__main__":
    main()
