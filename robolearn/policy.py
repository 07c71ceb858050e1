"""The Policy protocol and the checkpoint format.

Every policy, learned or scripted, simulated or deployed, speaks the same small API:

* ``reset(batch_size=1)`` before each batch of episodes (recurrent policies clear their state);
* ``act(obs) -> action``: batched numpy in and out, leading batch dimension, actions in [-1, 1];
* chunked generative policies also offer ``act_chunk(obs, noise=None)``;
* ``save(dir)`` / ``load_policy(dir)``: a self-describing checkpoint directory.

A checkpoint directory holds ``policy.json`` (the class to load with, its config and format
version), ``model.safetensors`` (weights) and ``normalizer.safetensors`` (statistics), so it
loads without the run's hydra config: ``load_policy(path)`` reads ``policy.json``, imports the
named class and calls its ``load``. ``pretrained:<name>`` in place of a directory names a
checkpoint that ships inside the package (``robolearn/pretrained/<name>``, with its evaluation
report), e.g. ``load_policy("pretrained:quadrotor")``.
"""

from __future__ import annotations

import abc
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

Observation = dict[str, np.ndarray] | np.ndarray

#: Observation key under which a flat ``Box`` observation is stored and seen by policies.
FLAT_OBS_KEY = "obs"

CHECKPOINT_FORMAT_VERSION = 1
POLICY_FILE = "policy.json"
WEIGHTS_FILE = "model.safetensors"
#: ``pretrained:<name>`` names the checkpoint shipped in ``PRETRAINED_DIR / <name>``.
PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
NORMALIZER_FILE = "normalizer.safetensors"


class Policy(abc.ABC):
    """Base class of every policy. Subclasses implement ``act``; savable ones ``save``/``load``."""

    #: Short name written into checkpoints, e.g. ``"bc_mlp"``.
    policy_type: str = "policy"

    def reset(self, batch_size: int = 1) -> None:  # noqa: B027 - stateless policies need nothing
        """Start new episodes for ``batch_size`` parallel envs. Stateless policies do nothing."""

    @abc.abstractmethod
    def act(self, obs: Observation) -> np.ndarray:
        """Map a batch of observations (leading batch dim) to a batch of actions in [-1, 1]."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, written to ``policy.json``."""
        return {}

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint directory that ``load_policy`` can read back. Returns its path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_policy_file(path, type(self), self.config())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Policy:
        """Rebuild the policy from a checkpoint directory written by ``save``.

        ``device`` places learned weights; scripted policies ignore it.
        """
        return cls(**read_policy_file(path)["config"])


class TorchModelPolicy(Policy):
    """A policy whose learned state is one torch module, ``self.model``, plus an optional
    ``self.normalizer``; its constructor takes ``config()``'s keys, ``normalizer`` and ``device``.
    Saves and loads both next to ``policy.json``."""

    model: Any
    normalizer: Any
    device: Any

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = super().save(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        if self.normalizer is not None:
            self.normalizer.save(path / NORMALIZER_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Policy:
        from safetensors.torch import load_file

        from robolearn.data.normalizer import Normalizer

        path = Path(path)
        config = read_policy_file(path)["config"]
        normalizer_file = path / NORMALIZER_FILE
        normalizer = Normalizer.load(normalizer_file) if normalizer_file.exists() else None
        policy = cls(**config, normalizer=normalizer, device=device)
        policy.model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=str(policy.device)))
        return policy


def write_policy_file(path: Path, cls: type, config: dict[str, Any]) -> None:
    """Write ``policy.json`` naming the class that loads this checkpoint."""
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "type": getattr(cls, "policy_type", cls.__name__),
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": config,
    }
    (path / POLICY_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself, or a shipped ``pretrained:<name>``."""
    text = str(path)
    if not text.startswith(PRETRAINED_PREFIX):
        return Path(path)
    name = text[len(PRETRAINED_PREFIX) :]
    directory = PRETRAINED_DIR / name
    if not name or not (directory / POLICY_FILE).is_file():
        shipped = sorted(p.parent.name for p in PRETRAINED_DIR.glob(f"*/{POLICY_FILE}"))
        raise FileNotFoundError(
            f"no pretrained policy {name!r}; shipped: {', '.join(shipped) or 'none'}"
        )
    return directory


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """Read and validate ``policy.json`` of a checkpoint directory."""
    path = resolve_checkpoint(path)
    file = path / POLICY_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"policy checkpoint not found: {path} is not a directory")
    if not file.is_file():
        raise FileNotFoundError(f"not a policy checkpoint: {file} is missing")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupted policy checkpoint: {file}: {err}") from err
    version = meta.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{file}: checkpoint format version {version!r} is not supported "
            f"(this robolearn reads version {CHECKPOINT_FORMAT_VERSION})"
        )
    return meta


def as_dict(obs: Observation) -> dict[str, np.ndarray]:
    """Observations as a dict: a flat array becomes ``{FLAT_OBS_KEY: array}``."""
    return obs if isinstance(obs, dict) else {FLAT_OBS_KEY: obs}


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """Load any policy from its checkpoint directory (or ``pretrained:<name>``), without the
    config of the run that made it."""
    path = resolve_checkpoint(path)
    meta = read_policy_file(path)
    module_name, _, qualname = meta["class"].partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"{path}: policy class {meta['class']} cannot be imported: {err}"
        ) from err
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    return obj.load(path, device=device)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
