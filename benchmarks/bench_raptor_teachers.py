"""RAPTOR teachers: batched SAC vs stable-baselines3 on one quadrotor, and batched throughput.

(a) Validation: one x500 in the teacher MDP, the same step budget and hyperparameters for our
batched SAC at N = 1, SB3 SAC and SB3 TD3; final deterministic return on the same evaluation
episodes, over a few seeds, plus wall time. SB3 trains on ``robolearn/Quadrotor-v0`` with the
observation errors unclipped and the motor states appended, i.e. the same 26-D teacher
observation and MDP as ``QuadrotorTorchEnv``; every policy is evaluated on ``QuadrotorTorchEnv``.

(b) Throughput: teacher-steps per second (env step + SAC update, every teacher) of batched
training at N = 1, 10, 100, 1000 with RAPTOR's networks and with the CPU preset, and how many
steps per teacher fit in 45 minutes at N = 1000.

(c) ``--budget STEPS``: the learning curve (evaluation return quantiles vs steps per teacher) and
final returns of the CPU preset on 8 sampled vehicles plus the crazyflie and x500 presets (its own
section).

Run: ``python -m benchmarks.bench_raptor_teachers [--steps 15000] [--seeds 2]`` for (a) and (b),
``python -m benchmarks.bench_raptor_teachers --budget 8000`` for (c), and
``python -m benchmarks.bench_raptor_teachers --device cuda`` for (b) on a GPU (N up to 3000).
"""

from __future__ import annotations

import argparse
import gc
import time

import gymnasium as gym
import numpy as np
import torch

from benchmarks.report import median_time, table, write_section
from robolearn.algos.batched_sac import BatchedReplay, BatchedSAC
from robolearn.algos.raptor.teachers import TeacherConfig, Teachers, train_teachers
from sims.quadrotor.params import QuadrotorParams, preset, sample_params
from sims.quadrotor.torch_env import QuadrotorTorchEnv

VEHICLE = "x500"
EVAL_EPISODES = 20
EVAL_SEED = 10_000
BUDGET_S = 45 * 60
#: RAPTOR's distillation requires this mean return of every teacher (raptor.md section 8).
ACCEPT_RETURN = 300


class TeacherObservation(gym.ObservationWrapper):
    """``robolearn/Quadrotor-v0`` (unclipped errors) with the motor states appended: the 26-D
    teacher observation of ``QuadrotorTorchEnv``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (26,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        motors = self.env.unwrapped.batch.state[0, 13:17].cpu().numpy()
        return np.concatenate([observation, motors]).astype(np.float32)


def evaluate(act, seed: int = EVAL_SEED) -> float:
    """Mean return of a deterministic (1, 26) -> (1, 4) policy on fixed evaluation episodes."""
    env = QuadrotorTorchEnv(preset(VEHICLE, 1), seed=seed)
    total, episodes = 0.0, 0
    obs = env.reset()
    episode_return = 0.0
    while episodes < EVAL_EPISODES:
        obs, reward, terminated, truncated = env.step(act(obs))
        episode_return += float(reward[0])
        if bool(terminated[0] | truncated[0]):
            total, episodes, episode_return = total + episode_return, episodes + 1, 0.0
            obs = env.reset()
    return total / EVAL_EPISODES


def run_ours(cfg: TeacherConfig, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    teachers = train_teachers(preset(VEHICLE, 1), cfg, QuadrotorTorchEnv, seed, progress=False)
    wall = time.perf_counter() - start
    return evaluate(teachers.act), wall


def run_sb3(algo: str, cfg: TeacherConfig, seed: int) -> tuple[float, float]:
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    import sims  # noqa: F401 - registers robolearn/Quadrotor-v0

    sac = cfg.sac
    env = TeacherObservation(
        gym.make("robolearn/Quadrotor-v0", params=VEHICLE, clip_observation=False)
    )
    common = dict(
        learning_rate=sac.actor_lr,
        buffer_size=cfg.steps,
        learning_starts=sac.warmup_steps,
        batch_size=sac.batch_size,
        tau=sac.tau,
        gamma=sac.gamma,
        policy_kwargs=dict(net_arch=dict(pi=list(sac.actor_hidden), qf=list(sac.critic_hidden))),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if algo == "SAC":
        model = SAC("MlpPolicy", env, ent_coef=f"auto_{sac.initial_alpha}", **common)
    else:
        noise = NormalActionNoise(np.zeros(4), 0.1 * np.ones(4))
        model = TD3("MlpPolicy", env, action_noise=noise, policy_delay=sac.actor_every, **common)
    start = time.perf_counter()
    model.learn(cfg.steps)
    wall = time.perf_counter() - start
    return evaluate(lambda obs: torch.as_tensor(model.predict(obs.numpy(), True)[0])), wall


def validation(steps: int, seeds: int) -> str:
    cfg = TeacherConfig.cpu_budget(steps)
    runs = {"robolearn batched SAC (N=1)": run_ours}
    runs |= {f"SB3 {a}": (lambda c, s, a=a: run_sb3(a, c, s)) for a in ("SAC", "TD3")}
    rows = []
    for name, fn in runs.items():
        results = [fn(cfg, seed) for seed in range(seeds)]
        returns = [r for r, _ in results]
        walls = [w for _, w in results]
        print(name, returns, walls, flush=True)
        rows.append(
            [
                name,
                ", ".join(f"{r:.0f}" for r in returns),
                f"{np.mean(returns):.0f}",
                f"{np.mean(walls):.0f}",
                f"{steps / np.mean(walls):.0f}",
            ]
        )
    untrained = Teachers(1, actor_hidden=cfg.sac.actor_hidden)
    rows.append(["untrained actor (reference)", "", f"{evaluate(untrained.act):.0f}", "", ""])
    header = ["agent", "return per seed", "mean return", "wall s", "steps/s"]
    return (
        f"(a) One {VEHICLE}, {steps} env steps per run, {seeds} seeds, identical hyperparameters "
        f"(`TeacherConfig.cpu_budget`: actor {tuple(cfg.sac.actor_hidden)}, critics "
        f"{tuple(cfg.sac.critic_hidden)}, batch {cfg.sac.batch_size}, warm-up "
        f"{cfg.sac.warmup_steps}, lr {cfg.sac.actor_lr}); return = mean undiscounted return of "
        f"the deterministic policy over {EVAL_EPISODES} fixed evaluation episodes (500 steps "
        "max, -100 on termination; a perfect hover scores ~750).\n\n" + table(header, rows)
    )


def training_step_time(cfg: TeacherConfig, n: int, repeats: int, device: str = "cpu") -> float:
    """Median seconds of one training step of N teachers (act, env step, replay add, update)."""
    sac = cfg.sac
    dev = torch.device(device)
    env = QuadrotorTorchEnv(sample_params(n, seed=0), seed=0, device=dev)
    agents = BatchedSAC(n, env.obs_dim, env.act_dim, sac).to(dev)
    replay = BatchedReplay(n, 2 * sac.batch_size, env.obs_dim, env.act_dim, dev)
    obs = [env.reset()]
    for _ in range(sac.batch_size):  # enough transitions to sample a batch
        action = torch.rand(n, 4, device=dev) * 2 - 1
        next_obs, reward, terminated, _ = env.step(action)
        replay.add(obs[0], action, reward, next_obs, terminated)
        obs[0] = env.reset(terminated)
    count = [0]

    def step() -> None:
        action = agents.act(obs[0])
        next_obs, reward, terminated, truncated = env.step(action)
        replay.add(obs[0], action, reward, next_obs, terminated)
        done = terminated | truncated
        obs[0] = env.reset(done) if bool(done.any()) else next_obs
        agents.update(replay.sample(sac.batch_size), count[0] % sac.actor_every == 0)
        count[0] += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # time the work, not its queueing

    return median_time(step, repeats=repeats, warmup=3)


def throughput(device: str = "cpu") -> str:
    configs = {"RAPTOR (3x64 actor, 3x256 critics, batch 128)": TeacherConfig()}
    configs["CPU preset (2x64 actor, 2x64 critics, batch 64)"] = TeacherConfig.cpu_budget()
    # RAPTOR's critics at N = 10,000 need more than an 80 GB GPU holds (5 GB per hidden layer).
    sizes = (1, 10, 100, 1000) if device == "cpu" else (1, 100, 1000, 3000)
    rows, per_teacher_budget = [], {}
    for name, cfg in configs.items():
        for n in sizes:
            repeats = 20 if n <= 10 else (5 if n == 100 else 3)
            repeats = repeats if device == "cpu" else 50
            seconds = training_step_time(cfg, n, repeats, device)
            print(name, n, seconds, flush=True)
            gc.collect()  # the last agents' CUDA graphs and their memory pools
            if device != "cpu":
                torch.cuda.empty_cache()
            rows.append([name, n, f"{seconds * 1e3:.1f}", f"{n / seconds:,.0f}"])
            if n == 1000:
                per_teacher_budget[name] = BUDGET_S / seconds
    header = ["config", "N teachers", "ms per training step", "teacher-steps/s"]
    lines = [
        f"- {name}: {steps:,.0f} steps per teacher in 45 min at N = 1000"
        f" ({steps / 1e6:.2%} of RAPTOR's 1M)"
        for name, steps in per_teacher_budget.items()
    ]
    where = "1 torch thread" if device == "cpu" else f"on {device}"
    return (
        f"(b) Batched training throughput ({where}; one training step = every teacher "
        "acts, its env steps, one SAC update per teacher).\n\n"
        + table(header, rows)
        + "\n\n"
        + "\n".join(lines)
    )


def budget_vehicles(n: int) -> QuadrotorParams:
    """``n`` vehicles from RAPTOR's distribution plus the crazyflie and x500 presets."""
    return QuadrotorParams.cat([sample_params(n, seed=0), preset("crazyflie"), preset(VEHICLE)])


def budget_run(steps: int, n: int, points: int = 10) -> str:
    """Train the teachers of ``budget_vehicles(n)`` for ``steps`` steps with the CPU preset,
    evaluating the deterministic teachers ``points`` times along the way (learning curve)."""
    params = budget_vehicles(n)
    names = [str(i) for i in range(n)] + ["crazyflie", VEHICLE]
    cfg = TeacherConfig.cpu_budget(steps)
    cfg.log_every = max(steps // points, 1)
    eval_env = QuadrotorTorchEnv(params, seed=EVAL_SEED)
    curve: list[tuple[int, torch.Tensor]] = []
    eval_s = [0.0]

    def record(step: int, teachers: Teachers) -> None:
        start = time.perf_counter()
        curve.append((step, teachers.evaluate(eval_env, EVAL_EPISODES)))
        eval_s[0] += time.perf_counter() - start
        print(step, curve[-1][1].median().item(), flush=True)

    start = time.perf_counter()
    teachers = train_teachers(params, cfg, QuadrotorTorchEnv, 0, progress=False, callback=record)
    wall = time.perf_counter() - start - eval_s[0]
    if not curve or curve[-1][0] != steps:
        record(steps, teachers)
    trained = curve[-1][1]
    untrained = Teachers(len(names), actor_hidden=cfg.sac.actor_hidden)
    before = untrained.evaluate(eval_env, EVAL_EPISODES)
    rows = [
        [
            names[i],
            f"{params.mass[i]:.3f}",
            f"{params.thrust_to_weight[i]:.2f}",
            f"{before[i]:.0f}",
            f"{trained[i]:.0f}",
        ]
        for i in range(len(names))
    ]
    curve_rows = [
        [
            step,
            f"{torch.quantile(r, 0.1):.0f}",
            f"{r.median():.0f}",
            f"{torch.quantile(r, 0.9):.0f}",
            f"{int((r >= ACCEPT_RETURN).sum())}/{len(names)}",
        ]
        for step, r in curve
    ]
    reached = [step for step, r in curve if r.median() >= ACCEPT_RETURN]
    first = f"{reached[0]} steps per teacher" if reached else f"not reached in {steps} steps"
    sac = cfg.sac
    return (
        f"(c) {n} vehicles from RAPTOR's distribution (`sample_params({n}, seed=0)`) plus the "
        f"crazyflie and {VEHICLE} presets, {steps} steps per teacher with "
        f"`TeacherConfig.cpu_budget` (actor {tuple(sac.actor_hidden)}, critics "
        f"{tuple(sac.critic_hidden)}, batch {sac.batch_size}, one update per "
        f"{sac.update_every} env steps, initial alpha {sac.initial_alpha}, target entropy "
        f"{sac.target_entropy}, hover-initialised actors: {cfg.hover_init}, normalised "
        f"observations: {cfg.normalize_obs}, reward curriculum over the first "
        f"{cfg.curriculum_steps} steps from {cfg.curriculum_start} x RAPTOR's action-change "
        f"and orientation weights); trained in {wall:.0f} s at N = {len(names)} (evaluation "
        f"excluded). Returns: deterministic teachers, {EVAL_EPISODES} evaluation episodes each "
        f"in RAPTOR's MDP (RAPTOR's reward weights). Median >= {ACCEPT_RETURN} (RAPTOR's bar "
        f"per teacher): {first}. Final median {trained.median():.0f} vs untrained "
        f"{before.median():.0f}; {int((trained >= ACCEPT_RETURN).sum())}/{len(names)} teachers "
        "reach the bar.\n\n"
        + table(["steps per teacher", "q10", "median", "q90", f">= {ACCEPT_RETURN}"], curve_rows)
        + "\n\n"
        + table(["vehicle", "mass kg", "T/W", "untrained return", "trained return"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--budget",
        type=int,
        default=0,
        help="instead of (a) and (b): train 8 sampled vehicles and 2 presets this many steps (c)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="a GPU (cuda) measures (b) alone, into its own section",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.budget:
        title = "RAPTOR teachers at the CPU budget"
        write_section("raptor-teachers-budget", title, budget_run(args.budget, 8))
        return
    if args.device != "cpu":
        title = "RAPTOR teachers (batched SAC) on a GPU"
        write_section("raptor-teachers-gpu", title, throughput(args.device))
        return
    body = throughput() + "\n\n" + validation(args.steps, args.seeds)
    write_section("raptor-teachers", "RAPTOR teachers (batched SAC)", body)


if __name__ == "__main__":
    main()
