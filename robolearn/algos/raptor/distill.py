"""Meta-imitation: distil many teachers into one recurrent student (RAPTOR, reference §8).

Each teacher is an expert for one vehicle; the student sees only the 22-D observation and must
infer the vehicle from its history. Read top to bottom:

* ``collect`` flies every vehicle for one episode — the teacher flies in the first epochs
  (behaviour cloning), afterwards the student flies and every state it visits is relabelled
  with that vehicle's teacher action (on-policy imitation, the dataset rebuilt each epoch);
* ``distill`` alternates collection and training by backpropagation through whole episodes
  (MSE on the teacher's action, masked after a crash), flies the student every epoch (``fly``,
  in a side process when it has an env of its own) and keeps the best one, checkpointing
  after every epoch so that an interrupted run resumes;
* ``crash_replay`` (ours) keeps the student's crashed episodes of earlier epochs in the data:
  a crash is a state the student cannot yet recover from, the rarest and most useful data;
* ``steady_state_offsets`` measures where each teacher really hovers: RAPTOR subtracts that
  offset from the student's position input while it learns, so the student is taught to hover
  at the target rather than at each teacher's slightly-off point; ``disturbance_correction``
  (ours) makes that offset follow each episode's disturbance force.

The env is a batched torch env with ``k`` rows per teacher (``sims.quadrotor.torch_env`` over
``repeat_vehicles(params, k)``: row ``j`` flies teacher ``j % N``'s vehicle, so ``k`` episodes
of every vehicle fly at once): ``reset(mask)`` and ``step(action)`` return the teachers'
privileged observations, ``student_observation()`` the student's 22-D input.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from robolearn.algos.raptor.student import RaptorStudent, StudentPolicy
from robolearn.training import Checkpointer, MetricLog
from robolearn.utils import progress_bar, side_process


class DistillEnv(Protocol):
    """``k`` rows per teacher, torch tensors in and out (``sims.quadrotor.torch_env``)."""

    num_envs: int
    generator: torch.Generator  # the env's RNG (initial states), saved with a checkpoint
    force: torch.Tensor  # (rows, 3) each row's constant disturbance force this episode

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def student_observation(self) -> torch.Tensor: ...


class TeacherSet(Protocol):
    """Teacher ``i`` acts for rows ``i``, ``i + N``, ... from their privileged observations."""

    num_teachers: int

    def act(self, teacher_obs: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass
class DistillConfig:
    """Distillation schedule; defaults follow RAPTOR (reference §8).

    ``passes`` is ours: optimizer passes over each epoch's episodes. RAPTOR makes one pass over
    up to 5M samples per epoch (1000 vehicles x 10 episodes); a population of tens of vehicles
    collects a hundredth of that, and more passes buy gradient steps without more simulation.

    ``lr_final`` is ours: if set, the learning rate follows a cosine from ``lr`` in the first
    epoch to ``lr_final`` in the last (RAPTOR: constant). A student at a constant 1e-3 stops
    improving after ~30 of 45 epochs; ten more at 1e-4 took its held-out median final error
    from 3.3 to 2.9 cm.

    ``crash_replay`` is ours too: up to this many of the student's crashed on-policy episodes
    (the newest kept) join every later epoch's data, labelled by the teachers as they were
    flown. RAPTOR rebuilds the dataset every epoch, so a crash from a far start on an agile
    vehicle, which its teacher recovers from, is a few of its thousands of episodes once and
    then gone; kept, the states the student cannot recover from yet weigh on until it can
    (aggregation as in DAgger, for the failures only).

    ``disturbance_correction`` is ours: RAPTOR's position correction subtracts each teacher's
    mean hover offset, but where a teacher hovers moves with the episode's constant disturbance
    force (its scatter around the mean is ~6 cm RMS, a linear fit in the force leaves ~2.5),
    and that part of the offset is taught to the student as it is. With it, the correction is
    fitted per teacher and axis as ``offset = a + b * force`` over three times as many teacher
    episodes and applied with each episode's force: the student, which cannot see the force,
    is taught to cancel it from its history, as an integrator would.
    """

    epochs: int = 1000
    teacher_forcing_epochs: int = 10
    episodes_per_teacher: int = 10
    episode_steps: int = 500
    batch_episodes: int = 64
    lr: float = 1e-4
    lr_final: float | None = None
    position_correction: bool = True
    disturbance_correction: bool = False
    passes: int = 1
    crash_replay: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "episodes_per_teacher", "episode_steps", "batch_episodes", "passes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"distill.{name}={getattr(self, name)!r}: must be an integer >= 1")
        if not isinstance(self.crash_replay, int) or self.crash_replay < 0:
            raise ValueError(f"distill.crash_replay={self.crash_replay!r}: must be an integer >= 0")
        if not isinstance(self.teacher_forcing_epochs, int) or self.teacher_forcing_epochs < 0:
            raise ValueError(
                f"distill.teacher_forcing_epochs={self.teacher_forcing_epochs!r}: must be >= 0"
            )
        if not self.lr > 0:
            raise ValueError(f"distill.lr={self.lr!r}: must be > 0")
        if self.lr_final is not None and not 0 < self.lr_final <= self.lr:
            raise ValueError(f"distill.lr_final={self.lr_final!r}: must be in (0, lr]")
        if self.disturbance_correction and not self.position_correction:
            raise ValueError("distill.disturbance_correction needs distill.position_correction")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based)."""
        if self.lr_final is None or self.epochs == 1:
            return self.lr
        progress = epoch / (self.epochs - 1)
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * progress))


@dataclasses.dataclass
class Rollouts:
    """Episodes of one collection: student inputs, teacher labels, alive mask, returns."""

    obs: torch.Tensor  # (E, T, 22)
    labels: torch.Tensor  # (E, T, 4)
    mask: torch.Tensor  # (E, T) 1 while the vehicle has not crashed
    returns: torch.Tensor  # (E,)
    survived: torch.Tensor  # (E,) bool: never crashed

    def __getitem__(self, index: torch.Tensor | slice) -> Rollouts:
        """The episodes at ``index`` (indices, a boolean mask or a slice over episodes)."""
        return Rollouts(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    def to(self, device: str | torch.device) -> Rollouts:
        """The episodes on ``device``."""
        return Rollouts(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


@dataclasses.dataclass
class PositionOffset:
    """Where each teacher hovers, per axis ``intercept + slope * force``: ``(N, 3)`` each.

    RAPTOR's correction is the intercept alone (slope 0); ``disturbance_correction`` fits the
    slope too.
    """

    intercept: torch.Tensor
    slope: torch.Tensor

    def rows(self, force: torch.Tensor) -> torch.Tensor:
        """The offset of every env row ``(rows, 3)`` (row ``j`` flies teacher ``j % N``) under
        its disturbance ``force`` ``(rows, 3)``."""
        k = len(force) // len(self.intercept)
        return self.intercept.repeat(k, 1) + self.slope.repeat(k, 1) * force

    def to(self, device: str | torch.device) -> PositionOffset:
        """The offsets on ``device``."""
        return PositionOffset(self.intercept.to(device), self.slope.to(device))


@torch.no_grad()
def collect(
    env: DistillEnv,
    teachers: TeacherSet,
    student: RaptorStudent | None,
    steps: int,
    position_offset: PositionOffset | None = None,
) -> Rollouts:
    """One episode per env row, flown by ``student`` (or by the teachers when None).

    ``position_offset``, if given, is subtracted from the student's position input (columns
    0-2), in the data and in what the student flies on.
    """
    n = env.num_envs
    teacher_obs = env.reset()
    offset = None if position_offset is None else position_offset.rows(env.force)
    hidden = student.initial_state(n) if student is not None else None
    alive = torch.ones(n, dtype=torch.bool, device=teacher_obs.device)
    returns = torch.zeros(n, device=teacher_obs.device)
    obs, labels, mask = [], [], []
    for _ in range(steps):
        student_obs = env.student_observation()
        if offset is not None:
            student_obs = torch.cat((student_obs[:, :3] - offset, student_obs[:, 3:]), 1)
        label = teachers.act(teacher_obs)
        if student is None:
            action = label
        else:
            # The raw output is what the env records as the next previous-action input.
            action, hidden = student.step(student_obs, hidden)
        # A crashed vehicle keeps integrating and its state may blow up to inf/NaN; those steps
        # are masked out of the loss, but a NaN would still poison the gradients (0 * NaN), so
        # they are recorded as zeros.
        obs.append(torch.where(alive[:, None], student_obs, 0.0))
        labels.append(torch.where(alive[:, None], label, 0.0))
        mask.append(alive.clone())
        teacher_obs, reward, terminated, truncated = env.step(action)
        returns += torch.where(alive, reward, torch.zeros_like(reward))
        alive &= ~terminated
        if not alive.any() or truncated.all():
            break
    return Rollouts(
        torch.stack(obs, 1), torch.stack(labels, 1), torch.stack(mask, 1).float(), returns, alive
    )


@torch.no_grad()
def steady_state_offsets(
    env: DistillEnv,
    teachers: TeacherSet,
    episodes: int,
    steps: int,
    follow_force: bool = False,
) -> PositionOffset:
    """Where each teacher hovers: its mean position over the second half of its episodes.

    RAPTOR's steady-state position correction (reference §8, steps 250-500 of 500): a teacher
    whose hover point is a few centimetres off the target would otherwise teach the student
    that offset. The mean counts the second-half steps flown before any crash; a teacher that
    never reaches a second half gets offset 0. With ``follow_force`` (``DistillConfig``'s
    ``disturbance_correction``), a line per teacher and axis through the mean positions of the
    episodes that survived whole against their disturbance force (least squares; slope 0 with
    fewer than 3 such episodes, the mean with none); otherwise the mean, slope 0. Positions are
    read from the student observation (columns 0-2), whose clipping is far above any hover
    offset.
    """
    n, k = teachers.num_teachers, rows_per_teacher(env, teachers)
    total = torch.zeros(env.num_envs, 3)
    count = torch.zeros(env.num_envs, 1)
    episode_positions, forces, survived = [], [], []
    for _ in range(math.ceil(episodes / k)):
        teacher_obs = env.reset()
        forces.append(env.force.cpu())
        alive = torch.ones(env.num_envs, dtype=torch.bool, device=teacher_obs.device)
        episode_total = torch.zeros(env.num_envs, 3)
        for t in range(steps):
            if t >= steps // 2:
                position = env.student_observation()[:, :3]
                position = torch.where(alive[:, None], position, 0.0).cpu()
                total += position
                count += alive[:, None].float().cpu()
                episode_total += position
            teacher_obs, _, terminated, _ = env.step(teachers.act(teacher_obs))
            alive &= ~terminated
        episode_positions.append(episode_total / (steps - steps // 2))
        survived.append(alive.cpu())
    mean = total.view(k, n, 3).sum(0) / count.view(k, n, 1).sum(0).clamp(min=1.0)
    if not follow_force:
        return PositionOffset(mean, torch.zeros_like(mean))
    # (episodes of a teacher, teachers, 3): row j of a round flies teacher j % n. The line is
    # fitted on the episodes that survived whole.
    position, force = (torch.cat(x).view(-1, n, 3) for x in (episode_positions, forces))
    weight = torch.cat(survived).view(-1, n, 1).float()
    episodes_kept = weight.sum(0)
    mean_force = (weight * force).sum(0) / episodes_kept.clamp(min=1.0)
    mean_position = (weight * position).sum(0) / episodes_kept.clamp(min=1.0)
    df, dp = force - mean_force, position - mean_position
    variance = (weight * df * df).sum(0)
    slope = (weight * df * dp).sum(0) / variance.clamp(min=1e-12)
    slope = torch.where((episodes_kept >= 3) & (variance > 0), slope, 0.0)
    fitted = episodes_kept >= 1
    return PositionOffset(torch.where(fitted, mean_position - slope * mean_force, mean), slope)


def rows_per_teacher(env: DistillEnv, teachers: TeacherSet) -> int:
    """``k``: the env's rows per teacher (each flies teacher ``row % N``'s vehicle)."""
    if env.num_envs % teachers.num_teachers:
        raise ValueError(
            f"env has {env.num_envs} rows: not a multiple of {teachers.num_teachers} teachers"
        )
    return env.num_envs // teachers.num_teachers


def imitation_loss(student: RaptorStudent, batch: Rollouts) -> torch.Tensor:
    """Masked MSE between the student's raw actions and the teacher labels, through time."""
    actions, _ = student(batch.obs)
    error = ((actions - batch.labels) ** 2).mean(-1)
    return (error * batch.mask).sum() / batch.mask.sum().clamp(min=1.0)


def _concat(parts: list[Rollouts]) -> Rollouts:
    """The episodes of all ``parts``, padded to the longest part's steps with masked zeros (a
    collection ends early when every vehicle crashed: the steps it never flew carry no label).
    An epoch's data is hundreds of MB, so nothing is copied that need not be."""
    if len(parts) == 1:
        return parts[0]
    steps = max(p.obs.shape[1] for p in parts)

    def padded(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == steps:
            return x
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, steps - x.shape[1]))

    return Rollouts(
        torch.cat([padded(p.obs) for p in parts]),
        torch.cat([padded(p.labels) for p in parts]),
        torch.cat([padded(p.mask) for p in parts]),
        torch.cat([p.returns for p in parts]),
        torch.cat([p.survived for p in parts]),
    )


@torch.no_grad()
def fly(env: DistillEnv, student: RaptorStudent, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One episode per env row flown by ``student`` as deployed (no position correction, no
    labels); returns each row's return and whether it never crashed, ``(E,)`` each."""
    obs = env.reset()
    hidden = student.initial_state(env.num_envs)
    alive = torch.ones(env.num_envs, dtype=torch.bool, device=obs.device)
    returns = torch.zeros(env.num_envs, device=obs.device)
    for _ in range(steps):
        action, hidden = student.step(env.student_observation(), hidden)
        _, reward, terminated, truncated = env.step(action)
        returns += torch.where(alive, reward, torch.zeros_like(reward))
        alive &= ~terminated
        if not alive.any() or truncated.all():
            break
    return returns, alive


class _Flight:
    """The student's per-epoch flight, in a side process when it has an env of its own.

    A flight is mostly Python stepping small tensor ops, which a second thread could overlap
    with the next epoch's collection only where the ops release the GIL (4-11% of an epoch at
    full scale on 2 cores); a side process flies on a core of its own. It flies copies of the
    student and of the env and sends back the results and the env's RNG state, so the env
    here draws on exactly as if it had flown here.
    """

    def __init__(self, env: DistillEnv, steps: int, executor: Executor | None) -> None:
        self.env, self.steps, self.executor = env, steps, executor
        self.pending: Future | None = None
        self.flown: tuple[torch.Tensor, torch.Tensor] | None = None

    def start(self, student: RaptorStudent) -> None:
        """Fly ``student`` now, or a copy of it in the side process."""
        if self.executor is None:
            self.flown = fly(self.env, student.eval(), self.steps)
        else:
            flyer = copy.deepcopy(student).eval()
            self.pending = self.executor.submit(_fly_and_report_rng, self.env, flyer, self.steps)

    def result(self) -> tuple[float, float]:
        """Mean return and survival rate of the flight last started."""
        if self.pending is not None:
            returns, survived, rng = self.pending.result()
            self.env.generator.set_state(rng)
            self.flown, self.pending = (returns, survived), None
        returns, survived = self.flown
        return returns.mean().item(), survived.float().mean().item()

    def close(self) -> None:
        """Stop the side process; a flight still pending (an epoch cut short) is dropped."""
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


def _fly_and_report_rng(
    env: DistillEnv, student: RaptorStudent, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fly`` plus the env's RNG state after it (picklable, for a side process)."""
    returns, survived = fly(env, student, steps)
    return returns, survived, env.generator.get_state()


def distill(
    env: DistillEnv,
    teachers: TeacherSet,
    cfg: DistillConfig,
    run_dir: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    flight_env: DistillEnv | None = None,
    flight_process: bool = True,
) -> tuple[StudentPolicy, dict[str, list[float]]]:
    """Train a student from ``teachers``; return the best epoch's student and the curves.

    Each epoch collects ``cfg.episodes_per_teacher`` episodes of every vehicle, rounded up to a
    multiple of the env's rows per teacher. Curves: per epoch the imitation loss, the student's
    mean return and survival rate flying every row of ``flight_env`` once (as deployed: no
    position correction), and whether the data came from the teachers or the student.

    ``flight_env`` (default: ``env``) is where those flights run. On an env of their own they
    fly, with ``flight_process``, in a side process (``robolearn.utils.side_process``) while
    the next epoch's data is collected on ``env`` (the env must then be picklable), and the
    run is the same as without.

    With ``run_dir``, every epoch ends with a checkpoint there (``checkpoints/latest``: the
    current student plus the training state, every epoch's weights among it as
    ``epoch_students``) and a call with the same arguments resumes after the last finished
    epoch.
    """
    torch.manual_seed(seed)
    flight_env = env if flight_env is None else flight_env
    student = RaptorStudent().to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    curves: dict[str, list[float]] = {
        "loss": [],
        "student_return": [],
        "student_survival": [],
        "on_policy": [],
    }
    best_return, best_state = -float("inf"), copy.deepcopy(student.state_dict())
    # Every epoch's weights (8 KB each), so that another choice than the best flight return
    # (an epoch picked on other vehicles, an average of epochs) needs no retraining.
    epoch_students: list[dict[str, torch.Tensor] | None] = []
    offset = None
    crashes: Rollouts | None = None  # cfg.crash_replay's episodes, newest first
    checkpointer = Checkpointer(run_dir) if run_dir is not None else None
    state = checkpointer.load_state() if checkpointer is not None else None
    if state is not None:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        # Checkpoints from before flights had an env of their own have no flight generator: the
        # flight env then keeps its own seed. (With flights on env, env's state is set last.)
        if "flight_env_generator" in state:
            flight_env.generator.set_state(state["flight_env_generator"])
        env.generator.set_state(state["env_generator"])
        curves, best_return, best_state = state["curves"], state["best_return"], state["best"]
        offset = state["position_offset"]
        if isinstance(offset, torch.Tensor):  # checkpoints from before the force-following fit
            offset = PositionOffset(offset, torch.zeros_like(offset))
        elif offset is not None:
            offset = PositionOffset(**offset)
        # Checkpoints of runs from before crash replay and the survival curve have neither.
        crashes = state.get("crashes")
        # Older checkpoints kept only the best and the latest weights (None: not kept).
        epoch_students = state.get("epoch_students", [None] * len(curves["loss"]))
        curves.setdefault("student_survival", [math.nan] * len(curves["loss"]))
    elif cfg.position_correction:
        # A line per axis is two numbers where the mean is one: three times the episodes.
        episodes = cfg.episodes_per_teacher * (3 if cfg.disturbance_correction else 1)
        offset = steady_state_offsets(
            env, teachers, episodes, cfg.episode_steps, cfg.disturbance_correction
        )
    if offset is not None:
        offset = offset.to(device)
    if crashes is not None:
        crashes = crashes.to(device)
    rounds = math.ceil(cfg.episodes_per_teacher / rows_per_teacher(env, teachers))

    def gather(epoch: int) -> Rollouts:
        """Epoch ``epoch``'s data, flown by the teachers or (on-policy) by the student now."""
        flyer = student if epoch >= cfg.teacher_forcing_epochs else None
        student.eval()
        parts = [collect(env, teachers, flyer, cfg.episode_steps, offset) for _ in range(rounds)]
        return _concat(parts)

    first_epoch = len(curves["loss"])
    log = MetricLog(run_dir) if run_dir is not None else None
    if log is not None:
        log.truncate_after(first_epoch)

    side = side_process() if flight_env is not env and flight_process else None
    flight = _Flight(flight_env, cfg.episode_steps, side)
    bar = progress_bar(cfg.epochs, "distill", progress)
    bar.update(first_epoch)

    def end_epoch(epoch: int, losses: list[float], env_state: torch.Tensor) -> None:
        """Record epoch ``epoch``'s curves and best student, and checkpoint it with env's
        generator as it was before the next epoch's collection (``env_state``)."""
        nonlocal best_return, best_state
        flown, survival = flight.result()
        curves["loss"].append(sum(losses) / len(losses))
        curves["student_return"].append(flown)
        curves["student_survival"].append(survival)
        curves["on_policy"].append(float(epoch >= cfg.teacher_forcing_epochs))
        if log is not None:
            log.log(
                epoch + 1, **{f"distill/{k}": curves[k][-1] for k in curves if k != "on_policy"}
            )
        epoch_students.append(copy.deepcopy(student.state_dict()))
        if flown > best_return:
            best_return, best_state = flown, epoch_students[-1]
        if checkpointer is not None:
            checkpointer.save(
                StudentPolicy(copy.deepcopy(student).cpu()),
                {
                    "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "env_generator": env_state,
                    "flight_env_generator": flight_env.generator.get_state(),
                    "curves": curves,
                    "best_return": best_return,
                    "best": best_state,
                    "position_offset": (
                        None if offset is None else dataclasses.asdict(offset.to("cpu"))
                    ),
                    "crashes": crashes,
                    "epoch_students": epoch_students,
                },
            )
        bar.set_postfix(loss=f"{curves['loss'][-1]:.4f}", ret=f"{flown:.1f}", refresh=False)
        bar.update(1)

    try:
        data = gather(first_epoch) if first_epoch < cfg.epochs else None
        for epoch in range(first_epoch, cfg.epochs):
            if epoch >= cfg.teacher_forcing_epochs and cfg.crash_replay:
                earlier = crashes
                parts = [data[~data.survived]] + ([] if earlier is None else [earlier])
                crashes = _concat(parts)[: cfg.crash_replay]
                if earlier is not None:
                    data = _concat([data, earlier])
            student.train()
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(epoch)
            losses = []
            for _ in range(cfg.passes):
                order = torch.randperm(len(data.obs), generator=generator)
                for start in range(0, len(order), cfg.batch_episodes):
                    i = order[start : start + cfg.batch_episodes].to(data.obs.device)
                    loss = imitation_loss(student, data[i])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
            # The student's flight, then the next epoch's data (on a flight env of its own,
            # the two side by side, and the epoch ends after both).
            flight.start(student)
            env_state = env.generator.get_state()
            more = epoch + 1 < cfg.epochs
            if flight.executor is not None:
                data = gather(epoch + 1) if more else None
                end_epoch(epoch, losses, env_state)
            else:
                end_epoch(epoch, losses, env_state)
                data = gather(epoch + 1) if more else None
    finally:
        flight.close()
        bar.close()
        if log is not None:
            log.close()
    student.load_state_dict(best_state)
    return StudentPolicy(student.cpu()), curves
