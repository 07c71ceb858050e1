"""RAPTOR student inference cost per step at batch 1: ours (torch, numpy export, C export)
against the released policy's own package (``foundation_policy.Raptor.evaluate_step``).

Every implementation runs the released checkpoint's weights (loaded into our student with
``released_student``), so the table also reports each one's largest deviation from the
package over the timed sequence. Methods are timed interleaved, round by round, so machine
load hits them alike. Usage: python -m benchmarks.bench_raptor_inference [--steps N]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import median_time, table, write_section
from robolearn.algos.raptor.baseline import (
    ReleasedRaptorPolicy,
    load_released_model,
    released_student,
)
from robolearn.algos.raptor.export import export_c_header, export_numpy
from robolearn.algos.raptor.student import StudentPolicy

C_RUNNER = r"""
#include "student.h"

/* n steps of one vehicle from its learned initial state: obs[n*22] -> actions[n*4]. */
void run_steps(int n, const float *obs, float *actions)
{
    float hidden[16];
    int t;
    raptor_student_reset(hidden);
    for (t = 0; t < n; ++t) raptor_student_step(obs + 22 * t, hidden, actions + 4 * t);
}
"""


def observations(steps: int, seed: int = 0) -> np.ndarray:
    """Near-hover synthetic observations (steps, 1, 22): small errors, near-level attitude."""
    obs = np.random.default_rng(seed).normal(0, 0.1, size=(steps, 1, 22)).astype(np.float32)
    obs[..., 3:12] += np.eye(3, dtype=np.float32).ravel()
    obs[..., 18:] += 0.32
    return obs


def build_c_runner(tmp: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Compile the exported header into a shared library; returns obs (T, 1, 22) -> (T, 4)."""
    export_c_header(released_student(), tmp / "student.h")
    (tmp / "runner.c").write_text(C_RUNNER)
    lib = tmp / "librunner.so"
    subprocess.run(
        ["gcc", "-O2", "-std=c99", "-shared", "-fPIC", "runner.c", "-o", lib.name, "-lm"],
        cwd=tmp,
        check=True,
    )
    run_steps = ctypes.CDLL(str(lib)).run_steps
    run_steps.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

    def run(obs: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(obs, dtype=np.float32)
        out = np.empty((len(obs), 4), np.float32)
        run_steps(len(obs), flat.ctypes.data, out.ctypes.data)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed repeat")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 2084-parameter net gains nothing from threads
    obs = observations(args.steps)

    package = load_released_model()
    wrapper = ReleasedRaptorPolicy(clip_inputs=False, raw_action_feedback=False)
    ours = released_student()
    ours.raw_action_feedback = False  # time and compare the same open-loop input sequence

    def run_package() -> np.ndarray:
        package.reset()
        return np.stack([package.evaluate_step(o)[0] for o in obs])

    def run_policy(policy: ReleasedRaptorPolicy | StudentPolicy) -> np.ndarray:
        # Raw outputs, so the comparison is not hidden by the [-1, 1] clip.
        policy.reset(1)
        actions = []
        for o in obs:
            policy.act(o)
            actions.append(policy.raw_action[0])
        return np.stack(actions)

    model = ours.model

    @torch.no_grad()
    def run_module() -> np.ndarray:
        hidden = model.initial_state(1)
        actions = []
        for o in torch.from_numpy(obs):
            action, hidden = model.step(o, hidden)
            actions.append(action[0])
        return torch.stack(actions).numpy()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        module_path = export_numpy(ours, tmp / "raptor_numpy.py")
        namespace: dict[str, object] = {}
        exec(compile(module_path.read_text(), str(module_path), "exec"), namespace)
        exported = namespace["RaptorStudentNumpy"]()

        def run_numpy() -> np.ndarray:
            exported.reset(1)
            return np.stack([exported.step(o)[0] for o in obs])

        methods: dict[str, Callable[[], np.ndarray]] = {
            "foundation-policy `Raptor.evaluate_step` (anchor)": run_package,
            "ReleasedRaptorPolicy.act (wrapper of the anchor)": lambda: run_policy(wrapper),
            "ours: StudentPolicy.act (numpy on the CPU at batch 1)": lambda: run_policy(ours),
            "ours: RaptorStudent.step (torch, no numpy I/O)": run_module,
            "ours: exported numpy module `step`": run_numpy,
        }
        if shutil.which("gcc"):
            c_run = build_c_runner(tmp)
            methods["ours: exported C header, gcc -O2 (loop in C via ctypes)"] = lambda: c_run(obs)

        reference = run_package()
        deviation = {name: float(np.abs(fn() - reference).max()) for name, fn in methods.items()}
        rounds: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                rounds[name].append(median_time(fn, repeats=1, warmup=0))
    per_step = {name: statistics.median(t) / args.steps for name, t in rounds.items()}
    anchor = per_step[next(iter(methods))]
    rows = [
        [
            name,
            f"{per_step[name] * 1e6:.2f}",
            f"{anchor / per_step[name]:.2f}x",
            f"{deviation[name]:.1e}",
        ]
        for name in methods
    ]
    body = (
        f"Batch 1, {args.steps} consecutive steps per repeat from the learned initial state, "
        f"median of {args.rounds} interleaved rounds; all implementations run the released "
        "checkpoint's weights on the same synthetic near-hover observation sequence (open loop). "
        "Speed-up is relative to the foundation-policy package (higher is faster); max abs diff is "
        "the largest raw-output difference from it over the sequence.\n\n"
        + table(["implementation", "µs / step", "speed-up vs anchor", "max abs diff"], rows)
    )
    write_section("raptor-inference", "RAPTOR student inference per step (batch 1)", body)


if __name__ == "__main__":
    main()
