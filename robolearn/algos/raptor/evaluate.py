"""The quadrotor evaluation protocol of the RAPTOR reference re-run (raptor.md sections 9-13).

:func:`evaluate_quadrotor` flies any robolearn :class:`~robolearn.policy.Policy` (batched
``act`` on (B, 22) observations) through ``robolearn/Quadrotor-v0`` and measures:

1. **Held-out vehicles.** ``vehicles`` fresh quadrotors from RAPTOR's sampling distribution
   (section 5), initial states from the teacher MDP (``init="raptor"``), constant disturbance
   forces on, 5 s episodes, all flown in one batch of the vector env. Survival = never leaving
   the position bound (20 arm lengths per axis) nor going non-finite; as in the re-run, there
   is **no** velocity termination (the 2 m/s teacher-MDP limit would end episodes that a
   deployed policy recovers from). Final error = mean position error over the last 1 s,
   summarised (mean, median, p90) over survivors.
2. **Presets** (Crazyflie, x500): the same statistics over ``preset_episodes`` teacher-MDP
   initial states, plus the cold-start dip (``init="motors_off"``: motors off, level, at rest
   at the target): peak position error and the time it occurs, and the error over the last 1 s.
3. **Figure-eight tracking** per preset (``reference="figure_eight"``, starting hovering at the
   origin): RMS position error over the episode and after the first second.
4. **By thrust-to-weight**: survival and final error of the held-out vehicles in bins of their
   thrust-to-weight ratio (:data:`THRUST_TO_WEIGHT_EDGES`), where policies part ways: agile
   vehicles overshoot from far starts first.

Observations get PX4-style input clipping (position error +-0.5 m, velocity error +-1 m/s),
applied here rather than in the env so that the unclipped errors can be recorded for plots;
the policy sees exactly what ``clip_observation=True`` would give it.

**Seed convention.** Vehicle ``i`` of the held-out batch, and its initial state and
disturbance, are drawn from the env's reset RNG seeded with ``seed + i``;
``seed`` defaults to :data:`HELD_OUT_SEED` = 10,000,000. Training code draws its vehicles from
seeds below that, so evaluation vehicles are never training vehicles. Preset episodes use the
same seeds. Two policies evaluated with the same ``seed`` therefore meet identical vehicles,
initial states and disturbances (:func:`compare_quadrotor_policies`).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.envs import make_vector_env
from robolearn.policy import Policy
from robolearn.report import pyplot, save_figure, write_report, write_video
from robolearn.robots.quadrotor import CLIP_POSITION, CLIP_VELOCITY, CONTROL_HZ
from robolearn.utils import progress_bar

ENV_ID = "robolearn/Quadrotor-v0"
#: First seed of the held-out vehicles; training draws its vehicles from seeds below it.
HELD_OUT_SEED = 10_000_000
PRESETS = ("crazyflie", "x500")
#: Steps of the trailing window over which the final error is averaged (1 s at 100 Hz).
FINAL_WINDOW = int(CONTROL_HZ)
#: Inner edges of the held-out breakdown's thrust-to-weight bins (RAPTOR samples 1.5-5).
THRUST_TO_WEIGHT_EDGES = (2.5, 3.0, 4.0)
DT = 1.0 / CONTROL_HZ
POSITION = slice(0, 3)
VELOCITY = slice(12, 15)
#: The released checkpoint re-run in the reference's own numpy L2F (raptor.md section 11),
#: keyed like :func:`headline`. Preset survival/final error there used 50 episodes, the
#: Crazyflie under L2F termination (with the 2 m/s velocity limit).
REFERENCE_RERUN: dict[str, float] = {
    "held-out survival (%)": 97.3,
    "held-out final error mean (cm)": 6.9,
    "held-out final error median (cm)": 3.4,
    "held-out final error p90 (cm)": 15.6,
    "crazyflie survival (%)": 98.0,
    "crazyflie final error mean (cm)": 5.3,
    "crazyflie cold-start peak (cm)": 14.9,
    "crazyflie cold-start peak time (s)": 0.39,
    "crazyflie cold-start last 1 s (cm)": 5.0,
    "x500 survival (%)": 100.0,
    "x500 final error mean (cm)": 2.2,
    "x500 cold-start peak (cm)": 4.1,
    "x500 cold-start last 1 s (cm)": 2.2,
}


@dataclasses.dataclass
class Flight:
    """Recorded flights of a batch: one row per vehicle.

    Attributes:
        seeds: ``(N,)`` reset seed of each vehicle.
        errors: ``(N, T)`` position error norm after each step, m.
        offsets: ``(N, T + 1, 3)`` unclipped position relative to the reference, from the
            reset on, m.
        survived: ``(N,)`` never terminated.
        terminated_step: ``(N,)`` 1-based step at which the episode ended, -1 if it survived.
        vehicle: per-vehicle ``mass`` (kg), ``arm_length`` (m), ``thrust_to_weight``.
    """

    seeds: np.ndarray
    errors: np.ndarray
    offsets: np.ndarray
    survived: np.ndarray
    terminated_step: np.ndarray
    vehicle: dict[str, np.ndarray]

    @property
    def final_errors(self) -> np.ndarray:
        """``(N,)`` mean position error over the last second (NaN for crashed vehicles)."""
        final = self.errors[:, -FINAL_WINDOW:].mean(1)
        return np.where(self.survived, final, np.nan)


def px4_clip(obs: np.ndarray) -> np.ndarray:
    """A copy of (B, 22) observations with position and velocity errors clipped as PX4 does."""
    x = np.array(obs, dtype=np.float32, copy=True)
    np.clip(x[:, POSITION], -CLIP_POSITION, CLIP_POSITION, out=x[:, POSITION])
    np.clip(x[:, VELOCITY], -CLIP_VELOCITY, CLIP_VELOCITY, out=x[:, VELOCITY])
    return x


def fly(
    policy: Policy,
    seeds: Sequence[int],
    steps: int,
    params: str = "sampled",
    init: str = "raptor",
    reference: str | None = None,
    progress: bool = False,
) -> Flight:
    """Fly ``policy`` on one vehicle per seed, all in one vector env, for ``steps`` steps.

    Protocol settings (see the module docstring): PX4 input clipping, disturbances on, no
    velocity termination. ``params``, ``init`` and ``reference`` as ``robolearn/Quadrotor-v0``.
    """
    n = len(seeds)
    env = make_vector_env(
        ENV_ID,
        n,
        max_episode_steps=steps,
        params=params,
        init=init,
        reference=reference,
        clip_observation=False,
        terminate_on_velocity=False,
        disturbance=True,
    )
    obs, _ = env.reset(seed=[int(s) for s in seeds])
    vehicles = env.unwrapped.params
    vehicle = {
        "mass": vehicles.mass.cpu().numpy().astype(np.float64),
        "arm_length": vehicles.arm_length.cpu().numpy().astype(np.float64),
        "thrust_to_weight": vehicles.thrust_to_weight.cpu().numpy().astype(np.float64),
    }
    policy.reset(n)
    errors = np.zeros((n, steps))
    offsets = np.zeros((n, steps + 1, 3), dtype=np.float32)
    offsets[:, 0] = obs[:, POSITION]
    terminated_step = np.full(n, -1, dtype=np.int64)
    bar = progress_bar(steps, f"{policy.policy_type} {params}/{init}", enabled=progress)
    for t in range(steps):
        dead = terminated_step >= 0
        # A crashed vehicle keeps integrating and can diverge; keep the policy's input finite
        # so that no NaN reaches the other rows of the batch through the policy's state.
        x = np.where(dead[:, None], 0.0, px4_clip(obs)).astype(np.float32)
        obs, _, terminated, _, info = env.step(policy.act(x))
        errors[:, t] = np.where(dead, errors[:, t - 1], info["position_error"])
        offsets[:, t + 1] = np.where(dead[:, None], offsets[:, t], obs[:, POSITION])
        terminated_step[~dead & terminated] = t + 1
        bar.update()
    bar.close()
    env.close()
    return Flight(
        seeds=np.asarray(seeds, dtype=np.int64),
        errors=errors,
        offsets=offsets,
        survived=terminated_step < 0,
        terminated_step=terminated_step,
        vehicle=vehicle,
    )


def error_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, median and p90 of the finite values (NaN when there are none)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p90": float(np.percentile(v, 90)),
    }


def _summary(flight: Flight) -> dict[str, Any]:
    return {
        "episodes": len(flight.seeds),
        "survived": int(flight.survived.sum()),
        "survival_rate": float(flight.survived.mean()),
        "final_error": error_stats(flight.final_errors),
    }


def _by_thrust_to_weight(flight: Flight) -> list[dict[str, Any]]:
    """Episodes, survivors and final-error statistics of the vehicles in each thrust-to-weight
    bin, labelled by its range."""
    edges = THRUST_TO_WEIGHT_EDGES
    labels = [f"< {edges[0]:g}"]
    labels += [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels += [f">= {edges[-1]:g}"]
    bins = np.digitize(flight.vehicle["thrust_to_weight"], edges)
    rows = []
    for i, label in enumerate(labels):
        members = bins == i
        rows.append(
            {
                "thrust_to_weight": label,
                "episodes": int(members.sum()),
                "survived": int(flight.survived[members].sum()),
                "final_error": error_stats(flight.final_errors[members]),
            }
        )
    return rows


def _per_vehicle(flight: Flight) -> list[dict[str, Any]]:
    rows = []
    for i, seed in enumerate(flight.seeds.tolist()):
        step = int(flight.terminated_step[i])
        rows.append(
            {
                "seed": seed,
                "mass": float(flight.vehicle["mass"][i]),
                "arm_length": float(flight.vehicle["arm_length"][i]),
                "thrust_to_weight": float(flight.vehicle["thrust_to_weight"][i]),
                "initial_error": float(np.linalg.norm(flight.offsets[i, 0])),
                "survived": bool(flight.survived[i]),
                "terminated_at": step * DT if step >= 0 else None,
                "final_error": float(flight.final_errors[i]) if flight.survived[i] else None,
            }
        )
    return rows


def evaluate_quadrotor(
    policy: Policy,
    vehicles: int = 300,
    seed: int = HELD_OUT_SEED,
    presets: Sequence[str] = PRESETS,
    episode_steps: int = 500,
    preset_episodes: int = 50,
    progress: bool = True,
    out_dir: str | Path | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Run the reference evaluation protocol (module docstring) on ``policy``.

    Args:
        policy: Any robolearn policy acting on (B, 22) RAPTOR observations.
        vehicles: Number of held-out sampled vehicles (one batch).
        seed: First reset seed; vehicle ``i`` uses ``seed + i`` (keep it >= ``HELD_OUT_SEED``
            for vehicles disjoint from training).
        presets: Named vehicles for the preset, cold-start and figure-eight tests.
        episode_steps: Steps per episode (500 = 5 s at 100 Hz).
        preset_episodes: Teacher-MDP initial states per preset (the re-run used 50).
        progress: Show progress bars.
        out_dir: If given, write plots, an MP4 animation, ``vehicles.csv``, ``report.json``
            and ``report.md`` there.
        title: Report title (defaults to the policy type).

    Returns:
        A JSON-ready dict: ``protocol`` (settings), ``held_out`` (survival, final error
        statistics in m, its own ``wall_time_s``, the same per thrust-to-weight bin in
        ``by_thrust_to_weight``, ``per_vehicle`` table), ``presets`` (per
        preset: the same statistics, ``cold_start`` and ``figure_eight``), ``headline``
        (:func:`headline`) and the total ``wall_time_s``.
    """
    if vehicles < 1 or episode_steps <= FINAL_WINDOW:
        raise ValueError(
            f"need vehicles >= 1 and episode_steps > {FINAL_WINDOW}, "
            f"got {vehicles} and {episode_steps}"
        )
    start = time.perf_counter()
    held_out = fly(policy, range(seed, seed + vehicles), episode_steps, progress=progress)
    held_out_time = time.perf_counter() - start
    flights: dict[str, dict[str, Flight]] = {}
    preset_results: dict[str, Any] = {}
    for name in presets:
        seeds = range(seed, seed + preset_episodes)
        runs = {
            "raptor": fly(policy, seeds, episode_steps, name, "raptor", progress=progress),
            "cold_start": fly(policy, [seed], episode_steps, name, "motors_off", progress=progress),
            "figure_eight": fly(
                policy, [seed], episode_steps, name, "hover", "figure_eight", progress=progress
            ),
        }
        flights[name] = runs
        cold = runs["cold_start"].errors[0]
        eight = runs["figure_eight"]
        preset_results[name] = {
            **_summary(runs["raptor"]),
            "cold_start": {
                "survived": bool(runs["cold_start"].survived[0]),
                "peak_error": float(cold.max()),
                "peak_time": float((np.argmax(cold) + 1) * DT),
                "final_error": float(cold[-FINAL_WINDOW:].mean()),
            },
            "figure_eight": {
                "survived": bool(eight.survived[0]),
                "rms": float(np.sqrt(np.mean(eight.errors[0] ** 2))),
                "rms_after_1s": float(np.sqrt(np.mean(eight.errors[0, FINAL_WINDOW:] ** 2))),
            },
        }
    result: dict[str, Any] = {
        "policy": policy.policy_type,
        "protocol": {
            "env": ENV_ID,
            "seed": seed,
            "vehicles": vehicles,
            "episode_steps": episode_steps,
            "dt": DT,
            "preset_episodes": preset_episodes,
            "input_clip": {"position": CLIP_POSITION, "velocity": CLIP_VELOCITY},
            "velocity_termination": False,
            "disturbance": True,
            "final_error_window_s": FINAL_WINDOW * DT,
        },
        "held_out": {
            **_summary(held_out),
            "wall_time_s": held_out_time,
            "by_thrust_to_weight": _by_thrust_to_weight(held_out),
            "per_vehicle": _per_vehicle(held_out),
        },
        "presets": preset_results,
    }
    result["wall_time_s"] = time.perf_counter() - start
    result["headline"] = headline(result)
    if out_dir is not None:
        write_outputs(Path(out_dir), result, held_out, flights, title or policy.policy_type)
    return result


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """The protocol's key numbers, in cm, s and %, keyed like :data:`REFERENCE_RERUN`."""
    held = result["held_out"]
    out = {"held-out survival (%)": 100 * held["survival_rate"]}
    for stat in ("mean", "median", "p90"):
        out[f"held-out final error {stat} (cm)"] = 100 * held["final_error"][stat]
    for name, r in result["presets"].items():
        out[f"{name} survival (%)"] = 100 * r["survival_rate"]
        out[f"{name} final error mean (cm)"] = 100 * r["final_error"]["mean"]
        out[f"{name} cold-start peak (cm)"] = 100 * r["cold_start"]["peak_error"]
        out[f"{name} cold-start peak time (s)"] = r["cold_start"]["peak_time"]
        out[f"{name} cold-start last 1 s (cm)"] = 100 * r["cold_start"]["final_error"]
        out[f"{name} figure-eight RMS (cm)"] = 100 * r["figure_eight"]["rms"]
        out[f"{name} figure-eight RMS after 1 s (cm)"] = 100 * r["figure_eight"]["rms_after_1s"]
    return out


def comparison_table(
    results: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, float] | None = None,
    reference_name: str = "reference re-run",
) -> str:
    """A markdown table, one row per headline number and one column per evaluated policy,
    plus an optional column of reference numbers ("—" where the reference has none)."""
    columns = {name: r["headline"] for name, r in results.items()}
    if reference is not None:
        columns[reference_name] = dict(reference)
    metrics = list(next(iter(results.values()))["headline"])
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for metric in metrics:
        cells = [_cell(col.get(metric)) for col in columns.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def thrust_to_weight_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of the held-out vehicles by thrust-to-weight bin, one column per
    policy: survivors of vehicles, and the survivors' median final error."""
    columns = {name: r["held_out"]["by_thrust_to_weight"] for name, r in results.items()}
    lines = [
        "| thrust-to-weight | vehicles | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    # Every policy flew the same vehicles: the bins and their sizes are the first one's.
    for i, bin_row in enumerate(next(iter(columns.values()))):
        cells = []
        for rows in columns.values():
            median = 100 * rows[i]["final_error"]["median"]
            error = f", {median:.3g} cm" if np.isfinite(median) else ""
            cells.append(f"{rows[i]['survived']}{error}")
        label, episodes = bin_row["thrust_to_weight"], bin_row["episodes"]
        lines.append(f"| {label} | {episodes} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_quadrotor_policies(
    policies: Mapping[str, Policy],
    vehicles: int = 300,
    seed: int = HELD_OUT_SEED,
    presets: Sequence[str] = PRESETS,
    episode_steps: int = 500,
    preset_episodes: int = 50,
    progress: bool = True,
    out_dir: str | Path | None = None,
    reference: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Evaluate several policies on the same vehicles, initial states and disturbances.

    Every policy runs :func:`evaluate_quadrotor` with the same ``seed``, so vehicle ``i`` is
    the same quadrotor in the same initial state for all of them. With ``out_dir``, each
    policy's outputs go to ``out_dir/<name>``, and the table, with the held-out vehicles by
    thrust-to-weight (:func:`thrust_to_weight_table`), to ``out_dir/report.md``.

    Returns:
        ``{"results": {name: evaluate_quadrotor result}, "table": markdown table}``.
    """
    if not policies:
        raise ValueError("compare_quadrotor_policies needs at least one policy")
    root = Path(out_dir) if out_dir is not None else None
    results = {
        name: evaluate_quadrotor(
            policy,
            vehicles=vehicles,
            seed=seed,
            presets=presets,
            episode_steps=episode_steps,
            preset_episodes=preset_episodes,
            progress=progress,
            out_dir=root / name if root is not None else None,
            title=name,
        )
        for name, policy in policies.items()
    }
    table = comparison_table(results, reference)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "report.md").write_text(
            f"# Quadrotor protocol: {', '.join(policies)}\n\n"
            f"{vehicles} held-out vehicles from seed {seed}, same vehicles and initial states "
            f"for every policy.\n\n{table}\n\n"
            "Held-out vehicles by thrust-to-weight: survivors, and their median final error.\n\n"
            f"{thrust_to_weight_table(results)}\n"
        )
    return {"results": results, "table": table}


def _cell(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------- outputs


def write_outputs(
    out_dir: Path,
    result: dict[str, Any],
    held_out: Flight,
    flights: Mapping[str, Mapping[str, Flight]],
    title: str,
    shown: int = 4,
) -> None:
    """Plots, an MP4 of a few trajectories, ``vehicles.csv``, ``report.json`` and ``report.md``.

    ``shown`` held-out vehicles appear in the trajectory plots and the animation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    traces = {f"{name} cold start": runs["cold_start"] for name, runs in flights.items()}
    traces |= {f"{name} teacher-MDP start": runs["raptor"] for name, runs in flights.items()}
    plot_trajectories(out_dir / "trajectories.png", traces, held_out, shown)
    plot_error_distribution(out_dir / "final_error_distribution.png", held_out)
    plot_error_over_time(out_dir / "error_over_time.png", held_out)
    eights = {name: runs["figure_eight"] for name, runs in flights.items()}
    if eights:
        plot_figure_eight(out_dir / "figure_eight.png", eights)
    animate(out_dir / "trajectories.mp4", eights, held_out, shown)
    with (out_dir / "vehicles.csv").open("w", newline="") as f:
        rows = result["held_out"]["per_vehicle"]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    highlights = {k: round(v, 3) for k, v in result["headline"].items()}
    highlights["wall time (s)"] = round(result["wall_time_s"], 1)
    write_report(out_dir, f"Quadrotor protocol: {title}", result, highlights)


def _time_axis(steps: int) -> np.ndarray:
    return np.arange(steps + 1) * DT


def plot_trajectories(
    path: Path, traces: Mapping[str, Flight], held_out: Flight, shown: int
) -> Path:
    """x, y, z (relative to the target) against time: first episode of each preset run, then
    ``shown`` held-out vehicles; crashed episodes end at their termination."""
    plt = pyplot()
    panels = [(name, f, 0) for name, f in traces.items()]
    panels += [
        (f"held-out seed {held_out.seeds[i]} (m={held_out.vehicle['mass'][i]:.2g} kg)", held_out, i)
        for i in range(min(shown, len(held_out.seeds)))
    ]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.4 * rows), squeeze=False)
    for ax, (name, flight, i) in zip(axes.flat, panels):
        end = flight.terminated_step[i] if not flight.survived[i] else flight.errors.shape[1]
        t = _time_axis(flight.errors.shape[1])[: end + 1]
        for axis, label in enumerate("xyz"):
            ax.plot(t, flight.offsets[i, : end + 1, axis], label=label)
        ax.set_title(name + ("" if flight.survived[i] else " (crashed)"), fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("position - target (m)")
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_error_distribution(path: Path, held_out: Flight) -> Path:
    """Histogram (log bins) and CDF of the held-out final errors, with the re-run's numbers."""
    plt = pyplot()
    final = held_out.final_errors
    final = 100 * final[np.isfinite(final)]
    fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(final):
        low, high = max(final.min(), 1e-2), max(final.max(), 1e-1)
        ax_hist.hist(final, bins=np.geomspace(low, high * 1.01, 30), color="tab:blue")
        ax_hist.set_xscale("log")
        ax_cdf.plot(np.sort(final), np.arange(1, len(final) + 1) / len(held_out.seeds))
        ax_cdf.set_xscale("log")
    stats = {
        "median": REFERENCE_RERUN["held-out final error median (cm)"],
        "p90": REFERENCE_RERUN["held-out final error p90 (cm)"],
    }
    for (label, value), color in zip(stats.items(), ("tab:orange", "tab:red")):
        for ax in (ax_hist, ax_cdf):
            ax.axvline(value, color=color, ls="--", label=f"re-run {label} {value} cm")
    ax_hist.set_xlabel("final error, mean over the last 1 s (cm)")
    ax_hist.set_ylabel("vehicles")
    ax_cdf.set_xlabel("final error (cm)")
    ax_cdf.set_ylabel("fraction of all vehicles")
    ax_cdf.legend(fontsize=8)
    fig.suptitle(
        f"{held_out.survived.sum()}/{len(held_out.seeds)} held-out vehicles survive; "
        "final error of survivors"
    )
    return save_figure(fig, path)


def plot_error_over_time(path: Path, held_out: Flight) -> Path:
    """Median and 10-90 % band of the held-out position error against time (survivors)."""
    plt = pyplot()
    errors = 100 * held_out.errors[held_out.survived]
    t = _time_axis(held_out.errors.shape[1])[1:]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if len(errors):
        ax.fill_between(t, *np.percentile(errors, [10, 90], axis=0), alpha=0.3, label="10-90 %")
        ax.plot(t, np.median(errors, axis=0), label="median")
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no vehicle survived", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("position error (cm)")
    ax.set_title("held-out vehicles (survivors)")
    return save_figure(fig, path)


def _figure_eight_paths(flight: Flight) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (x, y) path of vehicle 0 and the reference path, each ``(T + 1, 2)``."""
    import torch

    # The reference's shape is the simulator's definition; import it only when plotting.
    from sims.quadrotor.env import figure_eight

    t = torch.as_tensor(_time_axis(flight.errors.shape[1]))
    reference = figure_eight(t)[0].numpy()[:, :2]
    return flight.offsets[0, :, :2] + reference, reference


def plot_figure_eight(path: Path, flights: Mapping[str, Flight]) -> Path:
    """The flown x-y path against the figure-eight reference, one panel per preset."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(flights), figsize=(5 * len(flights), 3.8), squeeze=False)
    for ax, (name, flight) in zip(axes.flat, flights.items()):
        flown, reference = _figure_eight_paths(flight)
        rms = 100 * np.sqrt(np.mean(flight.errors[0] ** 2))
        ax.plot(reference[:, 0], reference[:, 1], "k--", label="reference")
        ax.plot(flown[:, 0], flown[:, 1], label="flown")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_title(f"{name}: RMS {rms:.1f} cm")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def animate(
    path: Path,
    eights: Mapping[str, Flight],
    held_out: Flight,
    shown: int,
    stride: int = 5,
    fps: float = 20.0,
) -> Path | None:
    """An MP4 of the trajectories growing over time: the figure-eight flights (x-y, with the
    moving reference point) and ``shown`` held-out vehicles (x-z relative to the target)."""
    plt = pyplot()
    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for name, flight in eights.items():
        flown, reference = _figure_eight_paths(flight)
        panels.append((f"{name} figure-eight (x-y)", flown, reference))
    for i in range(min(shown, len(held_out.seeds))):
        panels.append((f"held-out {held_out.seeds[i]} (x-z)", held_out.offsets[i, :, ::2], None))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    artists = []
    for ax, (name, xy, reference) in zip(axes.flat, panels):
        both = xy if reference is None else np.concatenate([xy, reference])
        low, high = both.min(0), both.max(0)
        pad = 0.1 * max(float((high - low).max()), 1e-2)
        ax.set_xlim(low[0] - pad, high[0] + pad)
        ax.set_ylim(low[1] - pad, high[1] + pad)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        if reference is not None:
            ax.plot(reference[:, 0], reference[:, 1], "k:", lw=0.8)
        # Animated artists stay out of the static background, which is drawn once (blitting:
        # a full redraw per frame costs ~0.4 s on a 2-core machine).
        (trace,) = ax.plot([], [], lw=1.2, animated=True)
        (point,) = ax.plot([], [], "o", color="tab:red", ms=4, animated=True)
        (target,) = ax.plot([], [], "x", color="k", ms=6, animated=True)
        artists.append((ax, trace, point, target, xy, reference))
    fig.tight_layout()
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    frames = []
    for k in range(0, len(panels[0][1]), stride):
        fig.canvas.restore_region(background)
        for ax, trace, point, target, xy, reference in artists:
            trace.set_data(xy[: k + 1, 0], xy[: k + 1, 1])
            point.set_data(xy[k : k + 1, 0], xy[k : k + 1, 1])
            goal = reference[k : k + 1] if reference is not None else np.zeros((1, 2))
            target.set_data(goal[:, 0], goal[:, 1])
            for artist in (trace, point, target):
                ax.draw_artist(artist)
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return write_video(path, [np.stack(frames)], fps)
