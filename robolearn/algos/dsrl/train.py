"""Train a noise actor that steers a frozen diffusion policy: the whole DSRL run.

``train_dsrl`` builds the chunk-level env, the learner (DSRL-NA or DSRL-SAC), optionally puts
demonstrations into the replay buffer, and trains for a budget counted in env steps (chunks x
the steps each really ran). Every ``eval_every`` env steps it evaluates the steered policy on
held-out seeds, logs success against env steps (TensorBoard + metrics.csv), redraws the curve
and checkpoints the learner, its replay buffer and the steered policy, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from robolearn.algos.diffusion import DiffusionPolicy
from robolearn.algos.dsrl.algorithms import DSRLNA, DSRLSAC, DSRLPolicy
from robolearn.algos.dsrl.envs import REWARDS, NoiseActionVecEnv, decode, make_chunked_vec_env
from robolearn.algos.dsrl.steered import NoiseActor, SteeredPolicy
from robolearn.config_checks import FieldChecks
from robolearn.data.store import EpisodeStore
from robolearn.report import plot_curves
from robolearn.rollout import rollout
from robolearn.training import MetricLog, read_metric
from robolearn.utils import progress_bar

VARIANTS = ("na", "sac")
MODEL_FILE = "dsrl_model.zip"
BUFFER_FILE = "replay_buffer.pkl"
PROGRESS_FILE = "progress.json"


@dataclasses.dataclass
class DSRLConfig:
    """Hyperparameters of a DSRL run (``algo=dsrl`` mirrors these).

    Upstream (reference/dsrl.md 4) uses width-2048 critics and 20-30 gradient steps per vector
    step; the defaults here are sized for a CPU: one update per chunk collected.
    """

    variant: str = "na"
    env_steps: int = 100_000
    n_envs: int = 4
    noise_bound: float = 1.5
    gradient_steps: int = 4
    distill_steps: int = 2
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    net_arch: Sequence[int] = (256, 256, 256)
    activation: str = "Tanh"
    layer_norm: bool = True
    # Upstream SAC-style: an entropy bonus with a learned coefficient (here starting at 0.05),
    # on the env's own reward: the settings of every benchmark run (BENCHMARKS.md, "dsrl").
    # For an env that only reports success, reward "sparse" gives -1 per step until success;
    # under it an entropy bonus pays the actor to make episodes longer, and on arm push
    # DSRL-NA's success collapsed with it (the "dsrl" ablations). Pair it with noise_prior,
    # which regularises towards the base policy's own noise instead (a KL to N(0, I), see
    # DSRLActor) with a fixed weight ent_coef; "auto"/"auto_<init>" needs noise_prior=false.
    ent_coef: str | float = "auto_0.05"
    target_entropy: float = 0.0
    noise_prior: bool = False
    warmup_env_steps: int = 5000
    reward: str = "env"
    # The returned / saved steered policy samples its noise from the actor (else: the mean).
    stochastic: bool = False
    eval_every: int = 10_000
    eval_episodes: int = 50
    buffer_size: int = 1_000_000

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.choice("variant", VARIANTS)
        check.choice("reward", REWARDS)
        check.integers("env_steps", "n_envs", "gradient_steps", "batch_size", "eval_every")
        check.integers("eval_episodes")
        check.integers("distill_steps", "warmup_env_steps", minimum=0)
        check.integers("buffer_size", minimum=self.n_envs)
        check.positive("noise_bound", "lr", "tau")
        if not 0 < self.gamma <= 1:
            check.fail("gamma", "must be in (0, 1]")
        if not hasattr(torch.nn, str(self.activation)):
            check.fail("activation", "must name a torch.nn activation, e.g. Tanh or ReLU")
        check.widths("net_arch")
        check.flags("layer_norm", "noise_prior", "stochastic")
        if isinstance(self.ent_coef, str):
            if not (self.ent_coef == "auto" or self.ent_coef.startswith("auto_")):
                check.fail("ent_coef", "must be a number, auto or auto_<initial value>")
            if self.noise_prior:
                check.fail(
                    "ent_coef",
                    "must be a number with algo.noise_prior=true (auto-tuning targets an "
                    "entropy, the prior turns the term into a KL)",
                )
        elif isinstance(self.ent_coef, bool) or self.ent_coef <= 0:
            check.fail("ent_coef", "must be a number > 0, auto or auto_<initial value>")


def build_learner(
    cfg: DSRLConfig,
    base: DiffusionPolicy,
    make_env: Callable[[], gym.Env],
    seed: int,
    device: str = "cpu",
) -> DSRLNA | DSRLSAC:
    """The configured DSRL learner on ``cfg.n_envs`` chunk-level envs."""
    venv = make_chunked_vec_env(make_env, base, cfg.n_envs, cfg.reward, seed)
    kwargs: dict[str, Any] = {
        "learning_rate": cfg.lr,
        "buffer_size": cfg.buffer_size,
        # SB3 counts chunks; the warm-up is configured in env steps.
        "learning_starts": math.ceil(cfg.warmup_env_steps / base.action_steps),
        "batch_size": cfg.batch_size,
        "tau": cfg.tau,
        "gamma": cfg.gamma,
        "gradient_steps": cfg.gradient_steps,
        "ent_coef": cfg.ent_coef,
        "target_entropy": cfg.target_entropy,
        "policy_kwargs": {
            "net_arch": list(cfg.net_arch),
            "activation_fn": getattr(torch.nn, cfg.activation),
            "log_std_init": 0.0,
            "layer_norm": cfg.layer_norm,
            "noise_prior": cfg.noise_prior,
        },
        "seed": seed,
        "device": device,
    }
    if cfg.variant == "na":
        return DSRLNA(
            DSRLPolicy,
            venv,
            base=base,
            noise_bound=cfg.noise_bound,
            distill_steps=cfg.distill_steps,
            **kwargs,
        )
    return DSRLSAC(DSRLPolicy, NoiseActionVecEnv(venv, base, cfg.noise_bound), **kwargs)


def steered_policy(
    model: DSRLNA | DSRLSAC, base: DiffusionPolicy, noise_bound: float, stochastic: bool = False
) -> SteeredPolicy:
    """The current actor of ``model`` as a SteeredPolicy around ``base`` (a copy)."""
    actor, config = NoiseActor.from_sb3(model.actor)
    return SteeredPolicy(base, actor, config, noise_bound, stochastic)


class DemoSummary(NamedTuple):
    """What :func:`add_demonstrations` put into a replay buffer."""

    chunks: int
    #: DSRL-SAC only: mean |decoded chunk - demonstrated chunk| over the inverted noise.
    inversion_error: float | None = None
    #: DSRL-SAC only: fraction of inverted noise entries clipped to the noise bound.
    clipped_fraction: float | None = None


def add_demonstrations(
    model: DSRLNA | DSRLSAC, store: EpisodeStore, base: DiffusionPolicy, reward: str = "env"
) -> DemoSummary:
    """Put demonstration chunks into either learner's replay buffer.

    Each episode is cut into chunks of Ta steps; a chunk's state is the base policy's
    conditioning at its first step and its next state the conditioning Ta steps later. The
    store does not hold the observation after an episode's last action, so a last chunk is kept
    only when the episode terminated (its next state is then never bootstrapped from).
    Success, for the sparse reward, is the store's per-step ``terminated`` flag: record the
    demonstrations with ``terminate_on_success`` on.

    DSRL-NA's buffer holds the chunk itself. DSRL-SAC's holds the noise that produced it, which
    a demonstration does not have: it is recovered by DDIM inversion of the chunk's whole
    prediction horizon (the demonstrated actions around it, the episode's first and last
    actions repeated past its ends, as Diffusion Policy's sampler pads), then clipped to the
    noise bound; the summary says how well the stored noise decodes back into the chunk.
    """
    rows = _demonstration_chunks(store, base, reward)
    count = len(rows["obs"]) // model.n_envs * model.n_envs  # one row per env per buffer add
    rows = {k: np.stack(v[:count]) for k, v in rows.items()}
    summary = DemoSummary(count)
    if isinstance(model, DSRLNA):
        actions = rows["chunk"].reshape(count, -1)
    else:
        cond = torch.as_tensor(rows["obs"], dtype=torch.float32)
        noise = torch.cat(
            [
                base.invert(cond[i : i + 1024], torch.as_tensor(rows["planned"][i : i + 1024]))
                for i in range(0, count, 1024)
            ]
        ).reshape(count, -1)
        # SB3 stores actions scaled to [-1, 1]; the actor cannot output beyond the bound.
        scaled = model.policy.scale_action(noise.cpu().numpy())
        actions = np.clip(scaled, -1.0, 1.0)
        decoded = decode(base, rows["obs"], model.policy.unscale_action(actions))
        summary = DemoSummary(
            count,
            float(np.abs(decoded - rows["chunk"].reshape(count, -1)).mean()),
            float((np.abs(scaled) > 1.0).mean()),
        )
    for i in range(0, count, model.n_envs):
        block = slice(i, i + model.n_envs)
        model.replay_buffer.add(
            rows["obs"][block],
            rows["next"][block],
            actions[block].astype(np.float32),
            rows["rew"][block],
            rows["done"][block],
            [{} for _ in range(model.n_envs)],
        )
    return summary


def _demonstration_chunks(
    store: EpisodeStore, base: DiffusionPolicy, reward: str
) -> dict[str, list[np.ndarray]]:
    """Per chunk: conditioning, next conditioning, executed chunk (Ta, Da), planned horizon
    (Tp, Da), chunk reward and done flag (see :func:`add_demonstrations`)."""
    from robolearn.algos.diffusion import ObservationHistory

    data = store.load()
    ta, horizon = base.action_steps, base.noise_shape[0]
    rows: dict[str, list] = {k: [] for k in ("obs", "next", "chunk", "planned", "rew", "done")}
    start = 0
    for end in store.episode_ends:
        history = ObservationHistory(base.obs_keys, base.obs_steps)
        conds = []
        for t in range(start, end):
            frame = {k: data[k][t : t + 1] for k in base.obs_keys}
            stacked = {k: torch.as_tensor(v) for k, v in history.push(frame).items()}
            conds.append(base.condition(stacked)[0].cpu().numpy())
        terminated = bool(data["terminated"][end - 1])
        for t in range(start, end, ta):
            last = min(t + ta, end)
            if last == end and not terminated:
                break
            actions = data["action"][t:last]
            actions = np.concatenate([actions, np.repeat(actions[-1:], ta - len(actions), 0)])
            first_planned = t - (base.obs_steps - 1)
            planned = np.clip(np.arange(first_planned, first_planned + horizon), start, end - 1)
            if reward == "sparse":
                success = data["terminated"][t:last].astype(np.float64)
                chunk_reward = float(np.sum(np.maximum.accumulate(success) - 1.0))
            else:
                chunk_reward = float(data["reward"][t:last].sum())
            rows["obs"].append(conds[t - start])
            rows["next"].append(conds[last - start] if last < end else conds[-1])
            rows["chunk"].append(actions.astype(np.float32))
            rows["planned"].append(data["action"][planned].astype(np.float32))
            rows["rew"].append(chunk_reward)
            rows["done"].append(float(last == end))
        start = end
    return rows


class _Progress(BaseCallback):
    """Counts env steps, evaluates, logs, checkpoints and stops at the budget."""

    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run

    def _on_step(self) -> bool:
        run = self.run
        infos = self.locals["infos"]
        steps = sum(int(info.get("env_steps", 0)) for info in infos)
        run.env_steps += steps
        run.bar.update(steps)
        for info, done in zip(infos, self.locals["dones"]):
            if done:
                run.train_success.append(float(info.get("success", False)))
        if run.env_steps >= run.next_eval or run.env_steps >= run.cfg.env_steps:
            run.evaluate_and_checkpoint(self.model)
        return run.env_steps < run.cfg.env_steps


@dataclasses.dataclass
class _Run:
    cfg: DSRLConfig
    base: DiffusionPolicy
    run_dir: Path
    evaluate: Callable[[Any], float]
    log: MetricLog
    bar: Any
    env_steps: int = 0
    next_eval: int = 0
    train_success: list[float] = dataclasses.field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def evaluate_and_checkpoint(self, model: DSRLNA | DSRLSAC) -> None:
        # Both ways of acting: the actor's mean noise (SAC's convention) and noise sampled
        # from it; the saved policy acts the way algo.stochastic says.
        policies = {
            mode: steered_policy(model, self.base, self.cfg.noise_bound, mode)
            for mode in (False, True)
        }
        scalars = {
            "eval/success": self.evaluate(policies[False]),
            "eval/success_stochastic": self.evaluate(policies[True]),
        }
        policy = policies[self.cfg.stochastic]
        if self.train_success:
            scalars["train/success"] = float(np.mean(self.train_success[-50:]))
        names = ("ent_coef", "actor_loss", "critic_loss", "action_critic_loss", "noise_critic_loss")
        for name in names:
            value = model.logger.name_to_value.get(f"train/{name}")
            if value is not None:
                scalars[f"train/{name}"] = float(value)
        self.log.log(self.env_steps, **scalars)
        self.bar.set_postfix(
            success=f"{scalars['eval/success']:.0%}",
            sampled=f"{scalars['eval/success_stochastic']:.0%}",
            refresh=False,
        )
        while self.next_eval <= self.env_steps:
            self.next_eval += self.cfg.eval_every
        self.save(model, policy)
        self.plot()

    def save(self, model: DSRLNA | DSRLSAC, policy: SteeredPolicy) -> None:
        tmp = self.checkpoint_dir / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        model.save(tmp / MODEL_FILE)
        model.save_replay_buffer(tmp / BUFFER_FILE)
        policy.save(tmp / "policy")
        state = {"env_steps": self.env_steps, "next_eval": self.next_eval}
        (tmp / PROGRESS_FILE).write_text(json.dumps(state))
        # Swap in whole: a crash leaves the previous checkpoint or the new one, never a mix.
        latest, old = self.checkpoint_dir / "latest", self.checkpoint_dir / ".old"
        if latest.exists():
            latest.rename(old)
        tmp.rename(latest)
        if old.exists():
            import shutil

            shutil.rmtree(old)

    def plot(self) -> None:
        name = f"DSRL-{self.cfg.variant.upper()}"
        plot_curves(
            self.run_dir / "success.png",
            {
                f"{name}, mean noise": read_metric(self.run_dir, "eval/success"),
                f"{name}, sampled noise": read_metric(self.run_dir, "eval/success_stochastic"),
            },
            "steered policy success",
            "success rate",
            xlabel="env steps",
        )


def train_dsrl(
    base: DiffusionPolicy,
    make_env: Callable[[], gym.Env],
    cfg: DSRLConfig,
    run_dir: Path,
    evaluate: Callable[[Any], float],
    demos: EpisodeStore | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> SteeredPolicy:
    """Steer ``base`` by DSRL on envs from ``make_env``; return the steered policy.

    ``evaluate(policy) -> success rate`` is called at env step 0 and every ``eval_every`` env
    steps. ``demos`` are added to the replay buffer before training
    (:func:`add_demonstrations`). Resumes from ``run_dir/checkpoints/latest`` when it exists.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricLog(run_dir)
    bar = progress_bar(cfg.env_steps, f"dsrl-{cfg.variant}", progress, unit="step")
    run = _Run(cfg, base, run_dir, evaluate, log, bar)
    latest = run.checkpoint_dir / "latest"
    model = build_learner(cfg, base, make_env, seed, device)
    if (latest / MODEL_FILE).exists():
        env = model.get_env()
        cls = type(model)
        extra = {"base": base} if cfg.variant == "na" else {}
        # Loaded without the env and attached after: DSRL-NA's env acts in chunks, the saved
        # action space is its actor's noise space.
        model = cls.load(latest / MODEL_FILE, device=device, **extra)
        model.set_env(env)
        model.load_replay_buffer(latest / BUFFER_FILE)
        state = json.loads((latest / PROGRESS_FILE).read_text())
        run.env_steps, run.next_eval = state["env_steps"], state["next_eval"]
        bar.update(run.env_steps)
        log.truncate_after(run.env_steps)
    else:
        if demos is not None:
            added = add_demonstrations(model, demos, base, cfg.reward)
            message = f"dsrl: {added.chunks} demonstration chunks in the replay buffer"
            if added.inversion_error is not None:
                message += (
                    f" (noise by DDIM inversion: decoded chunks off by {added.inversion_error:.3f}"
                    f" on average, {added.clipped_fraction:.1%} of entries clipped to the bound)"
                )
            bar.write(message)
        model.set_logger(configure(str(run_dir / "sb3"), ["csv"]))
        run.evaluate_and_checkpoint(model)  # env step 0: the untrained actor
    if model.get_env() is not None and run.env_steps < cfg.env_steps:
        model.set_logger(configure(str(run_dir / "sb3"), ["csv"]))
        model.learn(
            total_timesteps=cfg.env_steps,  # an upper bound in chunks; the callback stops it
            callback=_Progress(run),
            reset_num_timesteps=False,
        )
    bar.close()
    log.close()
    model.get_env().close()
    return steered_policy(model, base, cfg.noise_bound, cfg.stochastic)


def make_evaluator(
    env_factory: Callable[[], gym.Env | gym.vector.VectorEnv], episodes: int, seed: int
) -> Callable[[Any], float]:
    """``evaluate(policy)``: success rate over ``episodes`` held-out seeds from ``seed``."""

    def evaluate(policy: Any) -> float:
        env = env_factory()
        try:
            return rollout(policy, env, episodes, seed=seed, progress=False).success_rate
        finally:
            env.close()

    return evaluate
