"""Denoising networks for diffusion policies: eps(noisy action chunk, diffusion step, condition).

``ConditionalUnet1D`` follows the temporal U-Net of Diffusion Policy (Chi et al., RSS 2023;
real-stanford/diffusion_policy): actions are the channels of a 1-D convolution over the horizon,
and the diffusion step and the observation features condition every residual block through FiLM.
``MLPDenoiser`` is the small flat alternative (as DPPO's DiffusionMLP, which DSRL uses) for
low-dimensional tasks, where it trains and samples several times faster than the U-Net.

Both take ``sample`` (B, T, action_dim), ``timestep`` (a python number, a 0-d tensor or a (B,)
tensor) and ``cond`` (B, cond_dim), and return a (B, T, action_dim) tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robolearn.nets.mlp import ACTIVATIONS


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar per sample: (B,) -> (B, dim).

    The first half of the output is sin, the second cos, at frequencies spaced geometrically from 1
    down to 1/10000, so nearby diffusion steps get similar embeddings and distant ones do not.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"dim must be an even number >= 4, got {dim}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(torch.arange(half) * (-math.log(10000.0) / (half - 1)))
        # A buffer follows .to(device) but is not a parameter; not saved, since it is a constant.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def _timesteps(
    timestep: torch.Tensor | int | float, batch: int, device: torch.device
) -> torch.Tensor:
    """Any accepted timestep form -> a float (B,) tensor on ``device``."""
    t = torch.as_tensor(timestep, device=device)
    if t.dim() == 0:
        t = t[None]
    if t.dim() != 1 or t.shape[0] not in (1, batch):
        raise ValueError(
            f"timestep must be a number, a 0-d tensor or a ({batch},) tensor, "
            f"got shape {tuple(t.shape)}"
        )
    # Float so that integer steps and continuous times (e.g. flow matching) share one path.
    return t.float().expand(batch)


def _check_cond(cond: torch.Tensor | None, batch: int, cond_dim: int) -> None:
    if cond_dim == 0:
        if cond is not None and cond.numel() != 0:
            raise ValueError("this denoiser was built with cond_dim=0; pass cond=None")
        return
    if cond is None or cond.shape != (batch, cond_dim):
        got = None if cond is None else tuple(cond.shape)
        raise ValueError(f"cond must have shape ({batch}, {cond_dim}), got {got}")


def _step_encoder(dim: int, hidden: int) -> nn.Sequential:
    """Diffusion-step embedding as in Diffusion Policy: sinusoidal -> Linear -> Mish -> Linear."""
    return nn.Sequential(
        SinusoidalPosEmb(dim), nn.Linear(dim, hidden), nn.Mish(), nn.Linear(hidden, dim)
    )


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length-preserving (odd kernel, 'same' padding)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int
    ) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM conditioning between them and a residual connection.

    The condition predicts a per-channel scale and bias (``cond_predict_scale``) or only a bias,
    applied to the first block's output; a 1x1 conv matches channels on the residual path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int,
        n_groups: int,
        cond_predict_scale: bool,
    ) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        film_dim = 2 * out_channels if cond_predict_scale else out_channels
        # Mish first: the step embedding's last layer is linear, so this is its activation.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual_conv: nn.Module = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.block1(x)
        film = self.cond_encoder(cond)[..., None]  # (B, film_dim, 1): same for every time step
        if self.cond_predict_scale:
            scale, bias = film[:, : self.out_channels], film[:, self.out_channels :]
            out = scale * out + bias
        else:
            out = out + film
        out = self.block2(out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's temporal U-Net over an action chunk, FiLM-conditioned on step and cond.

    Levels ``down_dims``: each has two residual blocks, then a stride-2 conv halving the horizon
    (except the deepest level); two middle blocks; the up path concatenates the skip of the same
    resolution, applies two residual blocks and a ConvTranspose1d doubling the horizon. As upstream,
    the up path has ``len(down_dims) - 1`` levels (every one upsamples, undoing the
    ``len(down_dims) - 1`` downsamples), so the finest skip is never read. The horizon T must
    therefore be a multiple of ``2 ** (len(down_dims) - 1)``; see :meth:`horizon_multiple`.
    No local_cond branch: robolearn conditions only on global features.
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 256,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        if bad := [d for d in down_dims if d % n_groups]:
            raise ValueError(
                f"every down_dims entry must be divisible by n_groups={n_groups}: {bad}"
            )
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd to keep the horizon length, got {kernel_size}"
            )
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.down_dims = down_dims
        self.required_horizon_multiple = self.horizon_multiple(down_dims)

        self.step_encoder = _step_encoder(step_embed_dim, 4 * step_embed_dim)
        film_in = step_embed_dim + cond_dim

        def res(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, film_in, kernel_size, n_groups, cond_predict_scale
            )

        dims = [action_dim, *down_dims]
        levels = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            deepest = i == len(levels) - 1
            resample = nn.Identity() if deepest else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), resample]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):
            # Input is the deeper features concatenated with the same-resolution skip (c_out each).
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * c_out, c_in), res(c_in, c_in), upsample]))
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    @staticmethod
    def horizon_multiple(down_dims: Sequence[int]) -> int:
        """The horizon must be a multiple of this: one factor 2 per downsampling level."""
        return 2 ** (len(down_dims) - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if sample.dim() != 3 or sample.shape[-1] != self.action_dim:
            raise ValueError(
                f"sample must have shape (B, T, {self.action_dim}), got {tuple(sample.shape)}"
            )
        batch, horizon = sample.shape[:2]
        m = self.required_horizon_multiple
        if horizon % m:
            raise ValueError(
                f"horizon T={horizon} is not divisible by {m} = 2**(len(down_dims)-1) for "
                f"down_dims={self.down_dims}; use T in {m}, {2 * m}, {3 * m}, ... "
                f"(e.g. {m * max(1, math.ceil(horizon / m))})"
            )
        _check_cond(cond, batch, self.cond_dim)

        features = self.step_encoder(_timesteps(timestep, batch, sample.device))
        if cond is not None and self.cond_dim:
            features = torch.cat([features, cond], dim=-1)

        x = sample.transpose(1, 2)  # (B, action_dim, T): actions are channels
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, features), features)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, features)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, features), features))
        return self.final(x).transpose(1, 2)


class _PreActResidual(nn.Module):
    """x + Linear(act(norm(x))): pre-activation keeps an identity path through deep stacks."""

    def __init__(self, in_dim: int, out_dim: int, activation: str, layer_norm: bool) -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(in_dim) if layer_norm else nn.Identity()
        self.act = ACTIVATIONS[activation]()
        self.linear = nn.Linear(in_dim, out_dim)
        self.skip: nn.Module = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.linear(self.act(self.norm(x)))


class MLPDenoiser(nn.Module):
    """Flat MLP denoiser for low-dim diffusion policies (in the spirit of DPPO's DiffusionMLP).

    Input is [flattened (T, action_dim) sample, step embedding, cond]; a Linear lifts it to
    ``hidden[0]``, each further width is a pre-activation residual layer, and a final activation
    and Linear give the (T * action_dim) output. ``hidden`` counts hidden widths as in ``MLP``.
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        hidden: Sequence[int] = (512, 512, 512),
        step_embed_dim: int = 64,
        activation: str = "mish",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not hidden:
            raise ValueError("hidden must name at least one width")
        self.action_dim = action_dim
        self.horizon = horizon
        self.cond_dim = cond_dim
        self.step_encoder = _step_encoder(step_embed_dim, 2 * step_embed_dim)
        in_dim = horizon * action_dim + step_embed_dim + cond_dim
        self.input = nn.Linear(in_dim, hidden[0])
        self.blocks = nn.Sequential(
            *(
                _PreActResidual(a, b, activation, layer_norm)
                for a, b in zip(hidden[:-1], hidden[1:])
            )
        )
        self.head = nn.Sequential(
            nn.LayerNorm(hidden[-1]) if layer_norm else nn.Identity(),
            ACTIVATIONS[activation](),
            nn.Linear(hidden[-1], horizon * action_dim),
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        expected = (self.horizon, self.action_dim)
        if sample.dim() != 3 or tuple(sample.shape[1:]) != expected:
            raise ValueError(
                f"sample must have shape (B, {self.horizon}, {self.action_dim}) "
                f"(horizon={self.horizon} is fixed at construction), got {tuple(sample.shape)}"
            )
        batch = sample.shape[0]
        _check_cond(cond, batch, self.cond_dim)
        parts = [
            sample.reshape(batch, -1),
            self.step_encoder(_timesteps(timestep, batch, sample.device)),
        ]
        if cond is not None and self.cond_dim:
            parts.append(cond)
        out = self.head(self.blocks(self.input(torch.cat(parts, dim=-1))))
        return out.view(batch, self.horizon, self.action_dim)
