"""RAPTOR students against the released policy on thousands of held-out vehicles.

The issue's benchmark flies 300 held-out vehicles. Survival near 97-98% then moves in steps of
one vehicle (0.33 points) while its sampling spread is about 0.9 points, so two policies a point
apart cannot be told apart there. This script flies ``--vehicles`` more vehicles from the same
distribution and protocol (``robolearn.algos.raptor.evaluate.fly``: teacher-MDP starts,
disturbances, PX4 input clipping, no velocity termination, 5 s), from the seeds just after the
benchmark's 300, and reports per policy: survival with its 95% Wilson interval, the final-error
statistics over survivors, and, paired with the released policy on the same vehicles, how many
vehicles only one of the two loses (the two-sided sign-test p-value of those counts) and how far
its median final error is from the released policy's (a 95% paired bootstrap interval).

It also flies ``--validation`` vehicles from ``VALIDATION_SEED``, apart from both held-out sets:
where a choice between students is made (which one ships), so that the held-out numbers stay
free of it.

Usage: python -m benchmarks.bench_raptor_population [--vehicles N] [--validation N]
[--policy NAME=DIR ...]   (the released and the shipped student are always flown)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks.report import table, write_section
from robolearn.algos.raptor import ReleasedRaptorPolicy
from robolearn.algos.raptor.evaluate import HELD_OUT_SEED, Flight, error_stats, fly
from robolearn.policy import load_policy

SECTION = "raptor_population"
#: The issue's benchmark flies seeds HELD_OUT_SEED .. + 299; these vehicles come after them.
FIRST_SEED = HELD_OUT_SEED + 300
#: First reset seed of the validation vehicles: below HELD_OUT_SEED, where the held-out vehicles
#: start, and drawn per reset seed, while training's vehicles come from sample_params.
VALIDATION_SEED = 5_000_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def sign_test(a: int, b: int) -> float:
    """Two-sided exact binomial p-value of ``a`` against ``b`` discordant pairs (p = 1/2)."""
    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


def median_difference(
    flight: Flight, released: Flight, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Median final error (over survivors) of ``flight`` minus ``released``'s, in m, with a 95%
    bootstrap interval. Vehicles are resampled in pairs, so that both policies' medians are taken
    over the same draw of vehicles and the interval reflects their difference, not the spread of
    the vehicle distribution both share."""
    ours_all, theirs_all = flight.final_errors, released.final_errors  # NaN where crashed

    def difference(rows: np.ndarray) -> float:
        ours, theirs = ours_all[rows], theirs_all[rows]
        return float(np.median(ours[np.isfinite(ours)]) - np.median(theirs[np.isfinite(theirs)]))

    n = len(ours_all)
    rng = np.random.default_rng(seed)
    draws = [difference(rng.integers(0, n, n)) for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return difference(np.arange(n)), float(low), float(high)


def row(name: str, flight: Flight, released: Flight, validation: Flight | None) -> list[object]:
    """The table row of one policy's flights, paired with the released policy's, and its
    survival and median on the validation vehicles if flown."""
    n = len(flight.survived)
    low, high = wilson_interval(int(flight.survived.sum()), n)
    errors = error_stats(flight.final_errors)  # over survivors, in m
    only_lost = int((~flight.survived & released.survived).sum())
    only_kept = int((flight.survived & ~released.survived).sum())
    paired = f"{only_lost} / {only_kept} (p = {sign_test(only_lost, only_kept):.2g})"
    shift, low_shift, high_shift = (100 * v for v in median_difference(flight, released))
    return [
        name,
        f"{flight.survived.mean() * 100:.2f} ({low * 100:.1f}-{high * 100:.1f})",
        int((~flight.survived).sum()),
        f"{errors['median'] * 100:.2f}",
        f"{errors['mean'] * 100:.2f}",
        f"{errors['p90'] * 100:.1f}",
        "—" if flight is released else paired,
        "—" if flight is released else f"{shift:+.2f} ({low_shift:+.2f} to {high_shift:+.2f})",
    ] + (
        []
        if validation is None
        else [
            f"{validation.survived.mean() * 100:.2f}",
            f"{np.nanmedian(validation.final_errors) * 100:.2f}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vehicles", type=int, default=5000, help="held-out vehicles to fly")
    parser.add_argument(
        "--validation", type=int, default=3000, help="validation vehicles to fly (0: none)"
    )
    parser.add_argument(
        "--policy", action="append", default=[], metavar="NAME=DIR", help="more students"
    )
    args = parser.parse_args()
    if args.vehicles < 1:
        parser.error(f"--vehicles {args.vehicles}: need at least 1")
    if args.validation < 0:
        parser.error(f"--validation {args.validation}: must be >= 0")
    torch.set_num_threads(1)
    specs = {"released": None, "shipped (pretrained:quadrotor)": "pretrained:quadrotor"}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--policy {item!r}: expected NAME=DIR")
        if name in specs:
            parser.error(f"--policy {item!r}: the name {name!r} is taken")
        specs[name] = path
    seeds = range(FIRST_SEED, FIRST_SEED + args.vehicles)
    validation_seeds = range(VALIDATION_SEED, VALIDATION_SEED + args.validation)
    flights: dict[str, Flight] = {}
    validations: dict[str, Flight | None] = {}
    start = time.perf_counter()
    for name, path in specs.items():
        policy = ReleasedRaptorPolicy() if path is None else load_policy(path)
        flights[name] = fly(policy, seeds, 500, progress=True)
        validations[name] = fly(policy, validation_seeds, 500) if args.validation else None
    wall = time.perf_counter() - start
    released = flights["released"]
    rows = [row(name, flights[name], released, validations[name]) for name in flights]
    header = [
        "policy",
        "survival % (95% CI)",
        "crashed",
        "median final error (cm)",
        "mean (cm)",
        "p90 (cm)",
        "lost only by it / only by released",
        "median error - released's (cm, 95% CI)",
    ] + (["validation survival %", "validation median (cm)"] if args.validation else [])
    validation_note = (
        f" The validation columns fly {args.validation} vehicles (reset seeds from "
        f"{VALIDATION_SEED}), apart from both held-out sets: a choice between students is made "
        "on them."
        if args.validation
        else ""
    )
    paths = "; ".join(f"{name}: `{path}`" for name, path in specs.items() if path is not None)
    body = f"""
{args.vehicles} held-out vehicles (reset seeds {FIRST_SEED}..{FIRST_SEED + args.vehicles - 1},
after the issue benchmark's 300), the protocol of section raptor_eval (teacher-MDP starts,
disturbances, PX4 input clipping, no velocity termination, 5 s); the same vehicles, starts and
disturbances for every policy. Final errors are over survivors. The two columns naming the
released policy pair each policy with it on the same vehicles: the sign test on the vehicles only
one of the two loses, and the difference of median final errors with a paired bootstrap
interval (2000 resamples of the vehicles).{validation_note} Checkpoints: {paths}. Flying them all
took {wall:.0f} s.

{table(header, rows)}
"""
    write_section(SECTION, "RAPTOR students vs the released policy on many held-out vehicles", body)


if __name__ == "__main__":
    main()
