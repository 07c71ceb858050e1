"""Diffusion Policy (Chi et al., 2023): a denoiser that turns noise into an action chunk.

Read top to bottom:

* ``DiffusionConfig`` — horizons, network, noise schedule and training hyperparameters, with
  Diffusion Policy's conventions (To observation frames condition a Tp-step action prediction,
  of which Ta steps starting at index To - 1 are executed).
* ``NoiseSchedule`` — the DDPM forward process used in training and the deterministic DDIM
  sampler (eta = 0) that takes its initial noise as an argument: the hook DSRL steers.
* ``DiffusionPolicy`` — the Policy: observation history, normaliser, image encoders, denoiser,
  an action queue for ``act`` and ``act_chunk(obs, noise=None)`` for chunk-level control.
* ``train_diffusion`` — the training loop: windows from the SequenceSampler, epsilon-prediction
  MSE, AdamW with cosine warm-up, EMA weights (saved as the policy), validation, resumable
  checkpoints.

The schedule math is ours rather than diffusers' ``DDIMScheduler``: DSRL-NA decodes a batch of
noise at every gradient step, and the library's per-step Python overhead (~0.6 ms a step at
batch 256 on CPU, plus a 3 s import) would dominate that loop. ``tests/test_diffusion.py``
checks our sampler against ``DDIMScheduler`` step for step, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from robolearn.config_checks import FieldChecks
from robolearn.data.normalizer import Normalizer
from robolearn.data.sampler import SequenceSampler, split_episodes
from robolearn.nets.denoisers import ConditionalUnet1D, MLPDenoiser
from robolearn.nets.vision import ImageEncoder
from robolearn.policy import (
    NORMALIZER_FILE,
    WEIGHTS_FILE,
    Observation,
    TorchModelPolicy,
    as_dict,
)
from robolearn.training import EMA, Checkpointer, MetricLog
from robolearn.utils import progress_bar, seed_everything

DENOISERS = ("unet", "mlp")


@dataclasses.dataclass
class DiffusionConfig:
    """Everything that defines a diffusion policy and its training (``algo=diffusion``).

    Horizons follow Diffusion Policy: the policy conditions on ``obs_steps`` (To) frames,
    predicts ``horizon`` (Tp) actions and executes ``action_steps`` (Ta) of them, starting at
    the step of the latest observation, so ``action_steps <= horizon - obs_steps + 1``.
    Defaults are sized for CPU; Diffusion Policy's low-dim U-Net uses down_dims
    (256, 512, 1024) and step_embed_dim 256.
    """

    denoiser: str = "unet"
    obs_steps: int = 2
    horizon: int = 16
    action_steps: int = 8
    # U-Net denoiser
    down_dims: Sequence[int] = (64, 128, 256)
    kernel_size: int = 5
    step_embed_dim: int = 128
    # MLP denoiser
    mlp_hidden: Sequence[int] = (512, 512, 512)
    # image observations
    image_feature_dim: int = 64
    crop_shape: Sequence[int] | None = None
    # noise schedule and sampler
    train_timesteps: int = 100
    inference_steps: int = 8
    clip_sample: bool = True
    # training
    steps: int = 20000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    val_ratio: float = 0.05
    normalization: str = "limits"
    log_every: int = 200
    checkpoint_every: int = 2000

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.integers(
            "obs_steps",
            "horizon",
            "action_steps",
            "kernel_size",
            "step_embed_dim",
            "image_feature_dim",
            "train_timesteps",
            "inference_steps",
            "steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
        )
        check.integers("warmup_steps", minimum=0)
        check.choice("denoiser", DENOISERS)
        if self.action_steps > self.horizon - self.obs_steps + 1:
            check.fail(
                "action_steps",
                f"must be <= horizon - obs_steps + 1 = {self.horizon - self.obs_steps + 1} "
                "(executed actions start at the step of the latest observation)",
            )
        if self.inference_steps > self.train_timesteps:
            check.fail("inference_steps", f"must be <= train_timesteps ({self.train_timesteps})")
        check.widths("down_dims", "mlp_hidden")
        if self.denoiser == "unet":
            multiple = ConditionalUnet1D.horizon_multiple(self.down_dims)
            if self.horizon % multiple:
                check.fail(
                    "horizon",
                    f"must be a multiple of {multiple} for a U-Net with "
                    f"{len(self.down_dims)} levels (or use algo.denoiser=mlp)",
                )
        if self.crop_shape is not None and (
            len(self.crop_shape) != 2
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in self.crop_shape)
        ):
            check.fail("crop_shape", "must be null or [height, width]")
        check.numbers("weight_decay", "ema_power")
        check.positive("lr")
        if self.weight_decay < 0:
            check.fail("weight_decay", "must be >= 0")
        check.fraction("ema_max_decay")
        check.fraction("val_ratio")
        check.choice("normalization", ("limits", "gaussian"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (sequences as lists)."""
        return {
            k: list(v) if isinstance(v, (tuple, list)) else v
            for k, v in dataclasses.asdict(self).items()
        }


# ------------------------------------------------------------------------- noise schedule ---


class NoiseSchedule:
    """DDPM forward process and deterministic DDIM sampling, as configured in Diffusion Policy.

    Betas follow ``squaredcos_cap_v2`` (the cosine schedule of Nichol & Dhariwal, capped at
    0.999), the model predicts epsilon, and DDIM uses "leading" timestep spacing with
    ``set_alpha_to_one`` — diffusers' ``DDIMScheduler`` with Diffusion Policy's settings.
    """

    def __init__(self, train_timesteps: int = 100, clip_sample: bool = True) -> None:
        self.train_timesteps = int(train_timesteps)
        self.clip_sample = bool(clip_sample)

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        n = self.train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        # float32 cumulative product, as diffusers computes it, so both samplers agree exactly.
        self.alphas_cumprod = torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), 0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0): ``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` for per-sample steps t."""
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The ``steps`` denoising timesteps, from noisiest to cleanest."""
        ratio = self.train_timesteps // steps
        return [i * ratio for i in reversed(range(steps))]

    def ddim_sample(
        self,
        denoise: Any,
        noise: torch.Tensor,
        steps: int,
    ) -> torch.Tensor:
        """Run DDIM (eta = 0) from ``noise``; ``denoise(x, t) -> predicted epsilon``.

        Deterministic: the same noise always gives the same sample, which is what makes the
        noise a control input for DSRL.
        """
        ratio = self.train_timesteps // steps
        alphas = self.alphas_cumprod.tolist()
        x = noise
        for t in self.ddim_timesteps(steps):
            eps = denoise(x, t)
            a_t = alphas[t]
            a_prev = alphas[t - ratio] if t - ratio >= 0 else 1.0
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if self.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x

    def ddim_invert(
        self, denoise: Any, sample: torch.Tensor, steps: int, refine: int = 2
    ) -> torch.Tensor:
        """The noise that :meth:`ddim_sample` with the same ``steps`` maps to ``sample``.

        DDIM inversion: the sampler's updates run backwards, cleanest timestep first. Each
        update needs epsilon at the noisier point it is computing; the first guess takes it at
        the cleaner point (the usual approximation), and ``refine`` fixed-point iterations
        re-evaluate it at the new estimate, which removes most of the round-trip error. Where
        the sampler clipped its x0 prediction, no noise reproduces the sample exactly.
        """
        ratio = self.train_timesteps // steps
        alphas = self.alphas_cumprod.tolist()
        x = sample
        for t in reversed(self.ddim_timesteps(steps)):
            a_t = alphas[t]
            a_prev = alphas[t - ratio] if t - ratio >= 0 else 1.0
            guess = x
            for _ in range(1 + refine):
                eps = denoise(guess, t)
                x0 = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
                guess = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
            x = guess
        return x


# ------------------------------------------------------------------------------- network ---


class DiffusionModel(nn.Module):
    """Observation encoders plus the denoiser: ``forward(x_t, t, obs) -> predicted epsilon``.

    Low-dimensional observations (already normalised) are flattened over the To frames; each
    image key has its own CNN encoder whose features are flattened over the frames too. The
    concatenation is the denoiser's global conditioning.
    """

    def __init__(
        self,
        obs_shapes: Mapping[str, Sequence[int]],
        action_dim: int,
        cfg: DiffusionConfig,
    ) -> None:
        super().__init__()
        self.image_keys = [k for k, s in obs_shapes.items() if len(s) == 3]
        self.lowdim_keys = [k for k in obs_shapes if k not in self.image_keys]
        self.image_encoders = nn.ModuleDict(
            {
                key: ImageEncoder(
                    tuple(obs_shapes[key]),
                    feature_dim=cfg.image_feature_dim,
                    crop_shape=tuple(cfg.crop_shape) if cfg.crop_shape else None,
                )
                for key in self.image_keys
            }
        )
        per_frame = sum(int(np.prod(obs_shapes[k])) for k in self.lowdim_keys)
        per_frame += cfg.image_feature_dim * len(self.image_keys)
        self.cond_dim = cond_dim = per_frame * cfg.obs_steps
        if cfg.denoiser == "unet":
            self.denoiser: nn.Module = ConditionalUnet1D(
                action_dim,
                cond_dim,
                down_dims=tuple(cfg.down_dims),
                kernel_size=cfg.kernel_size,
                step_embed_dim=cfg.step_embed_dim,
            )
        else:
            self.denoiser = MLPDenoiser(
                action_dim,
                cfg.horizon,
                cond_dim,
                hidden=tuple(cfg.mlp_hidden),
                step_embed_dim=cfg.step_embed_dim,
            )

    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, cond_dim) from normalised low-dim (B, To, d) and raw image (B, To, H, W, C)."""
        batch = next(iter(obs.values())).shape[0]
        parts = [obs[k].reshape(batch, -1) for k in self.lowdim_keys]
        parts += [self.image_encoders[k](obs[k]).reshape(batch, -1) for k in self.image_keys]
        return torch.cat(parts, dim=-1)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor
    ) -> torch.Tensor:
        return self.denoiser(sample, timestep, cond)


# -------------------------------------------------------------------------------- policy ---


class ObservationHistory:
    """The last ``steps`` batched observations of ``keys``, stacked as (B, steps, ...).

    The first observation after ``reset`` fills the whole history, as the training sampler
    pads the start of an episode by repeating its first frame.
    """

    def __init__(self, keys: Sequence[str], steps: int) -> None:
        self.keys = list(keys)
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=steps)

    def reset(self) -> None:
        self._frames.clear()

    def push(self, obs: Observation) -> dict[str, np.ndarray]:
        """Append ``obs`` (batched) and return the stacked history."""
        obs = as_dict(obs)
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks keys {missing} this policy was trained on")
        frame = {k: np.asarray(obs[k]) for k in self.keys}
        if not self._frames:
            self._frames.extend([frame] * (self._frames.maxlen - 1))
        self._frames.append(frame)
        return {k: np.stack([f[k] for f in self._frames], axis=1) for k in self.keys}


class DiffusionPolicy(TorchModelPolicy):
    """A diffusion policy: To observations -> DDIM from noise -> Ta executed actions.

    ``act(obs)`` keeps a history of the last To observations and a queue of planned actions,
    re-planning every Ta steps (Diffusion Policy's receding horizon). ``act_chunk(obs, noise)``
    plans a chunk now, from ``noise`` when given (shape ``(B, *noise_shape)``), else from
    fresh Gaussian noise; it clears the action queue. ``condition`` and ``decode`` are the
    stateless torch maps (observation history -> conditioning, (conditioning, noise) -> chunk)
    that DSRL calls in its training loop.
    """

    policy_type = "diffusion"

    def __init__(
        self,
        obs_keys: Sequence[str],
        obs_shapes: Sequence[Sequence[int]],
        action_dim: int,
        config: DiffusionConfig | Mapping[str, Any],
        normalizer: Normalizer | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = config if isinstance(config, DiffusionConfig) else DiffusionConfig(**config)
        self.obs_keys = list(obs_keys)
        self.obs_shapes = {k: tuple(int(d) for d in s) for k, s in zip(self.obs_keys, obs_shapes)}
        self.action_dim = int(action_dim)
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.model = DiffusionModel(self.obs_shapes, self.action_dim, self.cfg).to(self.device)
        self.model.eval()
        self.schedule = NoiseSchedule(self.cfg.train_timesteps, self.cfg.clip_sample)
        #: DDIM steps at inference; change it to trade quality for latency.
        self.inference_steps = self.cfg.inference_steps
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._history = ObservationHistory(self.obs_keys, self.cfg.obs_steps)
        self._queue: deque[np.ndarray] = deque()

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one initial noise sample: (horizon, action_dim)."""
        return (self.cfg.horizon, self.action_dim)

    @property
    def obs_steps(self) -> int:
        return self.cfg.obs_steps

    @property
    def action_steps(self) -> int:
        return self.cfg.action_steps

    # --- stateless torch core ---------------------------------------------------------------

    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise the low-dim keys of an observation history; images pass through."""
        out = {}
        for key in self.obs_keys:
            x = obs[key]
            if key in self.model.lowdim_keys:
                x = x.float().reshape(*x.shape[:2], -1)
                if self.normalizer is not None:
                    x = self.normalizer.normalize(key, x)
            out[key] = x
        return out

    @torch.no_grad()
    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser's conditioning (B, cond_dim) for histories ``obs[key]`` of (B, To, ...).

        For state observations this is the normalised history, flattened; DSRL uses it as the
        state its noise actor sees.
        """
        return self.model.condition(self.normalize_obs(obs))

    @property
    def cond_dim(self) -> int:
        """Size of :meth:`condition`'s output."""
        return self.model.cond_dim

    @torch.no_grad()
    def decode(self, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Executed actions (B, Ta, Da) in [-1, 1]: DDIM from ``noise`` (B, Tp, Da).

        ``noise`` is the initial latent; None draws it from N(0, I) with the policy's own
        generator. Deterministic given the noise.
        """
        batch = cond.shape[0]
        if noise is None:
            noise = torch.randn(
                (batch, *self.noise_shape), generator=self._generator, device=self.device
            )
        elif tuple(noise.shape) != (batch, *self.noise_shape):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected {(batch, *self.noise_shape)}"
            )
        cond = cond.to(self.device).float()
        planned = self.schedule.ddim_sample(
            lambda x, t: self.model(x, t, cond), noise.to(self.device).float(), self.inference_steps
        )
        start = self.cfg.obs_steps - 1
        chunk = planned[:, start : start + self.cfg.action_steps]
        if self.normalizer is not None:
            chunk = self.normalizer.unnormalize("action", chunk)
        return chunk.clamp(-1.0, 1.0)

    @torch.no_grad()
    def invert(self, cond: torch.Tensor, planned: torch.Tensor) -> torch.Tensor:
        """Initial noise (B, Tp, Da) that DDIM decodes into ``planned`` (B, Tp, Da).

        ``planned`` is a whole prediction horizon in env action units (the To - 1 actions
        before the executed ones, the Ta executed ones, the rest after), for example cut from
        a demonstration. Approximate (:meth:`NoiseSchedule.ddim_invert`): check the decoded
        chunk against the one you wanted where it matters.
        """
        if tuple(planned.shape[1:]) != self.noise_shape:
            raise ValueError(
                f"planned actions have shape {tuple(planned.shape)}, expected (B, "
                f"{', '.join(map(str, self.noise_shape))})"
            )
        x0 = planned.to(self.device).float()
        if self.normalizer is not None:
            x0 = self.normalizer.normalize("action", x0)
        cond = cond.to(self.device).float()
        return self.schedule.ddim_invert(
            lambda x, t: self.model(x, t, cond), x0, self.inference_steps
        )

    def sample_chunk(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Executed actions (B, Ta, Da) for observation histories: ``decode(condition(obs))``."""
        return self.decode(self.condition(obs), noise)

    # --- Policy API -------------------------------------------------------------------------

    def reset(self, batch_size: int = 1) -> None:
        self._history.reset()
        self._queue.clear()

    def _observe(self, obs: Observation) -> dict[str, torch.Tensor]:
        """Push ``obs`` onto the history and return it stacked as (B, To, ...) tensors."""
        return {
            k: torch.as_tensor(v, device=self.device) for k, v in self._history.push(obs).items()
        }

    def act_chunk(self, obs: Observation, noise: np.ndarray | None = None) -> np.ndarray:
        """Plan Ta actions (B, Ta, Da) now, from ``noise`` (B, Tp, Da) or from fresh noise."""
        history = self._observe(obs)
        self._queue.clear()
        noise_t = None if noise is None else torch.as_tensor(np.asarray(noise), device=self.device)
        return self.sample_chunk(history, noise_t).cpu().numpy().astype(np.float32)

    def act(self, obs: Observation) -> np.ndarray:
        history = self._observe(obs)
        if not self._queue:
            chunk = self.sample_chunk(history).cpu().numpy().astype(np.float32)
            self._queue.extend(chunk.transpose(1, 0, 2))
        return self._queue.popleft()

    def config(self) -> dict[str, Any]:
        return {
            "obs_keys": self.obs_keys,
            "obs_shapes": [list(self.obs_shapes[k]) for k in self.obs_keys],
            "action_dim": self.action_dim,
            "config": self.cfg.to_dict(),
        }


# ------------------------------------------------------------------------------ training ---


def default_obs_keys(data: Mapping[str, np.ndarray], observation_keys: Sequence[str]) -> list[str]:
    """Every recorded observation key: low-dim state and (H, W, C) images."""
    return [k for k in observation_keys if k in data and data[k].ndim in (1, 2, 4)]


def train_diffusion(
    data: Mapping[str, np.ndarray],
    episode_ends: np.ndarray,
    obs_keys: Sequence[str],
    cfg: DiffusionConfig,
    run_dir: Path,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> DiffusionPolicy:
    """Train a DiffusionPolicy on ``data`` (DP layout) and return it with its EMA weights.

    Resumes from ``run_dir/checkpoints`` when a checkpoint is there.
    """
    rng = seed_everything(seed)
    obs_keys = list(obs_keys)
    if not obs_keys:
        raise ValueError("a diffusion policy needs at least one observation key")
    n_steps = len(data["action"])
    arrays = {k: np.asarray(data[k]) for k in [*obs_keys, "action"]}
    arrays = {k: v.reshape(n_steps, -1) if v.ndim == 1 else v for k, v in arrays.items()}
    lowdim = [k for k in [*obs_keys, "action"] if arrays[k].ndim == 2]
    checkpointer = Checkpointer(run_dir)
    state = checkpointer.load_state()
    normalizer = (
        Normalizer.load(checkpointer.policy_dir / NORMALIZER_FILE)
        if state is not None
        else Normalizer.fit({k: arrays[k] for k in lowdim}, mode=cfg.normalization)
    )
    policy = DiffusionPolicy(
        obs_keys,
        [arrays[k].shape[1:] for k in obs_keys],
        arrays["action"].shape[1],
        cfg,
        normalizer,
        device,
        seed,
    )
    model = copy.deepcopy(policy.model).train()  # trained weights; policy.model holds the EMA
    ema = EMA(policy.model, power=cfg.ema_power, max_decay=cfg.ema_max_decay)

    train_mask, val_mask = split_episodes(len(episode_ends), cfg.val_ratio, seed)

    def sampler(mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            arrays,
            episode_ends,
            horizon=cfg.horizon,
            pad_before=cfg.obs_steps - 1,
            pad_after=cfg.action_steps - 1,
            key_first_k={k: cfg.obs_steps for k in obs_keys},
            episode_mask=mask,
        )

    train_windows = sampler(train_mask)
    val_windows = sampler(val_mask) if val_mask.any() else None
    schedule = policy.schedule

    def loss_on(
        net: nn.Module, windows: dict[str, np.ndarray], gen: torch.Generator
    ) -> torch.Tensor:
        obs = {
            k: torch.as_tensor(windows[k][:, : cfg.obs_steps], device=policy.device)
            for k in obs_keys
        }
        action = torch.as_tensor(windows["action"], device=policy.device).float()
        target = normalizer.normalize("action", action)
        noise = torch.randn(target.shape, generator=gen, device=policy.device)
        t = torch.randint(
            0, cfg.train_timesteps, (len(target),), generator=gen, device=policy.device
        )
        cond = net.condition(policy.normalize_obs(obs))
        return nn.functional.mse_loss(net(schedule.add_noise(target, noise, t), t, cond), noise)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.95, 0.999), weight_decay=cfg.weight_decay
    )

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    log = MetricLog(run_dir)
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        policy.model.load_state_dict(
            load_file(str(checkpointer.policy_dir / WEIGHTS_FILE), device=str(policy.device))
        )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.step = state["ema_step"]
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_gen"])
        start_step = state["step"]
    log.truncate_after(start_step)

    def save(step: int) -> None:
        checkpointer.save(
            policy,
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema_step": ema.step,
                "numpy_rng": rng.bit_generator.state,
                "torch_gen": gen.get_state(),
            },
        )

    val_batch = (
        val_windows.windows(np.arange(min(len(val_windows), 2048)))
        if val_windows is not None
        else None
    )
    bar = progress_bar(cfg.steps, "train diffusion", progress, initial=start_step)
    for step in range(start_step, cfg.steps):
        loss = loss_on(model, train_windows.sample(cfg.batch_size, rng), gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update(model)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            scalars = {"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}
            if val_batch is not None:
                # A fixed generator: validation noise is the same at every evaluation.
                with torch.no_grad():
                    val_gen = torch.Generator(device=policy.device).manual_seed(seed + 1)
                    scalars["val/loss"] = loss_on(policy.model, val_batch, val_gen).item()
            log.log(step + 1, **scalars)
            bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
        bar.update(1)
    bar.close()
    log.close()
    policy.model.eval()
    return policy
