"""Network building blocks shared by the methods."""

from robolearn.nets.denoisers import ConditionalUnet1D, MLPDenoiser, SinusoidalPosEmb
from robolearn.nets.mlp import MLP
from robolearn.nets.vision import ImageEncoder, SpatialSoftmax

__all__ = [
    "MLP",
    "ConditionalUnet1D",
    "ImageEncoder",
    "MLPDenoiser",
    "SinusoidalPosEmb",
    "SpatialSoftmax",
]
