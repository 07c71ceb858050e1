"""Pieces every training run shares: metric logging, crash-safe resumable checkpoints, EMA.

A run folder looks like::

    <run_dir>/
      config.yaml            the resolved config of the run
      tb/                    TensorBoard event files
      metrics.csv            every logged scalar, one row per log call
      checkpoints/latest/    a loadable policy checkpoint (load_policy works on it) plus
                             train_state.pt: optimiser, step and RNG states, for resuming
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.policy import Policy


class MetricLog:
    """Scalars to TensorBoard and to ``metrics.csv`` (so they survive without TensorBoard)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.csv_path = run_dir / "metrics.csv"

    def log(self, step: int, **scalars: float) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        new_file = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", "name", "value"])
            writer.writerows([step, name, float(value)] for name, value in scalars.items())

    def truncate_after(self, step: int, redone: Collection[tuple[int, str]] = ()) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats them from its checkpoint), and
        the rows ``(step, name)`` in ``redone``, which it logs again too."""
        if not self.csv_path.exists():
            return
        redone = {(int(s), name) for s, name in redone}
        with self.csv_path.open() as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if int(r["step"]) <= step and (int(r["step"]), r["name"]) not in redone
            ]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "name", "value"])
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        self.writer.close()


def read_metric(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """All logged (step, value) pairs of one scalar, read back from ``metrics.csv``."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    with path.open() as f:
        rows = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(f) if r["name"] == name]
    if not rows:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*rows)
    return np.asarray(steps), np.asarray(values)


class Checkpointer:
    """Saves a checkpoint as one directory, swapped in atomically.

    ``checkpoints/latest/`` holds a loadable policy checkpoint plus ``train_state.pt``
    (optimiser, scheduler, step, RNG states) from :meth:`save`, or whatever files :meth:`write`
    was given. A new checkpoint is written to a temporary directory and swapped in by renames,
    so a crash at any moment leaves either the previous or the new checkpoint whole: if the
    crash falls between the two renames, ``.latest.old`` is the previous one and
    :meth:`latest` falls back to it.
    """

    STATE_FILE = "train_state.pt"

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "checkpoints"
        self.policy_dir = self.dir / "latest"
        self._tmp = self.dir / ".latest.tmp"
        self._old = self.dir / ".latest.old"

    def write(self, fill: Callable[[Path], None]) -> None:
        """Swap in a new checkpoint whose files ``fill(directory)`` writes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        fill(self._tmp)
        shutil.rmtree(self._old, ignore_errors=True)
        if self.policy_dir.exists():
            os.replace(self.policy_dir, self._old)
        os.replace(self._tmp, self.policy_dir)
        shutil.rmtree(self._old, ignore_errors=True)

    def save(self, policy: Policy, state: dict[str, Any]) -> None:
        """Swap in ``policy``'s checkpoint with ``state`` beside it."""
        import torch

        def fill(directory: Path) -> None:
            policy.save(directory)
            torch.save(state, directory / self.STATE_FILE)

        self.write(fill)

    def latest(self) -> Path | None:
        """The directory of the last whole checkpoint, or None when there is none yet."""
        if not self.policy_dir.exists() and self._old.exists():
            os.replace(self._old, self.policy_dir)  # the crash fell between the two renames
        return self.policy_dir if self.policy_dir.exists() else None

    def load_state(self) -> dict[str, Any] | None:
        """The saved training state, or None when the run has no checkpoint yet."""
        import torch

        latest = self.latest()
        if latest is None or not (latest / self.STATE_FILE).exists():
            return None
        return torch.load(latest / self.STATE_FILE, map_location="cpu", weights_only=False)


class EMA:
    """Exponential moving average of a model's weights, kept in ``target`` (Diffusion Policy's).

    The decay warms up as ``1 - (1 + step) ** -power`` (0 at first, so the average starts at
    the trained weights) and is capped at ``max_decay``. Buffers are copied as they
    are. ``step`` is the number of updates so far; restore it when resuming.
    """

    def __init__(self, target: Any, power: float = 0.75, max_decay: float = 0.9999) -> None:
        self.target = target
        self.power = power
        self.max_decay = max_decay
        self.step = 0

    def decay(self) -> float:
        """The decay the next update uses."""
        # Diffusion Policy's EMAModel counts from one update late; both first updates copy.
        step = self.step - 1
        if step <= 0:
            return 0.0
        return min(1 - (1 + step) ** -self.power, self.max_decay)

    def update(self, model: Any) -> None:
        """Move ``target`` towards ``model``'s current weights."""
        import torch

        decay = self.decay()
        with torch.no_grad():
            for ema_param, param in zip(self.target.parameters(), model.parameters()):
                ema_param.lerp_(param.detach(), 1 - decay)
            for ema_buffer, buffer in zip(self.target.buffers(), model.buffers()):
                ema_buffer.copy_(buffer)
        self.step += 1
