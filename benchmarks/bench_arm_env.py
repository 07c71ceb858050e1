"""Benchmark of the MuJoCo arm suite; writes the ``arm_env`` section of BENCHMARKS.md.

(a) ``env.step`` of ``robolearn/ArmPush-v0`` made through ``gymnasium.make`` against raw
``mujoco.mj_step(model, data, nstep)`` with the same substeps on the same model, replaying the
controls the env produced so both integrate the same trajectory (target: the env costs at most
1.3x the raw physics); (b) rendered 84x84 observations per second with MuJoCo's
default visuals (shadows, reflections, multisampling) against the env's fast settings;
(c) scripted-expert success over 100 seeds per task, clean and with the imperfect-demo noise.

Run from the repository root: ``python -m benchmarks.bench_arm_env [--seeds 100] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

import sims  # noqa: E402
from benchmarks.report import median_time, table, write_section  # noqa: E402
from sims.arm.experts import IMPERFECT_NOISE, make_expert  # noqa: E402
from sims.arm.model import load_model  # noqa: E402

#: Steps per timed run: one full ArmPush episode (its time limit).
STEPS = 100


def bench_step(repeats: int) -> list[list[object]]:
    """Per-step cost of the env against raw mj_step with the same substeps.

    The main baseline replays the controls the env's IK layer produced, so it integrates the
    very same trajectory (same contacts, same solver work) as the env; a baseline with the arm
    holding its reset posture is shown too.
    """
    env = gym.make("robolearn/ArmPush-v0")
    sim = env.unwrapped
    model, data, nstep = sim.model, sim.data, sim.nstep
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, 4)).astype(np.float32)
    # Random actions do not solve the task, so each timed run is STEPS plain steps.
    env.reset(seed=0)
    controls = []
    for action in actions:
        env.step(action)
        controls.append(data.ctrl.copy())
    env_end = data.qpos.copy()

    def run_env() -> None:
        env.reset(seed=0)
        for action in actions:
            env.step(action)

    def run_replay() -> None:
        env.reset(seed=0)
        for ctrl in controls:
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data, nstep=nstep)

    def run_still() -> None:
        env.reset(seed=0)
        for _ in range(STEPS):
            mujoco.mj_step(model, data, nstep=nstep)

    run_replay()
    if not np.array_equal(data.qpos, env_end):
        raise RuntimeError("replaying the env's controls did not reproduce its trajectory")

    # Interleave the runs so load changes on the (shared) machine affect all alike, and take
    # the medians of the per-round ratios as well as of the times.
    runs = {"replay": run_replay, "still": run_still, "env": run_env}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(median_time(fn, repeats=1, warmup=1))
    # Reset is inside every run; subtract it so only steps are compared.
    reset = median_time(lambda: env.reset(seed=0), repeats=repeats)
    env.close()
    steps = {name: (np.array(t) - reset) / STEPS for name, t in times.items()}

    def row(label: str, name: str) -> list[object]:
        return [
            label,
            nstep,
            f"{float(np.median(steps[name])) * 1e6:.0f}",
            f"{float(np.median(steps[name] / steps['replay'])):.2f}",
            f"{float(np.median(steps[name] / steps['still'])):.2f}",
        ]

    return [
        row("raw mj_step(nstep), replaying the env's controls", "replay"),
        row("raw mj_step(nstep), arm holding still", "still"),
        row("ArmPush env.step (gym.make)", "env"),
    ]


def bench_render(repeats: int, size: int = 84, frames: int = 200) -> list[list[object]]:
    """Observation images per second: MuJoCo's default visuals against the env's fast ones."""
    rows = []
    fps = {}
    for label, fast in (("default visuals", False), ("fast (ours)", True)):
        model = load_model(with_block=True, fast_render=fast)
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer = mujoco.Renderer(model, size, size)
        if fast:
            for flag in (
                mujoco.mjtRndFlag.mjRND_SHADOW,
                mujoco.mjtRndFlag.mjRND_REFLECTION,
                mujoco.mjtRndFlag.mjRND_SKYBOX,
            ):
                renderer.scene.flags[flag] = False
        camera = model.camera("front").id

        def render(
            renderer: mujoco.Renderer = renderer, data: mujoco.MjData = data, camera: int = camera
        ) -> None:
            for _ in range(frames):
                renderer.update_scene(data, camera=camera)
                renderer.render()

        fps[label] = frames / median_time(render, repeats=repeats)
        renderer.close()
    base = fps["default visuals"]
    for label, value in fps.items():
        rows.append([label, f"{size}x{size}", f"{value:.0f}", f"{value / base:.2f}"])
    # The env's own image path (render inside step) with the fast settings.
    env = gym.make("robolearn/ArmPush-v0", image=True, image_size=size)
    env.reset(seed=0)
    action = np.zeros(4, np.float32)

    def steps() -> None:
        for _ in range(frames):
            env.step(action)

    env_fps = frames / median_time(steps, repeats=repeats)
    rows.append(["ArmPush env.step with image obs", f"{size}x{size}", f"{env_fps:.0f}", "-"])
    env.close()
    return rows


def bench_experts(seeds: int) -> list[list[object]]:
    """Expert success rate and mean episode length per task over ``seeds`` seeds."""
    rows = []
    for env_id in sims.ARM_ENVS:
        for noise in (0.0, IMPERFECT_NOISE):
            env = gym.make(env_id)
            expert = make_expert(env_id, noise=noise, seed=0)
            successes, lengths = 0, []
            for seed in range(seeds):
                obs, info = env.reset(seed=seed)
                expert.reset()
                done, steps = False, 0
                while not done:
                    action = expert.act({k: v[None] for k, v in obs.items()})[0]
                    obs, _, terminated, truncated, info = env.step(action)
                    done = terminated or truncated
                    steps += 1
                successes += info["success"]
                lengths.append(steps)
            env.close()
            rows.append(
                [env_id, noise, f"{100 * successes / seeds:.0f}%", f"{np.mean(lengths):.1f}"]
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    start = time.perf_counter()
    step_rows = bench_step(args.repeats)
    step_header = ["", "substeps", "us / control step", "ratio to replay", "ratio to still"]
    print(table(step_header, step_rows), flush=True)
    render_rows = bench_render(args.repeats)
    print(table(["", "size", "frames/s", "vs default"], render_rows), flush=True)
    expert_rows = bench_experts(args.seeds)
    body = "\n\n".join(
        [
            "**(a) Step cost**: `robolearn/ArmPush-v0` through `gymnasium.make` (IK action layer, "
            f"{step_rows[0][1]} physics substeps of 2 ms, observation, reward) against raw "
            "`mujoco.mj_step(model, data, nstep)` on the same model: replaying the controls the "
            "env produced (the same trajectory, checked bit for bit) and, for reference, with "
            f"the arm holding still. Medians over {args.repeats} interleaved rounds of runs of "
            f"{STEPS} random-action steps (ratios: medians of the per-round ratios). "
            "Target: env ratio to replay <= 1.3.",
            table(step_header, step_rows),
            "**(b) Rendering**: 84x84 RGB observations from the front camera. Default visuals: "
            "MuJoCo's defaults (4096 shadow map, 4x multisampling) and a reflective table; fast: "
            "`shadowsize=0`, `offsamples=0`, no reflectance, shadow/reflection/skybox flags off.",
            table(["", "size", "frames / s", "speed-up"], render_rows),
            f"**(c) Scripted experts** over {args.seeds} seeds "
            f"(`reset(seed=0..{args.seeds - 1})`), "
            f"clean (noise 0) and imperfect demonstrations (noise {IMPERFECT_NOISE}).",
            table(["env", "noise", "success", "mean episode length"], expert_rows),
            f"Total benchmark time: {time.perf_counter() - start:.0f} s.",
        ]
    )
    write_section("arm_env", "MuJoCo arm suite (reach, push, pick-place)", body)


if __name__ == "__main__":
    main()
