"""Which epoch of a RAPTOR distillation to keep: every epoch's student on validation vehicles
and on held-out vehicles.

The distillation keeps the epoch whose flight return on the *training* vehicles is highest
(RAPTOR's rule). This script asks whether another rule does better on vehicles no rule looked
at: the epoch best on validation vehicles (reset seeds from ``VALIDATION_SEED``, below the
held-out range, so drawn like training-range vehicles but never trained on), the last epoch,
and averages of the last epochs' weights. It reads every epoch's weights from the run's
distillation checkpoint (``epoch_students``) and flies each on both vehicle sets, with the
protocol of ``robolearn.algos.raptor.evaluate.fly``. The held-out vehicles are those of section
raptor_population, so its numbers line up with that table.

Usage: python -m benchmarks.bench_raptor_epochs --run RUN_DIR [--last N] [--validation N]
[--vehicles N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_raptor_population import FIRST_SEED, VALIDATION_SEED
from benchmarks.report import table, write_section
from robolearn.algos.raptor.evaluate import Flight, fly
from robolearn.algos.raptor.student import RaptorStudent, StudentPolicy
from robolearn.training import Checkpointer

SECTION = "raptor_epochs"


def flight_score(flight: Flight) -> tuple[float, float]:
    """Survival (%) and median final error over survivors (cm)."""
    return 100 * float(flight.survived.mean()), 100 * float(np.nanmedian(flight.final_errors))


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts of one network."""
    return {name: torch.stack([s[name] for s in states]).mean(0) for name in states[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a RAPTOR run folder")
    parser.add_argument("--last", type=int, default=20, help="epochs flown, counted from the end")
    parser.add_argument("--validation", type=int, default=3000, help="validation vehicles")
    parser.add_argument("--vehicles", type=int, default=5000, help="held-out vehicles")
    args = parser.parse_args()
    for name in ("last", "validation", "vehicles"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: need at least 1")
    state = Checkpointer(args.run / "distill_training").load_state()
    if state is None or not state.get("epoch_students"):
        parser.error(f"{args.run}: no distillation checkpoint with every epoch's weights")
    students = state["epoch_students"]
    first = len(students) - min(args.last, len(students))
    # The distillation's per-epoch flight return on its training vehicles, by 1-based epoch.
    returns = dict(enumerate(state["curves"]["student_return"], start=1))
    kept = max(returns, key=returns.__getitem__)  # the distillation's rule, over all epochs
    if any(s is None for s in [*students[first:], students[kept - 1]]):
        parser.error(f"{args.run}: a checkpoint from before every epoch's weights were kept")
    torch.set_num_threads(1)
    validation = range(VALIDATION_SEED, VALIDATION_SEED + args.validation)
    held_out = range(FIRST_SEED, FIRST_SEED + args.vehicles)

    def score(weights: dict[str, torch.Tensor]) -> tuple[tuple[float, float], ...]:
        model = RaptorStudent()
        model.load_state_dict(weights)
        policy = StudentPolicy(model)
        return tuple(flight_score(fly(policy, seeds, 500)) for seeds in (validation, held_out))

    start = time.perf_counter()
    scores = {epoch: score(students[epoch - 1]) for epoch in range(first + 1, len(students) + 1)}
    # Validation's rule, over the epochs flown: most survivors, then the lower median.
    on_validation = max(scores, key=lambda e: (scores[e][0][0], -scores[e][0][1]))
    if kept not in scores:
        scores[kept] = score(students[kept - 1])
    rules = {
        f"best training-flight return (kept: epoch {kept})": scores[kept],
        f"best on validation vehicles (epoch {on_validation})": scores[on_validation],
        f"last epoch ({len(students)})": scores[len(students)],
    }
    for k in (5, 10):
        rules[f"weights averaged over the last {k} epochs"] = score(average(students[-k:]))
    wall = time.perf_counter() - start

    def cells(pair: tuple[tuple[float, float], ...]) -> list[str]:
        return [f"{pair[0][0]:.2f}", f"{pair[0][1]:.2f}", f"{pair[1][0]:.2f}", f"{pair[1][1]:.2f}"]

    header = ["validation survival %", "median (cm)", "held-out survival %", "median (cm)"]
    per_epoch = [[e, f"{returns[e]:.1f}", *cells(s)] for e, s in sorted(scores.items())]
    body = f"""
Run `{args.run}`. Every epoch's student of the last {len(students) - first} flown on
{args.validation} validation vehicles (reset seeds from {VALIDATION_SEED}) and on the
{args.vehicles} held-out vehicles of section raptor_population (reset seeds from {FIRST_SEED});
survival and median final error over survivors, protocol of section raptor_eval. The validation
rule keeps the epoch with the most survivors there, then the lower median. Took {wall:.0f} s.

{table(["rule", *header], [[name, *cells(s)] for name, s in rules.items()])}

{table(["epoch", "training-flight return", *header], per_epoch)}
"""
    write_section(SECTION, "RAPTOR distillation: which epoch to keep", body)


if __name__ == "__main__":
    main()
