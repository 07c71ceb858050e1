"""Pieces every training run shares: metric logging and crash-safe, resumable checkpoints.

A run folder looks like::

    <run_dir>/
      config.yaml            the resolved config of the run
      tb/                    TensorBoard event files
      metrics.csv            every logged scalar, one row per log call
      checkpoints/latest/    a loadable policy checkpoint (load_policy works on it)
      checkpoints/train_state.pt   optimiser, step and RNG states, for resuming
"""

from __future__ import annotations

import csv
import os
import shutil
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

    def history(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """All logged (step, value) pairs of one scalar, read back from ``metrics.csv``."""
        if not self.csv_path.exists():
            return np.zeros(0), np.zeros(0)
        with self.csv_path.open() as f:
            rows = [
                (int(r["step"]), float(r["value"])) for r in csv.DictReader(f) if r["name"] == name
            ]
        if not rows:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*rows)
        return np.asarray(steps), np.asarray(values)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats them from its checkpoint)."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "name", "value"])
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        self.writer.close()


class Checkpointer:
    """Saves policy and training state atomically: a crash mid-save keeps the last good one."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "checkpoints"
        self.policy_dir = self.dir / "latest"
        self.state_path = self.dir / "train_state.pt"

    def save(self, policy: Policy, state: dict[str, Any]) -> None:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp_policy = self.dir / ".latest.tmp"
        shutil.rmtree(tmp_policy, ignore_errors=True)
        policy.save(tmp_policy)
        tmp_state = self.dir / ".train_state.tmp"
        torch.save(state, tmp_state)
        # Swap the policy directory first, then the state: the state's step never runs ahead of
        # the policy it describes.
        old = self.dir / ".latest.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.policy_dir.exists():
            os.replace(self.policy_dir, old)
        os.replace(tmp_policy, self.policy_dir)
        os.replace(tmp_state, self.state_path)
        shutil.rmtree(old, ignore_errors=True)

    def load_state(self) -> dict[str, Any] | None:
        """The saved training state, or None when the run has no checkpoint yet."""
        import torch

        if not (self.state_path.exists() and self.policy_dir.exists()):
            return None
        return torch.load(self.state_path, map_location="cpu", weights_only=False)
