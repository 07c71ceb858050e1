"""Per-key affine normalisation fitted on a dataset, for numpy arrays and torch tensors.

``normalize(x) = x * scale + offset`` per last-dim feature. Mode ``"limits"`` maps the fitted
[min, max] of every feature to [-1, 1]; a feature whose range is below ``range_eps`` is only
shifted so its minimum lands at 0 (it passes through centred instead of being blown up).
Mode ``"gaussian"`` maps mean/std to 0/1 (a std below ``range_eps`` counts as 1). These are
Diffusion Policy's LinearNormalizer conventions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

RANGE_EPS = 1e-4
_MODES = ("limits", "gaussian")
_STATS = ("scale", "offset", "min", "max", "mean", "std")


class Normalizer:
    """Per-key affine normaliser; mode 'limits' maps [min,max] -> [-1,1] (range_eps 1e-4:
    near-constant dims pass through centred), 'gaussian' is mean/std."""

    def __init__(self, stats: dict[str, dict[str, np.ndarray]], modes: dict[str, str]) -> None:
        self._stats = stats
        self._modes = modes
        # (key, device, dtype) -> (scale, offset) tensors, so torch calls do no host copies.
        self._torch_cache: dict[tuple[str, Any, Any], tuple[Any, Any]] = {}

    @classmethod
    def fit(
        cls, data: Mapping[str, np.ndarray], mode: str | Mapping[str, str] = "limits"
    ) -> Normalizer:
        """Fit every key of ``data``; statistics over all leading dims, per last-dim feature.

        ``mode`` is one mode for all keys or a per-key mapping (keys not in it use "limits").
        """
        stats: dict[str, dict[str, np.ndarray]] = {}
        modes: dict[str, str] = {}
        for key, value in data.items():
            key_mode = mode if isinstance(mode, str) else mode.get(key, "limits")
            if key_mode not in _MODES:
                raise ValueError(f"normalizer mode for {key!r} must be one of {_MODES}")
            x = np.asarray(value, dtype=np.float64)
            if x.size == 0:
                raise ValueError(f"cannot fit the normalizer on empty data for {key!r}")
            x = x.reshape(-1, 1) if x.ndim <= 1 else x.reshape(-1, x.shape[-1])
            lo, hi = x.min(axis=0), x.max(axis=0)
            mean, std = x.mean(axis=0), x.std(axis=0)
            if key_mode == "limits":
                rng = hi - lo
                flat = rng < RANGE_EPS
                scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, rng))
                offset = np.where(flat, -lo, -1.0 - scale * lo)
            else:
                safe_std = np.where(std < RANGE_EPS, 1.0, std)
                scale = 1.0 / safe_std
                offset = -mean / safe_std
            stats[key] = dict(scale=scale, offset=offset, min=lo, max=hi, mean=mean, std=std)
            modes[key] = key_mode
        return cls(stats, modes)

    @property
    def keys(self) -> list[str]:
        """The fitted keys, sorted."""
        return sorted(self._stats)

    @property
    def modes(self) -> dict[str, str]:
        """Mode of every key."""
        return dict(self._modes)

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """The fitted statistics of ``key`` (scale, offset, min, max, mean, std)."""
        return {k: v.copy() for k, v in self._params(key).items()}

    def _params(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._stats:
            raise KeyError(f"normalizer has no key {key!r} (keys: {self.keys})")
        return self._stats[key]

    def _affine(self, key: str, x: Any) -> tuple[Any, Any, Any]:
        """``x`` as a floating array/tensor plus scale and offset of matching type."""
        params = self._params(key)
        if isinstance(x, np.ndarray) or np.isscalar(x):
            x = np.asarray(x)
            if x.dtype.kind != "f":
                x = x.astype(np.float32)
            return x, params["scale"].astype(x.dtype), params["offset"].astype(x.dtype)
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"normalize expects a numpy array or torch tensor, got {type(x)}")
        if not x.is_floating_point():
            x = x.float()
        cache_key = (key, x.device, x.dtype)
        if cache_key not in self._torch_cache:
            self._torch_cache[cache_key] = tuple(
                torch.as_tensor(params[s], dtype=x.dtype, device=x.device)
                for s in ("scale", "offset")
            )
        scale, offset = self._torch_cache[cache_key]
        return x, scale, offset

    def normalize(self, key: str, x: Any) -> Any:
        """``x * scale + offset`` for ``key``; same type, device and (floating) dtype as ``x``;
        integer input comes back as float32."""
        x, scale, offset = self._affine(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Any) -> Any:
        """Inverse of :meth:`normalize`."""
        x, scale, offset = self._affine(key, x)
        return (x - offset) / scale

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``"key/stat"`` float64 arrays plus ``"key/mode"`` (the mode as UTF-8 bytes)."""
        state: dict[str, np.ndarray] = {}
        for key, params in self._stats.items():
            for stat in _STATS:
                state[f"{key}/{stat}"] = params[stat].copy()
            state[f"{key}/mode"] = np.frombuffer(self._modes[key].encode(), dtype=np.uint8).copy()
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Normalizer:
        """Rebuild from :meth:`state_dict` output (numpy arrays or torch tensors)."""
        stats: dict[str, dict[str, np.ndarray]] = {}
        modes: dict[str, str] = {}
        for name, value in state.items():
            key, _, stat = name.rpartition("/")
            if not key or stat not in (*_STATS, "mode"):
                raise KeyError(f"unexpected normalizer state entry {name!r}")
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if stat == "mode":
                modes[key] = value.astype(np.uint8).tobytes().decode()
            else:
                stats.setdefault(key, {})[stat] = value.astype(np.float64)
        for key in stats:
            missing = [s for s in _STATS if s not in stats[key]]
            if missing or key not in modes:
                raise KeyError(f"normalizer state for {key!r} lacks {missing or ['mode']}")
        return cls(stats, modes)

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file; the modes go in its metadata."""
        from safetensors.numpy import save_file

        tensors = {
            f"{key}/{stat}": np.ascontiguousarray(params[stat])
            for key, params in self._stats.items()
            for stat in _STATS
        }
        save_file(tensors, os.fspath(path), metadata={"modes": json.dumps(self._modes)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalizer:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="numpy") as f:
            modes = json.loads((f.metadata() or {}).get("modes", "{}"))
            state: dict[str, Any] = {name: f.get_tensor(name) for name in f.keys()}
        for key, mode in modes.items():
            state[f"{key}/mode"] = np.frombuffer(mode.encode(), dtype=np.uint8)
        return cls.from_state_dict(state)

    def __repr__(self) -> str:
        return f"Normalizer({', '.join(f'{k}: {m}' for k, m in self._modes.items())})"
