"""The whole RAPTOR recipe in one call: sample vehicles, train a teacher per vehicle, keep the
teachers that fly well enough, distil them into the student, export it.

Each stage writes into the run folder and is skipped when its output is already there, so an
interrupted run resumes at the stage it was in (teacher training also resumes mid-stage from
its own checkpoint). The simulator is passed in (``sample_vehicles``, ``env_factory``), so this
core module never imports ``sims``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robolearn.algos.raptor.distill import DistillConfig, distill
from robolearn.algos.raptor.export import export_c_header, export_numpy
from robolearn.algos.raptor.student import StudentPolicy
from robolearn.algos.raptor.teachers import (
    SIDE_BY_SIDE,
    TeacherConfig,
    Teachers,
    repeat_vehicles,
    train_teachers,
)
from robolearn.report import plot_curves


@dataclasses.dataclass
class RaptorConfig:
    """Population size, seeds, teacher selection and the two stages' configurations.

    Selection follows RAPTOR (reference §8): every teacher is evaluated deterministically over
    ``selection_episodes`` episodes and only those whose mean return reaches
    ``min_teacher_return`` (RAPTOR: 300 over 100 episodes) are distilled, best first. RAPTOR
    aborts when fewer than its 1000 pass; here the run goes on with those that pass, and stops
    with an error only when none does. ``min_teacher_return=None`` keeps every teacher.
    """

    teachers: int = 1000
    vehicle_seed: int = 0  # vehicles come from sample_vehicles(teachers, vehicle_seed)
    # The distillation's seed (None: the run's). Distillations of one teacher differ by a point
    # of survival from seed to seed; this draws another without training the teachers again.
    distill_seed: int | None = None
    workers: int = 1  # > 1: teacher training fans out over Ray tasks (a local Ray by default)
    # On a CPU, the teachers' keep-best evaluations and the student's per-epoch flights in a side
    # process beside training (the same results; on 2 cores the second one does them). On a GPU
    # they are quick, and a second process would need a CUDA context of its own: not used.
    evaluation_process: bool = True
    min_teacher_return: float | None = 300.0
    selection_episodes: int = 100
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        for name in ("teachers", "workers", "selection_episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if self.distill_seed is not None and not isinstance(self.distill_seed, int):
            raise ValueError(f"distill_seed={self.distill_seed!r}: must be an integer or None")
        if self.workers > self.teachers:
            raise ValueError(
                f"workers={self.workers}: more workers than teachers ({self.teachers})"
            )
        if self.workers > 1 and self.teacher.shared:
            raise ValueError(
                f"workers={self.workers}: a shared teacher (teacher.shared) is one agent; "
                "it trains in one process"
            )


def train_raptor(
    cfg: RaptorConfig,
    sample_vehicles: Callable[[int, int], Any],
    env_factory: Callable[[Any, int, str], Any],
    run_dir: Path,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> tuple[StudentPolicy, dict[str, Any]]:
    """Run (or resume) the pipeline in ``run_dir``; return the student and a summary.

    Writes ``teachers/`` (all teacher actors), ``teacher_selection.json`` (every teacher's
    evaluation return and the distilled ones), ``policy/`` (the student checkpoint),
    ``export/raptor_student.py`` and ``export/raptor_student.h``, ``distill.png`` and
    ``raptor_summary.json`` (with ``stage_wall_s``, the seconds each stage ran in this call:
    teachers and a selection loaded from an earlier call are absent; the distillation, which
    resumes from its checkpoint, is counted from the resumption).
    """
    run_dir = Path(run_dir)
    side_process = cfg.evaluation_process and torch.device(device).type == "cpu"
    stage_wall_s: dict[str, float] = {}
    clock = time.perf_counter()
    params = sample_vehicles(cfg.teachers, cfg.vehicle_seed)
    teachers_dir = run_dir / "teachers"
    if (teachers_dir / "policy.json").exists():
        say(f"teachers: loading the {cfg.teachers} trained teachers from {teachers_dir}")
        teachers = Teachers.load(teachers_dir, device=device)
    else:
        who = (
            f"one shared SAC teacher on {cfg.teachers} vehicles"
            if cfg.teacher.shared
            else f"{cfg.teachers} SAC teachers"
        )
        say(
            f"teachers: training {who} for {cfg.teacher.steps} steps each"
            + (f" on {cfg.workers} Ray workers" if cfg.workers > 1 else "")
        )
        if cfg.workers > 1:
            teachers = train_teachers_distributed(
                params, cfg.teacher, env_factory, cfg.workers, seed, run_dir / "teacher_training"
            )
        else:
            teachers = train_teachers(
                params,
                cfg.teacher,
                env_factory,
                seed,
                device,
                progress,
                run_dir=run_dir / "teacher_training",
                evaluation_process=side_process,
            )
        teachers.save(teachers_dir)
        stage_wall_s["teachers"] = time.perf_counter() - clock
    teacher_returns = teachers.train_returns or []

    selection_path = run_dir / "teacher_selection.json"
    selected_before, clock = selection_path.exists(), time.perf_counter()
    selection = select_teachers(
        teachers, params, cfg, env_factory, selection_path, seed, device, say
    )
    if not selected_before:
        stage_wall_s["selection"] = time.perf_counter() - clock
    kept = selection["distilled"]
    say(f"distillation: {cfg.distill.epochs} epochs over {len(kept)} vehicles")
    distill_seed = seed if cfg.distill_seed is None else cfg.distill_seed
    side_by_side = min(cfg.distill.episodes_per_teacher, SIDE_BY_SIDE)
    rows = repeat_vehicles(params.select(kept), side_by_side)
    clock = time.perf_counter()
    student, curves = distill(
        env_factory(rows, distill_seed + 1, device),
        teachers.select(kept),
        cfg.distill,
        run_dir / "distill_training",
        distill_seed,
        device,
        progress,
        flight_env=env_factory(rows, distill_seed + 3, device),
        flight_process=side_process,
    )
    stage_wall_s["distillation"] = time.perf_counter() - clock
    say(
        "wall time of the stages run now: "
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in stage_wall_s.items())
    )
    policy_dir = student.save(run_dir / "policy")
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    export_numpy(student, run_dir / "export" / "raptor_student.py")
    export_c_header(student, run_dir / "export" / "raptor_student.h")
    epochs = range(1, len(curves["loss"]) + 1)
    plot_curves(
        run_dir / "distill.png",
        {"imitation loss": (list(epochs), curves["loss"])},
        "distillation",
        "MSE (teacher action)",
        log_y=True,
    )
    summary = {
        "teachers": cfg.teachers,
        "teacher_steps": cfg.teacher.steps,
        "teacher_train_return_median": _median(teacher_returns),
        "teacher_eval_return_median": _median(selection["returns"]),
        "teachers_distilled": len(kept),
        "distill_epochs": cfg.distill.epochs,
        "best_student_return": max(curves["student_return"]),
        "final_imitation_loss": curves["loss"][-1],
        "policy": str(policy_dir),
        "stage_wall_s": stage_wall_s,
    }
    (run_dir / "raptor_summary.json").write_text(json.dumps(summary, indent=2))
    return student, summary


def select_teachers(
    teachers: Teachers,
    params: Any,
    cfg: RaptorConfig,
    env_factory: Callable[[Any, int, str], Any],
    path: Path,
    seed: int = 0,
    device: str = "cpu",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate every teacher and pick the ones to distil (best first); cached in ``path``.

    Returns ``{"returns": [...], "distilled": [indices], "min_teacher_return": bar}``.
    Raises RuntimeError when no teacher reaches the bar.
    """
    if path.exists():
        return json.loads(path.read_text())
    n, episodes = teachers.num_teachers, cfg.selection_episodes
    say(f"selection: evaluating {n} teachers over {episodes} episodes each")
    side_by_side = repeat_vehicles(params, min(episodes, SIDE_BY_SIDE))
    returns = teachers.evaluate(env_factory(side_by_side, seed + 2, device), episodes).cpu()
    order = torch.argsort(returns, descending=True)
    bar = cfg.min_teacher_return
    kept = [int(i) for i in order if bar is None or returns[i] >= bar]
    if not kept:
        raise RuntimeError(
            f"no teacher reached the mean return {bar} (best {returns.max().item():.1f}): train "
            "them longer (algo.teacher.steps) or lower algo.min_teacher_return"
        )
    say(
        f"selection: {len(kept)}/{n} teachers reach {bar}"
        f" (median return {returns.median().item():.1f})"
    )
    selection = {"returns": returns.tolist(), "distilled": kept, "min_teacher_return": bar}
    path.write_text(json.dumps(selection, indent=2))
    return selection


def train_teachers_distributed(
    params: Any,
    cfg: TeacherConfig,
    env_factory: Callable[[Any, int, str], Any],
    workers: int,
    seed: int,
    run_dir: Path,
) -> Teachers:
    """Train the teachers in ``workers`` chunks of vehicles, one Ray task (one CPU) each.

    Chunk ``k`` is exactly ``train_teachers(params.select(chunk_k), seed=seed + k)``, so a run
    is reproducible whatever the cluster; each chunk checkpoints under ``run_dir/worker_<k>``
    and resumes there. Ray connects to the cluster named by ``RAY_ADDRESS`` or starts a local
    one. ``params`` must offer ``batch_size`` and ``select(indices)``.
    """
    import ray

    chunks = [c.tolist() for c in torch.arange(params.batch_size).chunk(workers)]
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_train_chunk)
    futures = [
        task.remote(params.select(chunk), cfg, env_factory, seed + k, str(run_dir / f"worker_{k}"))
        for k, chunk in enumerate(chunks)
    ]
    return concat_teachers(ray.get(futures))


def _train_chunk(
    params: Any, cfg: TeacherConfig, env_factory: Any, seed: int, run_dir: str
) -> Teachers:
    torch.set_num_threads(1)  # one CPU per task: more threads only contend
    return train_teachers(params, cfg, env_factory, seed, "cpu", False, run_dir=run_dir)


def concat_teachers(parts: list[Teachers]) -> Teachers:
    """One ``Teachers`` holding every part's teachers, in order."""
    first = parts[0]
    returns = [r for p in parts for r in (p.train_returns or [float("nan")] * p.num_teachers)]
    merged = Teachers(
        sum(p.num_teachers for p in parts),
        first.obs_dim,
        first.act_dim,
        first.actor_hidden,
        returns,
    )
    states = [p.actor.state_dict() for p in parts]
    merged.actor.load_state_dict({k: torch.cat([s[k] for s in states]) for k in states[0]})
    return merged


def _median(values: list[float]) -> float | None:
    finite = sorted(v for v in values if v == v)
    return finite[len(finite) // 2] if finite else None
