"""The imperfection model shared by the scripted experts: a teleoperator's kind of noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from robolearn.policy import Policy


class NoisyExpert(Policy):
    """Base of scripted experts with a ``noise`` knob and a reproducible noise stream.

    ``perturb_motion`` adds temporally correlated noise of standard deviation ``noise`` to the
    translation (an AR(1) process with correlation 0.8 per step) and, with probability
    ``0.15 * noise`` per step, replaces it by a random move. It returns the random generator, so
    subclasses draw their gripper errors from the same stream.
    """

    def __init__(self, task: str, noise: float = 0.0, seed: int = 0) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.task = task
        self.noise = float(noise)
        self.seed = int(seed)
        self._resets = 0
        self.reset()

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "noise": self.noise, "seed": self.seed}

    def reset(self, batch_size: int = 1) -> None:
        """Restart the noise state for ``batch_size`` episodes.

        The k-th reset after construction reseeds the noise stream with ``(seed, k)``, so a
        fresh expert with the same seed reproduces the same noisy demonstrations, while
        successive batches of episodes still get different noise.
        """
        self._rng = np.random.default_rng([self.seed, self._resets])
        self._resets += 1
        self._drift = np.zeros((batch_size, 3))

    def perturb_motion(self, action: np.ndarray) -> np.random.Generator:
        """Add drift and wrong moves to ``action[:, :3]`` in place; return the noise stream."""
        batch = len(action)
        if self._drift.shape[0] != batch:
            self._drift = np.zeros((batch, 3))
        rng, rho = self._rng, 0.8
        self._drift = rho * self._drift + np.sqrt(1 - rho**2) * self.noise * rng.normal(
            size=(batch, 3)
        )
        action[:, :3] += self._drift
        wrong = rng.random(batch) < 0.15 * self.noise
        action[wrong, :3] = rng.uniform(-1.0, 1.0, (int(wrong.sum()), 3))
        return rng
