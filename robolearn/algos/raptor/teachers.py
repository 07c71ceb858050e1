"""RAPTOR's RL teachers: one SAC agent per sampled quadrotor, all trained at once.

RAPTOR (reference raptor.md sections 5-8) trains one SAC teacher per vehicle on its fixed
dynamics, then distils all teachers into one recurrent student. Here the N teachers are the N
agents of :class:`robolearn.algos.batched_sac.BatchedSAC`, stepped against a batched torch env
with one fixed vehicle per row (``sims.quadrotor.torch_env.QuadrotorTorchEnv``, passed in as
``env_factory`` so robolearn never imports a simulator at module top level).

:class:`Teachers` is what distillation consumes: N deterministic actors (tanh of the Gaussian
mean) that map each vehicle's 26-D privileged observation to its 4 motor commands.

``TeacherConfig.shared`` departs from RAPTOR to fit full scale on a CPU: one SAC agent learns
from all N vehicles at once, told each vehicle's parameters (:class:`SharedTeacherEnv`), and is
expanded into the same N per-vehicle actors afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robolearn.algos.batched_sac import (
    BatchedReplay,
    BatchedSAC,
    BatchedSACConfig,
    BatchedTorchEnv,
    actor_due,
    merge_twin_critics,
    update_due,
)
from robolearn.nets.batched import BatchedMLP
from robolearn.policy import WEIGHTS_FILE, Observation, Policy, read_policy_file
from robolearn.training import Checkpointer, MetricLog
from robolearn.utils import progress_bar, side_process

#: ``env_factory(params, seed, device) -> BatchedTorchEnv`` with one env per vehicle in params.
EnvFactory = Callable[[Any, int, str], BatchedTorchEnv]

#: Offset of the seed of the keep-best evaluation env from the training seed.
KEEP_BEST_SEED = 1_000_003

#: Quantiles of the per-teacher returns written to the training log.
LOG_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

#: Evaluations fly up to this many episodes of every vehicle at once (``repeat_vehicles``).
SIDE_BY_SIDE = 10
#: What each keep-best evaluation logs (as ``eval/<name>``): the medians over teachers of the
#: candidates' returns and of the kept ones'.
EVAL_METRICS = ("return_median", "kept_return_median")


@dataclasses.dataclass
class TeacherConfig:
    """How to train the teachers.

    The defaults are RAPTOR's (``pre_training/config.h``, raptor.md section 7): SAC with a 3x64
    actor and twin 3x256 critics, batch 128, 10k warm-up steps, target entropy -2, 1M env steps
    per teacher, 500-step episodes; plus what made the CPU preset learn (initial alpha 0.05,
    hover-initialised actors, a reward curriculum, here over the first
    400k steps), which is measured only at the preset's scale. :meth:`cpu_budget` is the preset
    sized for a 2-core CPU.

    Attributes:
        sac: SAC hyperparameters (networks, learning rates, batch, replay size, warm-up).
        steps: Env steps per teacher (every teacher steps once per training step).
        episode_steps: Episodes are truncated after this many steps (on top of the env's own
            time limit).
        log_every: Log the return statistics every this many steps (needs ``run_dir``).
        checkpoint_every: Write a resumable checkpoint every this many steps (needs ``run_dir``).
        return_window: A teacher's training return is the mean of its last this-many episodes.
        hover_init: Start each actor's mean action at its vehicle's hover command (the env's
            ``hover_action()``), so that the first episodes are near-hovers instead of crashes.
        curriculum_steps: Learning to Fly's reward curriculum: the env's action-change and
            orientation weights (``env.action_change_weight``, ``env.orientation_weight``)
            ramp linearly from ``curriculum_start`` times their values to their values over
            this many steps, then stay there (0: no curriculum). Only training is affected:
            the returned teachers are judged on the env's own (RAPTOR's) weights.
        curriculum_start: Fraction of the final weights at step 0.
        normalize_obs: Divide the observations by the env's ``observation_scale()`` inside
            the agents (folded into the exported actors' first layer).
        keep_best_every: Every this many steps (and at the end), evaluate every teacher's
            deterministic policy on ``keep_best_episodes`` episodes and keep its best
            weights so far; the returned teachers are those (0: the final weights, as RAPTOR).
            Not in RAPTOR: SAC teachers short of RAPTOR's 1M steps swing by hundreds of return
            between checkpoints (BENCHMARKS.md, raptor-teachers-budget), and the final weights
            are a lottery ticket.
        keep_best_episodes: Episodes of each of those evaluations, on an env made afresh from
            the same seed every time (each teacher's first episode starts from the same state;
            later ones depend on when the other teachers' episodes end).
        shared: Train one SAC agent for all vehicles instead of one per vehicle: it sees each
            vehicle's parameters next to its observation and acts relative to its hover command
            (:class:`SharedTeacherEnv`, which also normalises the observation: ``hover_init``
            and ``normalize_obs`` do not apply). Not in RAPTOR: its update cost does not grow
            with the number of vehicles, and every vehicle's experience teaches all of them.
            The result is expanded into N per-vehicle actors, so selection and distillation
            are unchanged. ``sac.update_every`` does not apply either: see ``shared_updates``.
        shared_updates: With ``shared``, gradient steps per env step of all vehicles (the
            actor every ``sac.actor_every``-th of them).
    """

    sac: BatchedSACConfig = dataclasses.field(
        default_factory=lambda: BatchedSACConfig(initial_alpha=0.05, target_entropy=-2.0)
    )
    steps: int = 1_000_000
    episode_steps: int = 500
    log_every: int = 5_000
    checkpoint_every: int = 50_000
    return_window: int = 10
    hover_init: bool = True
    curriculum_steps: int = 400_000
    curriculum_start: float = 0.0
    normalize_obs: bool = False
    keep_best_every: int = 0
    keep_best_episodes: int = 10
    shared: bool = False
    shared_updates: int = 2

    def reward_scale(self, step: int) -> float:
        """Fraction of the final action-change and orientation weights used at ``step``."""
        if step >= self.curriculum_steps:
            return 1.0
        return self.curriculum_start + (1.0 - self.curriculum_start) * step / self.curriculum_steps

    @classmethod
    def cpu_budget(cls, steps: int = 60_000) -> TeacherConfig:
        """A preset for 1000 teachers on 2 CPU cores.

        RAPTOR's twin 3x256 critics dominate the cost of an update (about 30x the flops of the
        actor), so this preset shrinks them to 2x64 and the actor to 2x64, updates once every
        2 env steps with batch 128 (Learning to Fly updates its critic every 10 steps with batch
        256), warms up for 5k steps and keeps the whole run in the replay. What makes the
        teachers learn at all (BENCHMARKS.md, section raptor-teachers-budget): hover-initialised
        actors, initial alpha 0.05 with RAPTOR's target entropy -2,
        and the reward curriculum over the first two thirds of the run, without which the
        action-change penalty of SAC's exploration makes every step cost more than it earns.
        Each teacher's best weights are kept, evaluated every tenth of the run (at least
        every 1,000 steps; ``keep_best_every``).
        """
        sac = BatchedSACConfig(
            actor_hidden=(64, 64),
            critic_hidden=(64, 64),
            batch_size=128,
            warmup_steps=min(5_000, steps // 4),
            update_every=2,
            buffer_size=steps,
            actor_lr=1e-3,
            critic_lr=1e-3,
            alpha_lr=1e-3,
            initial_alpha=0.05,
            target_entropy=-2.0,
        )
        return cls(
            sac=sac,
            steps=steps,
            log_every=1_000,
            checkpoint_every=10_000,
            curriculum_steps=2 * steps // 3,
            keep_best_every=max(steps // 10, 1_000),
        )

    @classmethod
    def shared_cpu_budget(cls, steps: int = 20_000) -> TeacherConfig:
        """A preset for one shared teacher over 1000 vehicles on a CPU (``shared``).

        Every env step feeds 1000 transitions, so updates, not samples, are scarce: 2 gradient
        steps of batch 256 per step, a 3x64 actor and twin 3x128 critics, a replay of the last
        2M transitions, RAPTOR's learning rates and target entropy, initial alpha 0.05 and the
        reward curriculum over the first 60% of the run from a tenth of the final weights.
        Measured by a probe of it on 2 busy cores, on the 64 vehicles of the per-vehicle runs:
        31/64 reach RAPTOR's bar after 20k steps (30 minutes), 40/64 after 29k, where 150k-step
        per-vehicle teachers of the CPU preset reach 11/64 (BENCHMARKS.md
        raptor-shared-teacher).
        """
        sac = BatchedSACConfig(
            actor_hidden=(64, 64, 64),
            critic_hidden=(128, 128, 128),
            batch_size=256,
            warmup_steps=20,
            buffer_size=2_000_000,
            alpha_lr=1e-4,
            initial_alpha=0.05,
            target_entropy=-2.0,
        )
        return cls(
            sac=sac,
            steps=steps,
            log_every=max(steps // 40, 1),
            checkpoint_every=max(steps // 20, 1),
            curriculum_steps=3 * steps // 5,
            curriculum_start=0.1,
            keep_best_every=max(steps // 10, 1),
            shared=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (nested SAC config as a dict)."""
        return dataclasses.asdict(self)


class Teachers(Policy):
    """N deterministic teacher actors; row ``i`` of a batch is teacher ``i``'s vehicle.

    Args:
        num_teachers: N.
        obs_dim: Teacher observation size (26 for RAPTOR's privileged observation).
        act_dim: Action size (4 motor commands).
        actor_hidden: Hidden widths of each actor MLP (ReLU).
        train_returns: Each teacher's mean training return at the end of training, if known.
        device: Device of the weights.
    """

    policy_type = "raptor_teachers"

    def __init__(
        self,
        num_teachers: int,
        obs_dim: int = 26,
        act_dim: int = 4,
        actor_hidden: Sequence[int] = (64, 64, 64),
        train_returns: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_teachers, self.obs_dim, self.act_dim = num_teachers, obs_dim, act_dim
        self.actor_hidden = tuple(actor_hidden)
        self.train_returns = None if train_returns is None else [float(r) for r in train_returns]
        # The actor outputs the Gaussian's mean and log-std; a teacher acts with the mean. Its
        # initial weights are placeholders for loaded ones: drawn from a forked RNG, so that
        # making teachers mid-training (checkpoints, evaluations) leaves the run's draws alone.
        with torch.random.fork_rng(devices=[]):
            self.actor = BatchedMLP(num_teachers, obs_dim, self.actor_hidden, 2 * act_dim)
        self.actor.to(device).requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.actor[0].weight.device

    @classmethod
    def from_agents(
        cls, agents: BatchedSAC, train_returns: Sequence[float] | None = None
    ) -> Teachers:
        """The deterministic actors of trained SAC agents (weights copied)."""
        first = agents.actor[0].weight
        teachers = cls(
            agents.n,
            first.shape[1],
            agents.act_dim,
            agents.cfg.actor_hidden,
            train_returns,
            device=first.device,
        )
        teachers.actor.load_state_dict(agents.folded_actor_state())
        return teachers

    @torch.no_grad()
    def act(self, obs: Observation | torch.Tensor) -> Any:
        """Actions ``(k * N, 4)`` = tanh of each teacher's mean for observations
        ``(k * N, 26)``: row ``j`` is teacher ``j % N``'s, so ``k`` episodes of every vehicle
        fly side by side (``repeat_vehicles``) and each teacher's weights serve its ``k`` rows
        in one matrix product.

        Torch in, torch out (on the weights' device); numpy (or ``{"obs": array}``) in, float32
        numpy out.
        """
        if isinstance(obs, dict):
            obs = obs["obs"]
        is_numpy = not isinstance(obs, torch.Tensor)
        x = torch.as_tensor(np.asarray(obs) if is_numpy else obs, dtype=torch.float32)
        n = self.num_teachers
        if x.ndim != 2 or x.shape[1] != self.obs_dim or x.shape[0] % n or not len(x):
            raise ValueError(
                f"expected observations of shape (k * {n}, {self.obs_dim}), got {tuple(x.shape)}"
            )
        rows = x.to(self.device).view(-1, n, self.obs_dim).transpose(0, 1)  # (N, k, obs)
        mean = self.actor(rows)[..., : self.act_dim].transpose(0, 1).reshape(-1, self.act_dim)
        action = torch.tanh(mean)
        return action.cpu().numpy() if is_numpy else action

    def select(self, indices: Sequence[int]) -> Teachers:
        """The teachers at ``indices``, in that order (weights and returns copied)."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        returns = None if self.train_returns is None else [self.train_returns[i] for i in indices]
        subset = Teachers(
            len(index), self.obs_dim, self.act_dim, self.actor_hidden, returns, self.device
        )
        subset.actor.load_state_dict({k: v[index] for k, v in self.actor.state_dict().items()})
        return subset

    @torch.no_grad()
    def evaluate(self, env: BatchedTorchEnv, episodes: int = 10) -> torch.Tensor:
        """Each teacher's mean undiscounted return over ``episodes`` episodes on its own env.

        ``env`` has ``k`` envs per teacher (``num_envs == k * num_teachers``, row ``j`` for
        teacher ``j % N``, see ``repeat_vehicles``), which share a teacher's episodes between
        them; episodes end at the env's termination or time limit. Returns ``(N,)`` on the
        env's device.
        """
        n = self.num_teachers
        if env.num_envs % n:
            raise ValueError(f"env has {env.num_envs} envs: not a multiple of {n} teachers")
        k = env.num_envs // n
        obs = env.reset()
        # Row block r flies episodes // k episodes, the first episodes % k blocks one more.
        quota = torch.full((k, n), episodes // k, dtype=torch.long, device=obs.device)
        quota[: episodes % k] += 1
        quota = quota.flatten()
        episode_return = torch.zeros(env.num_envs, device=obs.device)
        total = torch.zeros_like(episode_return)
        count = torch.zeros(env.num_envs, dtype=torch.long, device=obs.device)
        while bool((count < quota).any()):
            obs, reward, terminated, truncated = env.step(self.act(obs))
            episode_return += reward
            done = terminated | truncated
            finished = done & (count < quota)
            total += torch.where(finished, episode_return, 0.0)
            count += finished.long()
            episode_return = torch.where(done, 0.0, episode_return)
            if bool(done.any()):
                obs = env.reset(done)
        return total.view(k, n).sum(0) / episodes

    def config(self) -> dict[str, Any]:
        return {
            "num_teachers": self.num_teachers,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "actor_hidden": list(self.actor_hidden),
            "train_returns": self.train_returns,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``policy.json`` (config) and ``model.safetensors`` (actor weights)."""
        from safetensors.torch import save_file

        path = super().save(path)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.actor.state_dict().items()}
        save_file(weights, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Teachers:
        """Rebuild teachers saved by :meth:`save`."""
        from safetensors.torch import load_file

        teachers = cls(**read_policy_file(path)["config"], device=device)
        teachers.actor.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE), device=device))
        return teachers


def repeat_vehicles(params: Any, k: int) -> Any:
    """``params`` (N vehicles) repeated ``k`` times in blocks: row ``j`` is vehicle ``j % N``,
    the layout :meth:`Teachers.act` expects for ``k`` episodes of every vehicle side by side.

    One batched step of ``k * N`` vehicles costs far less than ``k`` steps of ``N`` (fewer
    Python-level calls, and each teacher's matrix product serves ``k`` rows).
    """
    return params.select(list(range(params.batch_size)) * k)


class SharedTeacherEnv:
    """A batched teacher env as one agent shared by all its vehicles sees it
    (``TeacherConfig.shared``).

    The observation of vehicle ``i`` is its teacher observation divided by the env's
    ``observation_scale()``, followed by its ``vehicle_features()``. Actions are relative to
    hover: the agent's ``a`` in (-1, 1) commands the motors ``tanh(atanh(a) + atanh(h_i))``,
    ``h_i`` the vehicle's hover action, so ``a = 0`` hovers every vehicle (what ``hover_init``
    does for per-vehicle teachers) and a deterministic agent's ``tanh(mean)`` becomes
    ``tanh(mean + atanh(h_i))``: an output bias per vehicle, which is how :meth:`expand` turns
    the agent into N ordinary per-vehicle actors.

    Args:
        env: The batched env (one vehicle per row) with ``observation_scale()``,
            ``vehicle_features()`` and ``hover_action()``.
    """

    def __init__(self, env: BatchedTorchEnv) -> None:
        self.env = env
        self.num_envs, self.act_dim = env.num_envs, env.act_dim
        self.scale = env.observation_scale()
        self.features = env.vehicle_features()
        self.hover_offset = env.hover_action().clamp(-0.999, 0.999).atanh()
        self.obs_dim = env.obs_dim + self.features.shape[1]

    def _observe(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat((obs / self.scale, self.features), 1)

    def reset(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._observe(self.env.reset(mask))

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # tanh can round to +-1 in float32; atanh of that is infinite.
        pre_tanh = action.clamp(-1 + 1e-6, 1 - 1e-6).atanh()
        obs, reward, terminated, truncated = self.env.step(torch.tanh(pre_tanh + self.hover_offset))
        return self._observe(obs), reward, terminated, truncated

    def expand(self, agent: BatchedSAC, train_returns: Sequence[float] | None = None) -> Teachers:
        """The shared agent's deterministic policy as N per-vehicle actors on raw 26-D
        observations: each vehicle's scale folded into the first layer's weights, its features
        into the first layer's bias and its hover offset into the output bias."""
        state = agent.actor.state_dict()
        last = max(int(name.split(".")[0]) for name in state)
        n, base = self.num_envs, self.env.obs_dim
        actors = {k: v.expand(n, *v.shape[1:]).clone() for k, v in state.items()}
        first = state["0.weight"][0]
        actors["0.weight"] = first[None, :base] / self.scale[:, :, None]
        actors["0.bias"] = state["0.bias"] + (self.features @ first[base:])[:, None]
        actors[f"{last}.bias"][:, 0, : self.act_dim] += self.hover_offset
        teachers = Teachers(
            n, base, self.act_dim, agent.cfg.actor_hidden, train_returns, device=first.device
        )
        teachers.actor.load_state_dict(actors)
        return teachers


def _quantile_scalars(returns: torch.Tensor) -> dict[str, float]:
    finite = returns[torch.isfinite(returns)]
    if finite.numel() == 0:
        return {}
    scalars = {
        f"return/q{round(q * 100):02d}": torch.quantile(finite, q).item() for q in LOG_QUANTILES
    }
    scalars |= {"return/mean": finite.mean().item(), "return/min": finite.min().item()}
    return scalars


def train_teachers(
    params: Any,
    cfg: TeacherConfig,
    env_factory: EnvFactory,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    run_dir: str | Path | None = None,
    callback: Callable[[int, Teachers], None] | None = None,
    evaluation_process: bool = False,
) -> Teachers:
    """Train one SAC teacher per vehicle of ``params`` (or, with ``cfg.shared``, one for all of
    them) for ``cfg.steps`` steps of every vehicle.

    Args:
        params: The N vehicles (e.g. ``sims.quadrotor.params.QuadrotorParams`` of batch N);
            passed through to ``env_factory``.
        cfg: Training configuration.
        env_factory: ``env_factory(params, seed, device)`` builds the batched env, e.g.
            ``sims.quadrotor.torch_env.QuadrotorTorchEnv``.
        seed: Seeds torch (networks, exploration), the replay sampler and the env.
        device: Torch device of the agents and the env.
        progress: Show a progress bar.
        run_dir: If given, log return statistics (per teacher, and quantiles over teachers)
            with :class:`robolearn.training.MetricLog` and keep a resumable checkpoint under
            ``run_dir/checkpoints/latest``; a run started again with the same ``run_dir``
            resumes from it, starting fresh episodes.
        callback: Called as ``callback(step, teachers)`` every ``cfg.log_every`` steps with
            the current deterministic teachers (e.g. to record a learning curve).
        evaluation_process: Run the ``cfg.keep_best_every`` evaluations in a side process
            (``robolearn.utils.side_process``), beside training rather than in its pauses;
            the teachers kept are the same.

    Returns:
        The trained teachers: with ``cfg.keep_best_every``, each teacher's best evaluated
        weights, with those evaluation returns in ``train_returns``; otherwise the final
        weights, with each teacher's mean return over its last ``cfg.return_window`` training
        episodes.
    """
    sac = cfg.sac
    dev = torch.device(device)
    torch.manual_seed(seed)
    sampler = torch.Generator(device=dev).manual_seed(seed)
    agents: BatchedSAC | None = None
    start = 0
    log = checkpointer = None
    state: dict[str, Any] | None = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(run_dir)
        state = checkpointer.load_state()
        log = MetricLog(run_dir)
    # A resumed run draws new episodes rather than replaying the first ones.
    vehicles = env_factory(params, seed + (state["step"] if state else 0), device)
    n = vehicles.num_envs
    if cfg.shared:
        env = shared = SharedTeacherEnv(vehicles)
        agents = BatchedSAC(1, env.obs_dim, env.act_dim, sac).to(dev)
        capacity = min(sac.buffer_size, cfg.steps * n)
        if capacity < n:
            raise ValueError(
                f"sac.buffer_size {sac.buffer_size} is less than one step of the {n} vehicles"
            )
    else:
        env, shared = vehicles, None
        initial_action = env.hover_action() if cfg.hover_init else None
        obs_scale = env.observation_scale() if cfg.normalize_obs else None
        agents = BatchedSAC(n, env.obs_dim, env.act_dim, sac, initial_action, obs_scale).to(dev)
        capacity = min(sac.buffer_size, cfg.steps)
    if cfg.curriculum_steps > 0:
        final_weights = (vehicles.action_change_weight, vehicles.orientation_weight)
    replay = BatchedReplay(agents.n, capacity, env.obs_dim, env.act_dim, dev)

    def teachers_now(returns: Sequence[float] | None = None) -> Teachers:
        if shared is not None:
            return shared.expand(agents, returns)
        return Teachers.from_agents(agents, returns)

    recent = torch.full((n, cfg.return_window), math.nan, device=dev)
    if state is not None:
        start = _restore(state, agents, replay, sampler)
        recent = state["recent"].to(dev)

    best = None
    if cfg.keep_best_every > 0:
        executor = side_process() if evaluation_process else None
        best = BestTeachers(params, env_factory, seed + KEEP_BEST_SEED, device, cfg, executor)
        if state is not None and state.get("best") is not None:
            best.load_state(state["best"], teachers_now())
    if state is not None:
        # Evaluations pending at the checkpoint are logged again when they finish.
        pending = [] if best is None else [step for step, _, _ in best.pending]
        log.truncate_after(start, [(s, f"eval/{m}") for s in pending for m in EVAL_METRICS])

    def result() -> Teachers:
        if best is not None and best.teachers is not None:
            return best.result()
        return teachers_now(recent.nanmean(dim=1).tolist())

    try:
        episode_return = torch.zeros(n, device=dev)
        episode_steps = torch.zeros(n, dtype=torch.long, device=dev)
        metrics: dict[str, torch.Tensor] = {}
        obs = env.reset()
        bar = progress_bar(cfg.steps, f"RAPTOR teachers x{n}", progress, initial=start)
        clock, clock_step = time.perf_counter(), start
        for step in range(start, cfg.steps):
            if cfg.curriculum_steps > 0:
                scale = cfg.reward_scale(step)
                vehicles.action_change_weight = scale * final_weights[0]
                vehicles.orientation_weight = scale * final_weights[1]
            if step < sac.warmup_steps:
                action = torch.rand(n, env.act_dim, device=dev) * 2 - 1
            elif shared is not None:
                with torch.no_grad():
                    action = agents.sample_action(obs[None])[0][0]
            else:
                action = agents.act(obs)
            next_obs, reward, terminated, truncated = env.step(action)
            episode_steps += 1
            done = terminated | truncated | (episode_steps >= cfg.episode_steps)
            if shared is not None:  # n transitions of the one agent
                replay.add(obs[None], action[None], reward[None], next_obs[None], terminated[None])
            else:
                replay.add(obs, action, reward, next_obs, terminated)
            episode_return += reward
            if bool(done.any()):
                recent[done] = torch.cat([recent[done, 1:], episode_return[done, None]], dim=1)
                episode_return = torch.where(done, 0.0, episode_return)
                episode_steps = episode_steps.masked_fill(done, 0)
                next_obs = env.reset(done)
            obs = next_obs
            if shared is not None and step >= sac.warmup_steps and replay.size >= sac.batch_size:
                for k in range(cfg.shared_updates):
                    batch = replay.sample(sac.batch_size, generator=sampler)
                    metrics |= agents.update(batch, k % sac.actor_every == 0)
            elif shared is None and update_due(sac, step, replay.size):
                batch = replay.sample(sac.batch_size, generator=sampler)
                metrics |= agents.update(batch, actor_due(sac, step))
            bar.update(1)
            done_steps = step + 1
            if best is not None:
                if done_steps % cfg.keep_best_every == 0 or done_steps == cfg.steps:
                    best.submit(done_steps, teachers_now())
                for evaluated, returns in best.finished(wait=done_steps == cfg.steps):
                    if log is not None:
                        medians = (float(returns.median()), float(best.returns.median()))
                        log.log(
                            evaluated, **{f"eval/{m}": v for m, v in zip(EVAL_METRICS, medians)}
                        )
            if log is not None and (done_steps % cfg.log_every == 0 or done_steps == cfg.steps):
                now = time.perf_counter()
                returns = recent.nanmean(dim=1)
                scalars = _quantile_scalars(returns) | {
                    f"train/{k}": float(v) for k, v in metrics.items()
                }
                scalars["train/teacher_steps_per_s"] = n * (done_steps - clock_step) / (now - clock)
                scalars |= {f"teacher_return/{i:04d}": r for i, r in enumerate(returns.tolist())}
                log.log(done_steps, **scalars)
                clock, clock_step = now, done_steps
            if callback is not None and done_steps % cfg.log_every == 0:
                callback(done_steps, teachers_now(recent.nanmean(dim=1).tolist()))
            if checkpointer is not None and (
                done_steps % cfg.checkpoint_every == 0 or done_steps == cfg.steps
            ):
                train_state = _train_state(done_steps, cfg, agents, replay, sampler, recent)
                train_state["best"] = None if best is None else best.state()
                checkpointer.save(result(), train_state)
    finally:
        if best is not None and best.executor is not None:
            best.executor.shutdown(cancel_futures=True)
    bar.close()
    if log is not None:
        log.close()
    return result()


class BestTeachers:
    """Each teacher's best deterministic weights so far (``TeacherConfig.keep_best_every``).

    Every :meth:`submit` evaluates candidate teachers for ``cfg.keep_best_episodes`` episodes on
    a fresh env seeded with ``seed`` (RAPTOR's reward: no curriculum) and, teacher by teacher,
    keeps the candidate's weights where its return beats the best so far.

    With an ``executor`` (``robolearn.utils.side_process``) the evaluations run there, beside
    training. An evaluation is a function of the candidates' weights alone (a fresh env of a
    fixed seed, deterministic actors), so what is kept does not depend on when it finishes;
    :meth:`finished` applies the evaluations in the order they were submitted.
    """

    def __init__(
        self,
        params: Any,
        env_factory: EnvFactory,
        seed: int,
        device: str,
        cfg: TeacherConfig,
        executor: Executor | None = None,
    ) -> None:
        self.episodes = cfg.keep_best_episodes
        side_by_side = repeat_vehicles(params, min(self.episodes, SIDE_BY_SIDE))
        self._env_args = (env_factory, side_by_side, seed, device)
        self.executor = executor
        self.pending: deque[tuple[int, Teachers, Future]] = deque()
        self.teachers: Teachers | None = None
        self.returns: torch.Tensor | None = None

    def submit(self, step: int, candidates: Teachers) -> None:
        """Start evaluating ``candidates`` (the teachers after ``step`` steps)."""
        args = (candidates, *self._env_args, self.episodes)
        if self.executor is None:
            future: Future = Future()
            future.set_result(_evaluate_on_fresh_env(*args))
        else:
            future = self.executor.submit(_evaluate_on_fresh_env, *args)
        self.pending.append((step, candidates, future))

    def finished(self, wait: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """Keep the better weights of each finished evaluation (of every one with ``wait``), in
        the order submitted, yielding its step and the candidates' returns ``(N,)``."""
        while self.pending and (wait or self.pending[0][2].done()):
            step, candidates, future = self.pending[0]
            returns = future.result().to(candidates.device)
            self.pending.popleft()
            self._keep_better(candidates, returns)
            yield step, returns

    def _keep_better(self, candidates: Teachers, returns: torch.Tensor) -> None:
        if self.teachers is None:
            self.teachers, self.returns = candidates, returns
            return
        better = (returns > self.returns) | self.returns.isnan()
        kept = self.teachers.actor.state_dict()
        for name, value in candidates.actor.state_dict().items():
            kept[name][better] = value[better]  # state_dict tensors share the weights' storage
        self.returns = torch.where(better, returns, self.returns)

    def result(self) -> Teachers:
        """The kept teachers, with their evaluation returns as ``train_returns`` (the best of
        several noisy evaluations, so biased upwards: RAPTOR's selection evaluates again)."""
        assert self.teachers is not None and self.returns is not None
        self.teachers.train_returns = self.returns.tolist()
        return self.teachers

    def state(self) -> dict[str, Any] | None:
        """The kept weights and returns, and the candidates of evaluations not applied yet."""
        if self.teachers is None and not self.pending:
            return None
        return {
            "actor": None if self.teachers is None else _cpu(self.teachers.actor.state_dict()),
            "returns": None if self.returns is None else self.returns.cpu(),
            "pending": [(step, _cpu(c.actor.state_dict())) for step, c, _ in self.pending],
        }

    def load_state(self, state: dict[str, Any], like: Teachers) -> None:
        """Restore :meth:`state` into teachers shaped ``like`` (their weights are replaced) and
        submit again the evaluations it had not applied."""
        # Checkpoints from before evaluations could be pending have no "pending".
        for step, weights in state.get("pending", []):
            candidates = copy.deepcopy(like)
            candidates.actor.load_state_dict(weights)
            self.submit(step, candidates)
        if state["actor"] is not None:
            like.actor.load_state_dict(state["actor"])
            self.teachers, self.returns = like, state["returns"].to(like.device)


def _cpu(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in weights.items()}


def _evaluate_on_fresh_env(
    teachers: Teachers,
    env_factory: EnvFactory,
    params: Any,
    seed: int,
    device: str,
    episodes: int,
) -> torch.Tensor:
    """``teachers.evaluate`` on ``env_factory(params, seed, device)`` (picklable, for a side
    process)."""
    return teachers.evaluate(env_factory(params, seed, device), episodes)


def _train_state(
    step: int,
    cfg: TeacherConfig,
    agents: BatchedSAC,
    replay: BatchedReplay,
    sampler: torch.Generator,
    recent: torch.Tensor,
) -> dict[str, Any]:
    """Everything a resumed run needs: weights, optimisers, replay, RNG states, statistics.

    A shared teacher's replay is left out: it holds millions of transitions (hundreds of MB)
    and refills at one transition per vehicle per step, so a resumed run starts it afresh.
    """
    saved_replay = None
    if not cfg.shared:
        saved_replay = {
            "pos": replay.pos,
            "size": replay.size,
            "capacity": replay.capacity,
            # Only the filled part: a checkpoint early in a run stays small.
            "tensors": {
                name: getattr(replay, name)[:, : replay.size].cpu()
                for name in ("obs", "next_obs", "action", "reward", "terminated")
            },
        }
    return {
        "step": step,
        "config": cfg.to_dict(),
        "agents": agents.state_dict(),
        "optimizers": {
            name: getattr(agents, name).state_dict()
            for name in ("actor_opt", "critic_opt", "alpha_opt")
        },
        "replay": saved_replay,
        "torch_rng": torch.get_rng_state(),
        # Warm-up actions and exploration noise come from the device's generator on a GPU.
        "cuda_rng": (torch.cuda.get_rng_state(replay.obs.device) if replay.obs.is_cuda else None),
        "sampler_rng": sampler.get_state(),
        "recent": recent.cpu(),
    }


def _restore(
    state: dict[str, Any], agents: BatchedSAC, replay: BatchedReplay, sampler: torch.Generator
) -> int:
    """Load ``state`` (from :func:`_train_state`) into the fresh objects; return its step."""
    optimizers = dict(state["optimizers"])
    weights, optimizers["critic_opt"] = merge_twin_critics(
        state["agents"], optimizers["critic_opt"]
    )
    agents.load_state_dict(weights)
    for name, opt_state in optimizers.items():
        getattr(agents, name).load_state_dict(opt_state)
    saved = state["replay"]
    if saved is None:  # a shared teacher's: refilled by the resumed run
        saved = {"size": 0, "pos": 0, "capacity": replay.capacity, "tensors": {}}
    if saved["size"] > replay.capacity:
        raise ValueError(
            f"checkpoint replay holds {saved['size']} transitions per teacher, more than this "
            f"run's capacity {replay.capacity} (cfg.steps or cfg.sac.buffer_size shrank)"
        )
    for name, tensor in saved["tensors"].items():
        getattr(replay, name)[:, : saved["size"]] = tensor.to(getattr(replay, name).device)
    replay.size = saved["size"]
    # A run resumed with a longer cfg.steps has a larger ring: continue after the saved data.
    same = saved["capacity"] == replay.capacity
    replay.pos = saved["pos"] if same else saved["size"] % replay.capacity
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and replay.obs.is_cuda:
        torch.cuda.set_rng_state(state["cuda_rng"], replay.obs.device)
    sampler.set_state(state["sampler_rng"])
    return int(state["step"])
