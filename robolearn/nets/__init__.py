"""Network building blocks shared by the methods."""

from robolearn.nets.mlp import MLP

__all__ = ["MLP"]
