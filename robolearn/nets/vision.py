"""Image encoders for visuomotor policies.

Follows the recipe that Diffusion Policy (Chi et al.) and robomimic found to matter: GroupNorm
instead of BatchNorm (BatchNorm's running statistics do not survive EMA weight averaging), spatial
softmax pooling (keeps *where* features are, which a global average pool throws away), and random
crops during training with the centre crop at evaluation. The backbone is a small CNN rather than
DP's ResNet-18, sized for 64-128 px images on modest hardware.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    """Feature maps -> expected (x, y) image coordinates of learned keypoints.

    A 1x1 conv maps the C input channels to K keypoint maps; a softmax over the H*W pixels of each
    map gives a distribution whose mean position, in [-1, 1] (x left to right, y top to bottom), is
    the keypoint. Output (B, 2K) ordered x0, y0, x1, y1, ...
    """

    def __init__(self, in_channels: int, height: int, width: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.height, self.width, self.num_keypoints = height, width, num_keypoints
        self.keypoint_conv = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        # (H*W, 2) pixel coordinates; a constant, so a non-persistent buffer.
        self.register_buffer("pos", torch.stack([xs, ys], dim=-1).reshape(-1, 2), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"expected feature maps of size {self.height}x{self.width}, "
                f"got {tuple(features.shape[-2:])}"
            )
        maps = self.keypoint_conv(features).flatten(2)  # (B, K, H*W)
        attention = torch.softmax(maps, dim=-1)
        keypoints = attention @ self.pos  # (B, K, 2): expected (x, y) per keypoint
        return keypoints.flatten(1)


def _group_count(channels: int) -> int:
    """GroupNorm groups as in DP's BatchNorm swap (channels // 16), rounded to divide channels."""
    groups = max(1, channels // 16)
    while channels % groups:
        groups -= 1
    return groups


def _conv_out(size: int) -> int:
    """Spatial size after a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class ImageEncoder(nn.Module):
    """(B, H, W, C) or (B, T, H, W, C) images -> (B, feature_dim) or (B, T, feature_dim).

    Images may be uint8 in [0, 255] or float in [0, 1]. In training mode each image gets its own
    random ``crop_shape`` crop (augmentation); in eval mode the centre crop, so the network always
    sees the same size. Pixels are then scaled to [-1, 1] (as DP's image normaliser does). Each
    ``channels`` entry is a stage of a stride-2 conv and a stride-1 conv, each followed by
    GroupNorm and ReLU; spatial softmax pools the last stage and a Linear maps to ``feature_dim``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        feature_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        crop_shape: tuple[int, int] | None = None,
        num_keypoints: int = 32,
    ) -> None:
        super().__init__()
        height, width, in_channels = image_shape
        if crop_shape is not None and (crop_shape[0] > height or crop_shape[1] > width):
            raise ValueError(f"crop_shape {crop_shape} is larger than the image {height}x{width}")
        self.image_shape = (height, width, in_channels)
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None
        self.feature_dim = feature_dim

        layers: list[nn.Module] = []
        prev = in_channels
        h, w = self.crop_shape or (height, width)
        for c in channels:
            layers += [
                nn.Conv2d(prev, c, 3, stride=2, padding=1),
                nn.GroupNorm(_group_count(c), c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(_group_count(c), c),
                nn.ReLU(),
            ]
            prev = c
            h, w = _conv_out(h), _conv_out(w)
        self.backbone = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(prev, h, w, num_keypoints)
        self.head = nn.Linear(2 * num_keypoints, feature_dim)

    def _crop(self, images: torch.Tensor) -> torch.Tensor:
        """Crop (N, H, W, C) images to crop_shape: random per image when training, else centre."""
        if self.crop_shape is None:
            return images
        n, height, width = images.shape[:3]
        ch, cw = self.crop_shape
        if self.training:
            top = torch.randint(0, height - ch + 1, (n,), device=images.device)
            left = torch.randint(0, width - cw + 1, (n,), device=images.device)
            rows = top[:, None] + torch.arange(ch, device=images.device)  # (N, ch)
            cols = left[:, None] + torch.arange(cw, device=images.device)  # (N, cw)
            batch = torch.arange(n, device=images.device)[:, None, None]
            # One gather for the whole batch: (N, ch, cw, C).
            return images[batch, rows[:, :, None], cols[:, None, :]]
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, top : top + ch, left : left + cw]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() not in (4, 5) or tuple(images.shape[-3:]) != self.image_shape:
            raise ValueError(
                f"images must have shape (B, H, W, C) or (B, T, H, W, C) with (H, W, C) = "
                f"{self.image_shape}, got {tuple(images.shape)}"
            )
        lead = images.shape[:-3]
        x = self._crop(images.reshape(-1, *self.image_shape))  # crop first: fewer pixels to convert
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = x.permute(0, 3, 1, 2) * 2.0 - 1.0  # channels-first, [0, 1] -> [-1, 1]
        features = self.head(self.pool(self.backbone(x)))
        return features.reshape(*lead, self.feature_dim)
