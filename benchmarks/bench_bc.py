"""BC success per arm task with 100 and 500 expert demonstrations (issue: foundation benchmarks).

For each task: record clean expert demonstrations, train the BC MLP with the default config,
evaluate on 100 held-out seeds. Usage: python benchmarks/bench_bc.py [--tasks reach push ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import table, write_section
from robolearn.algos.bc import BCConfig, default_obs_keys, train_bc
from robolearn.data.store import EpisodeStore
from robolearn.envs import make_env
from robolearn.rollout import rollout
from sims.arm.experts import make_expert

TASKS = {
    "reach": "robolearn/ArmReach-v0",
    "push": "robolearn/ArmPush-v0",
    "pick_place": "robolearn/ArmPickPlace-v0",
}
EVAL_SEED = 1_000_000  # the seeds `robolearn eval` uses: disjoint from demonstration seeds


def run(task: str, demos: int, eval_episodes: int, root: Path) -> dict[str, float]:
    env_id = TASKS[task]
    env = make_env(env_id)
    store = EpisodeStore.create(
        root / f"{task}-{demos}.zarr",
        attrs={"observation_keys": list(env.observation_space.spaces)},
    )
    start = time.perf_counter()
    rollout(make_expert(env_id), env, demos, seed=0, store=store, progress=False)
    record_s = time.perf_counter() - start
    data = store.load()
    start = time.perf_counter()
    policy = train_bc(
        data,
        store.episode_ends,
        default_obs_keys(data, store.attrs["observation_keys"]),
        BCConfig(),
        root / f"run-{task}-{demos}",
        progress=False,
    )
    train_s = time.perf_counter() - start
    result = rollout(policy, env, eval_episodes, seed=EVAL_SEED, progress=False)
    return {
        "success": result.success_rate,
        "steps": store.n_steps,
        "record_s": record_s,
        "train_s": train_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--demos", nargs="+", type=int, default=[100, 500])
    parser.add_argument("--eval-episodes", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)  # fastest for a small MLP on a few cores
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for demos in args.demos:
                r = run(task, demos, args.eval_episodes, Path(tmp))
                print(task, demos, r, flush=True)
                rows.append(
                    [
                        task,
                        demos,
                        r["steps"],
                        f"{r['success']:.0%}",
                        f"{r['record_s']:.0f}",
                        f"{r['train_s']:.0f}",
                    ]
                )
    cfg = BCConfig()
    body = (
        f"BC MLP {list(cfg.hidden)}, {cfg.steps} steps, batch {cfg.batch_size}, clean expert "
        f"demonstrations (seeds 0..N-1), success over {args.eval_episodes} held-out seeds.\n\n"
        + table(["task", "demos", "demo steps", "BC success", "record s", "train s"], rows)
    )
    write_section("bc", "Behaviour cloning success per arm task", body)


if __name__ == "__main__":
    main()
