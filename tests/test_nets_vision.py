"""Image encoder pieces: spatial-softmax keypoints, crops, input ranges, GroupNorm, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robolearn.nets.vision import ImageEncoder, SpatialSoftmax

IMAGE_SHAPE = (64, 64, 3)
CROP = (56, 56)


def tiny_encoder(**kwargs) -> ImageEncoder:
    torch.manual_seed(0)
    args = dict(feature_dim=16, channels=(16, 32), crop_shape=CROP, num_keypoints=8)
    return ImageEncoder(IMAGE_SHAPE, **(args | kwargs))


def random_images(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *IMAGE_SHAPE), generator=g, dtype=torch.uint8)


def test_spatial_softmax_finds_a_single_hot_pixel():
    height, width = 9, 13
    pool = SpatialSoftmax(in_channels=3, height=height, width=width, num_keypoints=3)
    with torch.no_grad():  # identity 1x1 conv: keypoint map k is input channel k
        pool.keypoint_conv.weight.copy_(torch.eye(3)[:, :, None, None])
        pool.keypoint_conv.bias.zero_()
    peaks = [(0, 0), (4, 6), (8, 12)]  # (row, col): top-left, centre, bottom-right
    features = torch.zeros(1, 3, height, width)
    for k, (row, col) in enumerate(peaks):
        features[0, k, row, col] = 50.0
    out = pool(features)
    assert out.shape == (1, 6)
    expected = torch.tensor([[-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]])  # x0, y0, x1, y1, x2, y2
    assert torch.allclose(out, expected, atol=1e-5)

    # An off-centre peak lands at its linspace coordinate; a flat map averages to the centre.
    features = torch.zeros(1, 3, height, width)
    features[0, 0, 2, 3] = 50.0
    out = pool(features)
    assert torch.allclose(out[0, :2], torch.tensor([-1 + 2 * 3 / 12, -1 + 2 * 2 / 8]), atol=1e-5)
    assert torch.allclose(out[0, 2:], torch.zeros(4), atol=1e-6)
    with pytest.raises(ValueError, match="9x13"):
        pool(torch.zeros(1, 3, 8, 13))


def test_encoder_shapes_for_frames_and_sequences():
    enc = tiny_encoder().eval()
    images = random_images(6)
    feats = enc(images)
    assert feats.shape == (6, 16)
    seq = enc(images.reshape(2, 3, *IMAGE_SHAPE))
    assert seq.shape == (2, 3, 16)
    assert torch.allclose(seq.reshape(6, 16), feats, atol=1e-6)
    with pytest.raises(ValueError, match="images must have shape"):
        enc(torch.zeros(2, 3, 64, 64))  # channels-first is rejected, not silently misread
    with pytest.raises(ValueError, match="larger than the image"):
        ImageEncoder(IMAGE_SHAPE, crop_shape=(65, 64))


def test_crop_windows_random_per_sample_in_train_and_centred_in_eval():
    enc = tiny_encoder()
    height, width = IMAGE_SHAPE[:2]
    # Pixel values encode their own (row, col), so a crop reveals where it was taken.
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    coded = torch.stack([rows, cols, torch.zeros_like(rows)], dim=-1)[None].repeat(32, 1, 1, 1)

    crops = enc.train()._crop(coded)
    assert crops.shape == (32, *CROP, 3)
    top, left = crops[:, 0, 0, 0], crops[:, 0, 0, 1]
    # Each crop is one contiguous window inside the image.
    assert (crops[..., 0] == top[:, None, None] + torch.arange(CROP[0])[None, :, None]).all()
    assert (crops[..., 1] == left[:, None, None] + torch.arange(CROP[1])[None, None, :]).all()
    assert top.min() >= 0 and top.max() <= height - CROP[0]
    assert left.min() >= 0 and left.max() <= width - CROP[1]
    assert len(set(zip(top.tolist(), left.tolist()))) > 10  # independent offsets per sample

    centre = enc.eval()._crop(coded)
    assert (centre[:, 0, 0, 0] == (height - CROP[0]) // 2).all()
    assert (centre[:, 0, 0, 1] == (width - CROP[1]) // 2).all()


def test_features_vary_in_train_mode_and_are_deterministic_in_eval():
    enc = tiny_encoder()
    same = random_images(1).repeat(8, 1, 1, 1)
    torch.manual_seed(1)
    with torch.no_grad():
        train_a, train_b = enc.train()(same), enc(same)
        eval_a, eval_b = enc.eval()(same), enc(same)
    assert not torch.allclose(train_a[0], train_a[1:], atol=1e-5)  # differs across samples
    assert not torch.allclose(train_a, train_b, atol=1e-5)  # and across calls
    assert torch.allclose(eval_a, eval_a[:1].expand_as(eval_a), atol=1e-6)
    assert torch.equal(eval_a, eval_b)


def test_uint8_and_float_inputs_give_the_same_features():
    enc = tiny_encoder().eval()
    images = random_images(4)
    assert torch.allclose(enc(images), enc(images.float() / 255.0), atol=1e-5)


def test_encoder_uses_group_norm_and_every_parameter_learns():
    enc = tiny_encoder().train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in enc.modules())
    weights = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    (enc(random_images(4)) * weights).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
