"""Fixed-length windows over episodes, with Diffusion Policy's edge padding, fully vectorised.

A window is described by the episode it lies in and its start relative to the episode start,
``rel`` in ``[-pad_before, length - horizon + pad_after]``. Frame ``t`` of the window is episode
frame ``clip(rel + t, 0, length - 1)``: positions before the episode start repeat its first
frame and positions past its end repeat its last one. This is exactly the set of windows and
the padding of Diffusion Policy's ``create_indices`` / ``sample_sequence``, computed with a
single gather per key instead of a Python loop per window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class SequenceSampler:
    """Windows of ``horizon`` frames inside each (selected) episode of in-memory data.

    ``data`` maps keys to arrays concatenated along time (e.g. ``EpisodeStore.load()``) and
    ``episode_ends`` are their cumulative exclusive episode ends. ``pad_before`` (usually
    To - 1) and ``pad_after`` (usually Ta - 1) let windows hang over the episode edges, which
    are filled by repeating the edge frames; both are clipped to ``[0, horizon - 1]``.
    ``key_first_k[key] = k`` fills only the first ``k`` frames of ``key`` (observations that
    the policy conditions on); later frames are irrelevant and set to NaN (floats) or 0.
    ``episode_mask`` (bool per episode) selects the episodes windows are drawn from.
    """

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        keys: Sequence[str] | None = None,
        key_first_k: Mapping[str, int] | None = None,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        if ends.ndim != 1 or np.any(np.diff(ends, prepend=0) < 0):
            raise ValueError("episode_ends must be a 1-D non-decreasing array")
        self.keys = list(data) if keys is None else list(keys)
        n_steps = int(ends[-1]) if len(ends) else 0
        for key in self.keys:
            if key not in data:
                raise KeyError(f"no data key {key!r} (keys: {list(data)})")
            if len(data[key]) < n_steps:
                raise ValueError(
                    f"data {key!r} has {len(data[key])} rows, episode_ends needs {n_steps}"
                )
        self.data = {k: data[k] for k in self.keys}
        self.key_first_k = dict(key_first_k or {})
        for key, k in self.key_first_k.items():
            if key not in self.data or not 1 <= k <= horizon:
                raise ValueError(
                    f"key_first_k[{key!r}] = {k}: needs a sampled key, 1 <= k <= horizon"
                )
        if episode_mask is None:
            episode_mask = np.ones(len(ends), dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != ends.shape:
            raise ValueError(
                f"episode_mask has shape {episode_mask.shape}, expected ({len(ends)},)"
            )
        self.horizon = int(horizon)
        self.pad_before = int(min(max(pad_before, 0), horizon - 1))
        self.pad_after = int(min(max(pad_after, 0), horizon - 1))

        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lengths = ends - starts
        # Window starts per episode run from -pad_before to length - horizon + pad_after.
        counts = np.maximum(lengths - self.horizon + self.pad_after + self.pad_before + 1, 0)
        counts[~episode_mask] = 0
        episode_of_window = np.repeat(np.arange(len(ends)), counts)
        first_window = np.cumsum(counts) - counts
        self._rel = (
            np.arange(len(episode_of_window), dtype=np.int64)
            - np.repeat(first_window, counts)
            - self.pad_before
        )
        self._episode = episode_of_window
        self._start = starts[episode_of_window]
        self._last = lengths[episode_of_window] - 1
        self._offsets = np.arange(self.horizon, dtype=np.int64)

    def __len__(self) -> int:
        """Number of windows."""
        return len(self._rel)

    @property
    def indices(self) -> np.ndarray:
        """(n_windows, 4) int64 in Diffusion Policy's format:
        ``buffer_start, buffer_end, sample_start, sample_end``."""
        rel, start = self._rel, self._start
        length = self._last + 1
        buffer_start = np.maximum(rel, 0) + start
        buffer_end = np.minimum(rel + self.horizon, length) + start
        sample_start = buffer_start - (rel + start)
        sample_end = self.horizon - ((rel + self.horizon + start) - buffer_end)
        return np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1)

    @property
    def window_episodes(self) -> np.ndarray:
        """The episode index of every window."""
        return self._episode.copy()

    def frame_indices(self, window_idx: np.ndarray) -> np.ndarray:
        """(len(window_idx), horizon) rows of the data that make up the given windows."""
        window_idx = np.asarray(window_idx, dtype=np.int64)
        rel = self._rel[window_idx, None] + self._offsets
        np.clip(rel, 0, self._last[window_idx, None], out=rel)
        return rel + self._start[window_idx, None]

    def windows(self, window_idx: np.ndarray) -> dict[str, np.ndarray]:
        """The given windows, each key stacked as (len(window_idx), horizon, ...)."""
        rows = self.frame_indices(window_idx)
        out = {}
        for key in self.keys:
            arr = self.data[key]
            k = self.key_first_k.get(key)
            if k is None or k == self.horizon:
                out[key] = arr[rows]
                continue
            batch = np.empty((len(rows), self.horizon, *arr.shape[1:]), dtype=arr.dtype)
            batch[:, :k] = arr[rows[:, :k]]
            batch[:, k:] = np.nan if arr.dtype.kind in "fc" else 0
            out[key] = batch
        return out

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        """Window ``idx`` as (horizon, ...) arrays."""
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"window {idx} out of range for {n} windows")
        return {k: v[0] for k, v in self.windows(np.array([idx % n])).items()}

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` window indices drawn uniformly with replacement."""
        if len(self) == 0:
            raise ValueError("no windows to sample: every selected episode is too short")
        return rng.integers(0, len(self), size=batch_size)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random batch of windows, each key as (batch_size, horizon, ...)."""
        return self.windows(self.sample_indices(batch_size, rng))


def split_episodes(
    n_episodes: int, val_ratio: float, seed: int, max_train_episodes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train_mask, val_mask) over episodes, as Diffusion Policy splits them.

    ``round(n_episodes * val_ratio)`` episodes (at least one when ``val_ratio > 0``, and never
    all of them) go to validation; then, if ``max_train_episodes`` is set, the training
    episodes are subsampled to at most that many. Deterministic given ``seed``.
    """
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        rng = np.random.default_rng(seed)
        val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train_mask = ~val_mask
    if max_train_episodes is not None and train_mask.sum() > max_train_episodes:
        train_idx = np.flatnonzero(train_mask)
        rng = np.random.default_rng(seed)
        keep = train_idx[rng.choice(len(train_idx), size=int(max_train_episodes), replace=False)]
        train_mask = np.zeros(n_episodes, dtype=bool)
        train_mask[keep] = True
    return train_mask, val_mask
