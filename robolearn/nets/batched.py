"""Networks for many independent agents trained at once: one weight tensor, one matmul.

``BatchedLinear`` holds N independent linear layers as an (N, in, out) tensor and applies them
with one batched matmul, so N small networks (one RL teacher per sampled robot) train as fast
as one wide network instead of N Python-level models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robolearn.nets.mlp import ACTIVATIONS


class BatchedLinear(nn.Module):
    """N independent linear layers: x (N, B, in) -> (N, B, out)."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # nn.Linear's default initialisation, drawn independently for each of the N layers.
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class BatchedMLP(nn.Sequential):
    """N independent MLPs evaluated together: x (N, B, in) -> (N, B, out)."""

    def __init__(
        self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [BatchedLinear(n, a, b), ACTIVATIONS[activation]()]
        layers.append(BatchedLinear(n, dims[-1], out_dim))
        super().__init__(*layers)
