"""Behaviour cloning: an MLP from observations to actions, regressed on an EpisodeStore.

Read top to bottom: ``MLPPolicy`` is the policy (normalise observations, MLP, unnormalise
actions); ``train_bc`` is the whole training loop (fit normalisers, sample minibatches, MSE,
Adam, periodic validation and checkpoints, resume from the last checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from robolearn.config_checks import FieldChecks
from robolearn.data.normalizer import Normalizer
from robolearn.data.sampler import split_episodes
from robolearn.nets.mlp import ACTIVATIONS, MLP
from robolearn.policy import (
    NORMALIZER_FILE,
    WEIGHTS_FILE,
    Observation,
    TorchModelPolicy,
    as_dict,
)
from robolearn.training import Checkpointer, MetricLog
from robolearn.utils import progress_bar, seed_everything


@dataclasses.dataclass
class BCConfig:
    """Hyperparameters of behaviour cloning (the ``algo=bc`` config group mirrors these)."""

    hidden: Sequence[int] = (256, 256, 256)
    activation: str = "relu"
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    val_ratio: float = 0.05
    normalization: str = "limits"
    log_every: int = 100
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.integers("steps", "batch_size", "log_every", "checkpoint_every")
        check.numbers("weight_decay")
        check.positive("lr")
        if self.weight_decay < 0:
            check.fail("weight_decay", "must be >= 0")
        check.fraction("val_ratio")
        check.widths("hidden")
        check.choice("activation", sorted(ACTIVATIONS))
        check.choice("normalization", ("limits", "gaussian"))


class MLPPolicy(TorchModelPolicy):
    """Observation keys -> normalised, concatenated features -> MLP -> action in [-1, 1]."""

    policy_type = "bc_mlp"

    def __init__(
        self,
        obs_keys: Sequence[str],
        obs_dims: Sequence[int],
        action_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "relu",
        normalizer: Normalizer | None = None,
        device: str = "cpu",
    ) -> None:
        self.obs_keys = list(obs_keys)
        self.obs_dims = [int(d) for d in obs_dims]
        self.action_dim = int(action_dim)
        self.hidden = [int(h) for h in hidden]
        self.activation = activation
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.model = MLP(sum(self.obs_dims), self.hidden, self.action_dim, activation).to(
            self.device
        )

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observation keys, flattened and concatenated: (B, sum(obs_dims))."""
        parts = []
        for key in self.obs_keys:
            x = obs[key].float().reshape(obs[key].shape[0], -1)
            parts.append(self.normalizer.normalize(key, x) if self.normalizer else x)
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        obs = as_dict(obs)
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks keys {missing} this policy was trained on")
        self.model.eval()
        tensors = {
            k: torch.as_tensor(np.asarray(obs[k]), device=self.device) for k in self.obs_keys
        }
        action = self.model(self.features(tensors))
        if self.normalizer is not None:
            action = self.normalizer.unnormalize("action", action)
        return action.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {
            "obs_keys": self.obs_keys,
            "obs_dims": self.obs_dims,
            "action_dim": self.action_dim,
            "hidden": self.hidden,
            "activation": self.activation,
        }


def default_obs_keys(data: dict[str, np.ndarray], observation_keys: Sequence[str]) -> list[str]:
    """Low-dimensional observation keys (images need an encoder, which an MLP policy lacks)."""
    return [k for k in observation_keys if k in data and data[k].ndim <= 2]


def train_bc(
    data: dict[str, np.ndarray],
    episode_ends: np.ndarray,
    obs_keys: Sequence[str],
    cfg: BCConfig,
    run_dir: Path,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> MLPPolicy:
    """Train an MLPPolicy on ``data`` (arrays concatenated along time, DP layout) and return it.

    Resumes from ``run_dir/checkpoints`` when a checkpoint is there, so an interrupted run
    continues where it stopped.
    """
    rng = seed_everything(seed)
    obs_keys = list(obs_keys)
    if not obs_keys:
        raise ValueError("behaviour cloning needs at least one low-dimensional observation key")
    n_steps = len(data["action"])
    flat = {k: data[k].reshape(n_steps, -1).astype(np.float32) for k in [*obs_keys, "action"]}
    checkpointer = Checkpointer(run_dir)
    state = checkpointer.load_state()
    # A resumed run keeps the statistics its weights were trained with, even if the store grew.
    normalizer = (
        Normalizer.load(checkpointer.policy_dir / NORMALIZER_FILE)
        if state is not None
        else Normalizer.fit(flat, mode=cfg.normalization)
    )
    policy = MLPPolicy(
        obs_keys,
        [flat[k].shape[1] for k in obs_keys],
        flat["action"].shape[1],
        cfg.hidden,
        cfg.activation,
        normalizer,
        device,
    )

    # Split by episode (never by step) so validation frames do not leak from training episodes.
    train_mask, val_mask = split_episodes(len(episode_ends), cfg.val_ratio, seed)
    starts = np.concatenate([[0], episode_ends[:-1]])
    step_episode = np.repeat(np.arange(len(episode_ends)), episode_ends - starts)
    train_rows = np.flatnonzero(train_mask[step_episode])
    val_rows = np.flatnonzero(val_mask[step_episode])
    tensors = {k: torch.as_tensor(v, device=policy.device) for k, v in flat.items()}

    def loss_on(rows: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(rows, device=policy.device)
        batch = {k: v[index] for k, v in tensors.items()}
        target = normalizer.normalize("action", batch["action"])
        return torch.nn.functional.mse_loss(policy.model(policy.features(batch)), target)

    optimizer = torch.optim.AdamW(
        policy.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    # Closed-form cosine decay: a resumed run with a different algo.steps follows the new schedule.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    log = MetricLog(run_dir)
    start_step = 0
    if state is not None:
        weights = load_file(str(checkpointer.policy_dir / WEIGHTS_FILE), device=str(policy.device))
        policy.model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        start_step = state["step"]
    log.truncate_after(start_step)  # rows after the checkpoint are logged again

    def save(step: int) -> None:
        checkpointer.save(
            policy,
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
        )

    bar = progress_bar(cfg.steps, "train bc", progress, initial=start_step)
    for step in range(start_step, cfg.steps):
        policy.model.train()
        loss = loss_on(rng.choice(train_rows, size=cfg.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            scalars = {"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}
            if len(val_rows):
                policy.model.eval()
                with torch.no_grad():
                    scalars["val/loss"] = loss_on(val_rows[:4096]).item()
            log.log(step + 1, **scalars)
            bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
        bar.update(1)
    bar.close()
    log.close()
    return policy
