"""DSRL benchmark: success vs env steps of a base diffusion policy, DSRL-NA, DSRL-SAC and SB3 SAC.

One run = one (task, method, seed); it writes ``results/dsrl/<task>/<method>-<seed>.json`` under
``benchmarks/`` (the curve, the base success, timing, machine), so the table fills run by run:

    python -m benchmarks.bench_dsrl run --task push --method na --seed 0
    python -m benchmarks.bench_dsrl run --task push --method na --budget 30000 \
        --set reward=sparse --tag sparse             # an ablation: DSRLConfig overrides
    python -m benchmarks.bench_dsrl aggregate          # table + curves into BENCHMARKS.md
    python -m benchmarks.bench_dsrl latency            # inference cost per chunk

The base policy of a task is trained once (``algo=diffusion_mlp`` settings) on imperfect
scripted demonstrations and cached next to the results. Its success on held-out seeds is the
"demonstrations alone" line. Every learner gets the env's own dense reward (SAC from scratch
acts per step; DSRL sums it over each chunk), so the methods differ only in what they steer.
DSRL-NA also gets the demonstrations in its replay buffer; DSRL-SAC runs without them, as upstream
(its buffer holds noise; ``algo.demo_store`` can fill it by DDIM inversion, unused here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import commit, machine, median_time, table, write_section
from robolearn.algos.diffusion import DiffusionConfig, DiffusionPolicy, train_diffusion
from robolearn.algos.dsrl.steered import NoiseActor, SteeredPolicy
from robolearn.algos.dsrl.train import DSRLConfig, make_evaluator, train_dsrl
from robolearn.data.store import EpisodeStore
from robolearn.envs import make_env, make_vector_env
from robolearn.policy import Policy, as_dict
from robolearn.report import plot_curves
from robolearn.rollout import rollout
from robolearn.training import Checkpointer

RESULTS = Path(__file__).resolve().parent / "results" / "dsrl"
EVAL_SEED = 1_000_000
#: task -> (env id, expert factory, demonstration noise, demonstrations). The expert noise of
#: each task is set so that the base policy trained on its demonstrations succeeds 20-60% of the
#: time, as the issue asks (measured: the "base" rows of the table).
ARM_EXPERT, METAWORLD_EXPERT = "sims.arm.experts:make_expert", "sims.metaworld:make_expert"
TASKS: dict[str, tuple[str, str, float, int]] = {
    "push": ("robolearn/ArmPush-v0", ARM_EXPERT, 0.3, 200),
    "pick_place": ("robolearn/ArmPickPlace-v0", ARM_EXPERT, 0.15, 200),
    "mw_push": ("robolearn/MetaWorld-push-v3", METAWORLD_EXPERT, 0.15, 200),
    "mw_door_open": ("robolearn/MetaWorld-door-open-v3", METAWORLD_EXPERT, 0.75, 200),
    "mw_drawer_open": ("robolearn/MetaWorld-drawer-open-v3", METAWORLD_EXPERT, 0.5, 200),
}
#: Version of the cached demonstrations' contents beyond their settings: bumped when an env's
#: reward changes (DSRL-NA learns from the recorded rewards; the base policy is kept).
#: 2: Meta-World rewards mapped to [-1, 0].
DEMO_FORMAT = 2
METHODS = ("base", "na", "sac", "sac_scratch")
SAMPLED = " (sampled noise)"
#: Table rows: the methods, the steered ones also acting with sampled noise.
ROWS = ("base", "na", f"na{SAMPLED}", "sac", f"sac{SAMPLED}", "sac_scratch")
#: DSRLConfig fields the ablation table shows.
PROBE_KEYS = ("reward", "noise_prior", "ent_coef", "layer_norm", "gradient_steps")
BUDGET = 100_000
EVAL_EVERY = 10_000
EVAL_EPISODES = 50
BASE_CONFIG = DiffusionConfig(
    denoiser="mlp",
    obs_steps=1,
    horizon=4,
    action_steps=4,
    mlp_hidden=(256, 256, 256),
    step_embed_dim=32,
    lr=1e-3,
    steps=5000,
)


def _import(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def base_policy(task: str) -> tuple[DiffusionPolicy, EpisodeStore]:
    """The task's base diffusion policy and its demonstrations (trained once, cached)."""
    env_id, expert, noise, demos = TASKS[task]
    root = RESULTS / task / "base"
    policy_dir = root / "policy"
    store_path = root / "demos.zarr"
    if store_path.exists():
        cached = EpisodeStore.open(store_path)
        if cached.n_episodes < demos or cached.attrs.get("demo_noise") != noise:
            shutil.rmtree(root)  # demonstrations of another setting: record and train anew
        elif cached.attrs.get("demo_format") != DEMO_FORMAT:
            shutil.rmtree(store_path)  # the same demonstrations with outdated rewards
    if not store_path.exists():
        env = make_vector_env(env_id, 10)
        keys = list(getattr(env.single_observation_space, "spaces", ["obs"]))
        attrs = {
            "env_id": env_id,
            "observation_keys": keys,
            "demo_noise": noise,
            "demo_format": DEMO_FORMAT,
        }
        store = EpisodeStore.create(store_path, attrs=attrs)
        policy = _import(expert)(env_id, noise=noise, seed=0)
        rollout(policy, env, demos, seed=0, store=store, progress=True, desc=f"demos {task}")
        env.close()
    store = EpisodeStore.open(store_path)
    if not (policy_dir / "policy.json").exists():
        from robolearn.algos.diffusion import default_obs_keys

        data = store.load()
        keys = default_obs_keys(data, store.attrs["observation_keys"])
        keys = [k for k in keys if data[k].ndim == 2]
        policy = train_diffusion(data, store.episode_ends, keys, BASE_CONFIG, root / "run")
        policy.save(policy_dir)
    return DiffusionPolicy.load(policy_dir), store


def evaluator(env_id: str) -> Any:
    return make_evaluator(lambda: make_vector_env(env_id, 10), EVAL_EPISODES, EVAL_SEED)


class SB3Policy(Policy):
    """An SB3 model as a robolearn Policy (deterministic actions)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def act(self, obs: Any) -> np.ndarray:
        obs = obs if isinstance(obs, dict) else as_dict(obs)["obs"]
        return self.model.predict(obs, deterministic=True)[0]


def run_sac_scratch(env_id: str, seed: int, budget: int, run_dir: Path) -> list[tuple[int, float]]:
    """SB3 SAC from scratch, per env step; resumable from its last evaluation.

    At every evaluation the model, its replay buffer and the curve so far are saved as one
    checkpoint (``run_dir/checkpoints/latest``, swapped in whole); a rerun of the same command
    continues from there (a 100k-step run takes about 100 minutes on one core, longer than is
    safe to lose).
    """
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    env = make_env(env_id)
    evaluate = evaluator(env_id)
    # model.zip, replay.pkl and curve.json of one evaluation, swapped in as one directory.
    checkpointer = Checkpointer(run_dir)
    latest = checkpointer.latest()
    if latest is not None:
        model = SAC.load(latest / "model.zip", env=env)
        model.load_replay_buffer(latest / "replay.pkl")
        curve = [tuple(point) for point in json.loads((latest / "curve.json").read_text())]
        print(f"sac_scratch {env_id}: resumed at {model.num_timesteps} steps", flush=True)
    else:
        policy = "MultiInputPolicy" if hasattr(env.observation_space, "spaces") else "MlpPolicy"
        model = SAC(
            policy, env, seed=seed, learning_starts=5000, policy_kwargs={"net_arch": [256] * 3}
        )
        curve = [(0, evaluate(SB3Policy(model)))]

    def fill(directory: Path) -> None:
        model.save_replay_buffer(directory / "replay.pkl")
        model.save(directory / "model.zip")
        (directory / "curve.json").write_text(json.dumps(curve))

    class Eval(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % EVAL_EVERY == 0 or self.num_timesteps == budget:
                curve.append((self.num_timesteps, evaluate(SB3Policy(self.model))))
                print(f"sac_scratch {env_id} {curve[-1]}", flush=True)
                checkpointer.write(fill)
            return True

    model.learn(budget - model.num_timesteps, callback=Eval(), reset_num_timesteps=False)
    return curve


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.set and args.method not in ("na", "sac"):
        raise SystemExit("--set overrides DSRLConfig fields: only for --method na or sac")
    name = f"{args.method}-{args.tag}" if args.tag else args.method
    env_id = TASKS[args.task][0]
    base, store = base_policy(args.task)
    start = time.perf_counter()
    base_success = evaluator(env_id)(base)
    out: dict[str, Any] = {
        "task": args.task,
        "env_id": env_id,
        "method": name,
        "seed": args.seed,
        "base_success": base_success,
        "demo_success": float(store.meta("success").mean()),
        "demo_noise": TASKS[args.task][2],
    }
    if args.method == "base":
        curve = [(0, base_success), (args.budget, base_success)]
    elif args.method == "sac_scratch":
        run_dir = _claim_run_dir(RESULTS / args.task / f"run-{name}-{args.seed}")
        curve = run_sac_scratch(env_id, args.seed, args.budget, run_dir)
    else:
        cfg = DSRLConfig(
            variant=args.method,
            env_steps=args.budget,
            eval_every=EVAL_EVERY,
            eval_episodes=EVAL_EPISODES,
            **dict(_parse_setting(s) for s in args.set),
        )
        run_dir = _claim_run_dir(RESULTS / args.task / f"run-{name}-{args.seed}")
        train_dsrl(
            base,
            lambda: make_env(env_id),
            cfg,
            run_dir,
            evaluator(env_id),
            demos=store if args.method == "na" else None,
            seed=args.seed,
        )
        steps, success = _read_curve(run_dir, "eval/success")
        curve = list(zip(steps, success))
        steps, success = _read_curve(run_dir, "eval/success_stochastic")
        out["curve_stochastic"] = [(int(s), float(v)) for s, v in zip(steps, success)]
        out["config"] = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    out.update(
        curve=[(int(s), float(v)) for s, v in curve],
        wall_s=time.perf_counter() - start,
        machine=machine(),
        commit=commit(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command=" ".join(
            [
                f"python -m benchmarks.bench_dsrl run --task {args.task} --method {args.method}",
                f"--seed {args.seed} --budget {args.budget}",
                *[f"--set {s}" for s in args.set],
                *([f"--tag {args.tag}"] if args.tag else []),
            ]
        ),
    )
    path = RESULTS / args.task / f"{name}-{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=list))
    print(f"{path}: final success {curve[-1][1]:.0%} (base {base_success:.0%})")


def _claim_run_dir(run_dir: Path) -> Path:
    """``run_dir``, new or resumable: a run folder started with other rewards (another
    ``DEMO_FORMAT``; folders without a mark predate it) would mix two reward scales in its
    replay buffer, so it is refused."""
    mark = run_dir / "demo_format"
    if run_dir.exists():
        found = mark.read_text().strip() if mark.exists() else "1"
        if found != str(DEMO_FORMAT):
            raise SystemExit(
                f"{run_dir} holds a run started with demonstration format {found}, not "
                f"{DEMO_FORMAT} (the env's rewards changed since): delete it to start over"
            )
    else:
        run_dir.mkdir(parents=True)
        mark.write_text(f"{DEMO_FORMAT}\n")
    return run_dir


def _parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``noise_prior=true``, ``ent_coef=0.1``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set takes key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _read_curve(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    from robolearn.training import read_metric

    return read_metric(run_dir, name)


def _success_at(curve: list[list[float]], budget: int) -> float | None:
    """Success of the last evaluation at or before ``budget`` env steps (None if the run
    did not get that far)."""
    if curve[-1][0] < budget * 0.98:
        return None
    return float([v for s, v in curve if s <= budget * 1.02][-1])


def _median_success(runs: list[dict[str, Any]], budget: int) -> float | None:
    """Median success over ``runs`` at ``budget`` (None if no run got that far)."""
    values = [v for r in runs if (v := _success_at(r["curve"], budget)) is not None]
    return statistics.median(values) if values else None


def _success_row(runs: list[dict[str, Any]], budgets: Sequence[int]) -> list[str]:
    """Median success over ``runs`` at each budget ('-' where no run got that far)."""
    medians = [_median_success(runs, budget) for budget in budgets]
    return ["-" if m is None else f"{m:.0%}" for m in medians]


def _median_curve(runs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The median over runs at the longest run's evaluation steps.

    Runs evaluate at the first chunk boundary past each multiple of the eval interval, so their
    steps differ by a few; each run is interpolated onto the longest run's steps (NaN past its
    own last evaluation).
    """
    longest = max(runs, key=lambda r: r["curve"][-1][0])
    steps = np.array([s for s, _ in longest["curve"]], dtype=float)
    values = []
    for run in runs:
        own_steps, own_values = np.array(run["curve"], dtype=float).T
        curve = np.interp(steps, own_steps, own_values)
        curve[steps > own_steps[-1] * 1.02] = np.nan
        values.append(curve)
    return steps, np.nanmedian(np.stack(values), axis=0)


def _base_success(results: list[dict[str, Any]]) -> str:
    """The base policy's success; runs on a base retrained elsewhere (the cache is per machine,
    and training is not bit-identical across CPUs) are named with theirs."""
    reference = next((r for r in results if r["method"] == "base"), results[0])["base_success"]
    others: dict[float, list[str]] = {}
    for r in results:
        if r["method"] in ("na", "sac") and r["base_success"] != reference:  # steer the base
            others.setdefault(r["base_success"], []).append(f"{r['method']}-{r['seed']}")
    text = f"{reference:.0%}"
    for success, runs in sorted(others.items()):
        text += f" ({success:.0%} for the base of {', '.join(sorted(runs))}, retrained elsewhere)"
    return text


def _verdict(results: list[dict[str, Any]]) -> str:
    """The issue's target on one task: DSRL-NA's median success at 100k env steps >= 90%, and
    its median ahead of SAC from scratch's at every evaluation (10k, 20k, ..., 100k)."""
    runs = {m: [r for r in results if r["method"] == m] for m in ("na", "sac_scratch")}
    if not runs["na"]:
        return "target: no DSRL-NA run yet"
    na = _median_success(runs["na"], BUDGET)
    reached = na is not None and na >= 0.9
    cell = "-" if na is None else f"{na:.0%}"
    text = f"DSRL-NA {cell} at 100k ({len(runs['na'])} seeds, target >= 90%: {_yes(reached)})"
    if not runs["sac_scratch"]:
        return text + "; no SAC-from-scratch run yet"
    budgets = range(EVAL_EVERY, BUDGET + 1, EVAL_EVERY)
    pairs = [
        (_median_success(runs["na"], b), _median_success(runs["sac_scratch"], b)) for b in budgets
    ]
    compared = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not compared:
        return text + "; no evaluation of both yet"
    ahead = all(a > b for a, b in compared)
    return text + f"; ahead of SAC from scratch at all {len(compared)} evaluations: {_yes(ahead)}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def cmd_aggregate(args: argparse.Namespace) -> None:
    budgets = (0, 25_000, 50_000, 100_000)
    probe_budgets = (0, 10_000, 20_000, 30_000)
    rows, probe_rows, notes = [], [], []
    for task_dir in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        results = [json.loads(p.read_text()) for p in sorted(task_dir.glob("*-*.json"))]
        if not results:
            continue
        # The steered policies were also evaluated sampling their noise: rows of their own.
        results += [
            {**r, "method": f"{r['method']}{SAMPLED}", "curve": r["curve_stochastic"]}
            for r in results
            if r["method"] in METHODS and r.get("curve_stochastic")
        ]
        names = sorted({r["method"] for r in results})
        ablations = [n for n in names if n not in ROWS]
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in [m for m in ROWS if m in names] + ablations:
            runs = [r for r in results if r["method"] == name]
            if name in ROWS:
                rows.append([task_dir.name, name, len(runs), *_success_row(runs, budgets)])
                curves[name] = _median_curve(runs)
            if name in ablations or (name == "na" and ablations):
                settings = runs[0].get("config", {})
                what = ", ".join(f"{k}={settings[k]}" for k in PROBE_KEYS if k in settings)
                probe_rows.append(
                    [task_dir.name, name, what, len(runs), *_success_row(runs, probe_budgets)]
                )
        first = results[0]
        notes.append(
            f"{task_dir.name}: demonstrations {first['demo_success']:.0%} successful "
            f"(expert noise {first['demo_noise']}); base diffusion policy "
            f"{_base_success(results)}; {_verdict(results)}"
        )
        plot_curves(
            RESULTS / f"{task_dir.name}.png",
            curves,
            f"{task_dir.name}: success vs env steps (median over seeds)",
            "success rate",
            xlabel="env steps",
        )
    body = [
        "Runs: `python -m benchmarks.bench_dsrl run --task T --method M --seed S` each, "
        "then this aggregation.",
        "",
        table(["task", "method", "seeds", *[f"{b // 1000}k steps" for b in budgets]], rows),
        "",
        *[f"- {n}" for n in notes],
        "",
        "Success over 50 held-out seeds (from 1,000,000); median over seeds; '-' = no run "
        "reached that budget yet. DSRL rows act with the actor's mean noise, '(sampled noise)' "
        "rows sample it (runs from before that evaluation existed have none). Curves: "
        "`benchmarks/results/dsrl/<task>.png`.",
    ]
    if probe_rows:
        body += [
            "",
            "Ablations (`--set key=value --tag T`, DSRL-NA, shorter budgets):",
            "",
            table(
                [
                    "task",
                    "run",
                    "settings",
                    "seeds",
                    *[f"{b // 1000}k steps" for b in probe_budgets],
                ],
                probe_rows,
            ),
        ]
    write_section("dsrl", "DSRL: success vs env steps", "\n".join(body))
    print("\n".join(body))


def cmd_latency(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # the other jobs the machine ran while measuring
    rows = []
    for name, cfg, obs_dim, action_dim in (
        ("U-Net (algo=diffusion), To 2, Tp 16", DiffusionConfig(), 24, 4),
        (
            "U-Net, DP's low-dim size [256, 512, 1024]",
            DiffusionConfig(down_dims=(256, 512, 1024), step_embed_dim=256),
            24,
            4,
        ),
        ("MLP (algo=diffusion_mlp), To 1, Tp 4", BASE_CONFIG, 24, 4),
    ):
        policy = DiffusionPolicy(["obs"], [(obs_dim,)], action_dim, cfg)
        obs = {"obs": torch.zeros(1, cfg.obs_steps, obs_dim)}
        actor = NoiseActor(policy.cond_dim, int(np.prod(policy.noise_shape)), [256] * 3, "Tanh")
        steered = SteeredPolicy(policy, actor, {}, 1.5)
        cells = [name]
        for steps in (8, 16):
            policy.inference_steps = steps
            seconds = median_time(lambda p=policy, o=obs: p.sample_chunk(o), 20)
            cells.append(f"{1e3 * seconds:.2f}")
        policy.inference_steps = 8
        cond = policy.condition(obs)
        seconds = median_time(lambda s=steered, c=cond: s.noise(c), 50)
        cells.append(f"{1e3 * seconds:.3f}")
        rows.append(cells)
    body = "\n".join(
        [
            table(
                ["denoiser", "DDIM 8: ms/chunk", "DDIM 16: ms/chunk", "steering: + ms/chunk"],
                rows,
            ),
            "",
            f"Batch 1, 1 torch thread, median of 20 calls after a warm-up (load average "
            f"{load:.1f} on {os.cpu_count()} cores when it started). Steering adds one "
            "noise-actor forward (3x256 MLP) per chunk; the base sampler dominates.",
        ]
    )
    write_section("dsrl-latency", "Diffusion policy inference latency per chunk (CPU)", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--task", choices=sorted(TASKS), required=True)
    run.add_argument("--method", choices=METHODS, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--budget", type=int, default=BUDGET)
    run.add_argument("--set", action="append", default=[], help="DSRLConfig field=value")
    run.add_argument("--tag", default="", help="name of the variant (results <method>-<tag>)")
    sub.add_parser("aggregate")
    sub.add_parser("latency")
    args = parser.parse_args()
    {"run": cmd_run, "aggregate": cmd_aggregate, "latency": cmd_latency}[args.cmd](args)


if __name__ == "__main__":
    main()
