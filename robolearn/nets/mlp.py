"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish, "tanh": nn.Tanh, "elu": nn.ELU}


class MLP(nn.Sequential):
    """Linear layers with an activation between them (none after the last), optional LayerNorm."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        activation: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
