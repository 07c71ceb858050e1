"""Quadrotor dynamics throughput: our batched torch RK4 vs the L2F simulator's batched step.

Quadrotor-steps per second (one vehicle advanced by one 10 ms control step) at batch sizes 1,
1000 and 100,000, ours on CPU (and on CUDA when present, eager and as a CUDA graph) in float32,
L2F's C++ ``vectorN.step`` (float32) at the same sizes, timed in interleaved rounds in one run;
medians over the rounds.
L2F ships fixed batch sizes (``vector1`` ... ``vector8192``): 1000 runs ``vector1024`` and
100,000 calls ``vector8192`` 13 times (106,496 vehicles); rates count the vehicles stepped.

Run: ``python -m benchmarks.bench_quadrotor_dynamics``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.report import table, write_section
from robolearn.cuda_graph import GraphedFunction
from sims.quadrotor.dynamics import MOTORS, QuadrotorDynamics, initial_state
from sims.quadrotor.params import sample_params

BATCHES = (1, 1000, 100_000)
ROUNDS = 7
L2F_MAX = 8192


def _steps_for(batch: int) -> int:
    """Steps per timed call: about 1e5 quadrotor-steps, at least 3."""
    return max(3, 100_000 // batch) if batch > 1 else 300


def ours(batch: int, device: str, graphed: bool = False) -> tuple[Callable[[], None], int]:
    """A callable stepping ``batch`` sampled vehicles ``steps`` times, and the vehicle count;
    ``graphed``: each step replayed as a CUDA graph, as ``QuadrotorTorchEnv`` does on a GPU."""
    params = sample_params(batch, seed=0, device=device)
    dynamics = QuadrotorDynamics(params)
    step = GraphedFunction(dynamics.step) if graphed else dynamics.step
    state = initial_state(batch, device=device)
    state[:, MOTORS] = params.hover_command()
    action = 2 * params.hover_command() - 1
    steps = _steps_for(batch)

    def run() -> None:
        nonlocal state
        with torch.no_grad() if graphed else torch.inference_mode():
            for _ in range(steps):
                state = step(state, action)
        if device == "cuda":
            torch.cuda.synchronize()

    return run, batch


def l2f_runner(batch: int) -> tuple[Callable[[], None], int]:
    """L2F's batched step over at least ``batch`` vehicles (nominal Crazyflie at hover)."""
    import l2f

    size = 1 << max(0, math.ceil(math.log2(batch)))
    calls = 1
    if size > L2F_MAX:
        size, calls = L2F_MAX, math.ceil(batch / L2F_MAX)
    module = getattr(l2f, f"vector{size}")
    device = l2f.Device()
    envs, rngs, states, nexts, params = [], [], [], [], []
    for i in range(calls):
        env, p, s, s2, rng = (
            module.VectorEnvironment(),
            module.VectorParameters(),
            module.VectorState(),
            module.VectorState(),
            module.VectorRng(),
        )
        module.initialize_environment(device, env)
        module.initialize_rng(device, rng, i)
        module.initial_parameters(device, env, p)
        module.initial_state(device, env, p, s)
        envs.append(env)
        params.append(p)
        states.append(s)
        nexts.append(s2)
        rngs.append(rng)
    action = np.full((size, 4), 2 * 0.806 - 1, dtype=np.float32)
    steps = _steps_for(batch)

    def run() -> None:
        # Ping-pong between two state buffers (steps is even or the last copy is unused).
        for k in range(steps):
            for env, p, s, s2, rng in zip(envs, params, states, nexts, rngs):
                src, dst = (s, s2) if k % 2 == 0 else (s2, s)
                module.step(device, env, p, src, action, dst, rng)

    return run, size * calls


def main() -> None:
    # One thread, like L2F's step: on this shared 2-core machine torch's 2 OpenMP threads
    # oversubscribe the cores and run ~40x slower at batch 100,000.
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for batch in BATCHES:
        runners = {f"ours ({d})": ours(batch, d) for d in devices}
        if "cuda" in devices:
            runners["ours (cuda graph)"] = ours(batch, "cuda", graphed=True)
        runners["l2f"] = l2f_runner(batch)
        steps = _steps_for(batch)
        for fn, _ in runners.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(ROUNDS):
            for name, (fn, _) in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        rates = {
            name: vehicles * steps / statistics.median(times[name])
            for name, (_, vehicles) in runners.items()
        }
        for name, rate in rates.items():
            if name == "l2f":
                continue
            rows.append(
                [
                    f"{batch:,}",
                    name,
                    f"{rate:,.0f}",
                    f"{rates['l2f']:,.0f} ({runners['l2f'][1]:,} vehicles)",
                    f"{rate / rates['l2f']:.3g}",
                ]
            )
            print(rows[-1], flush=True)
    body = (
        "Quadrotor-steps/s (one vehicle, one 10 ms RK4 step), float32, 1 CPU thread,"
        " sampled vehicles for ours,"
        f" nominal Crazyflie for L2F; median of {ROUNDS} interleaved rounds of ~1e5"
        " quadrotor-steps each (300 steps at batch 1). L2F has fixed batch sizes: batch 1000 runs"
        " `l2f.vector1024`; 100,000 calls `l2f.vector8192` 13 times per step (106,496 vehicles)."
        " Ours: `QuadrotorDynamics.step` under `torch.inference_mode`, 1 torch thread"
        " (L2F is single-threaded too).\n\n"
        + table(["batch", "ours", "ours steps/s", "l2f steps/s", "ours / l2f"], rows)
    )
    write_section("quadrotor_dynamics", "Quadrotor dynamics throughput (ours vs L2F)", body)


if __name__ == "__main__":
    main()
