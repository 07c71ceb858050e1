"""Diffusion denoisers: shapes, horizon rules, timestep forms, conditioning, gradients, fitting."""

from __future__ import annotations

import pytest
import torch

from robolearn.nets.denoisers import ConditionalUnet1D, MLPDenoiser, SinusoidalPosEmb

ACTION_DIM, COND_DIM = 2, 4


def tiny_unet(**kwargs) -> ConditionalUnet1D:
    torch.manual_seed(0)
    args = dict(down_dims=(16, 32, 64), kernel_size=3, step_embed_dim=16)
    return ConditionalUnet1D(ACTION_DIM, COND_DIM, **(args | kwargs))


def tiny_mlp(horizon: int = 8, **kwargs) -> MLPDenoiser:
    torch.manual_seed(0)
    args = dict(hidden=(64, 64), step_embed_dim=16)
    return MLPDenoiser(ACTION_DIM, horizon, COND_DIM, **(args | kwargs))


def inputs(batch: int, horizon: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, horizon, ACTION_DIM, generator=g), torch.randn(
        batch, COND_DIM, generator=g
    )


def test_sinusoidal_embedding_values_and_shape():
    emb = SinusoidalPosEmb(16)
    out = emb(torch.tensor([0.0, 1.0, 50.0]))
    assert out.shape == (3, 16)
    # t = 0: every sin is 0 and every cos is 1.
    assert torch.allclose(out[0, :8], torch.zeros(8)) and torch.allclose(out[0, 8:], torch.ones(8))
    assert not torch.allclose(out[1], out[2])
    with pytest.raises(ValueError, match="even"):
        SinusoidalPosEmb(7)


@pytest.mark.parametrize("horizon", [4, 8, 12, 16])
def test_unet_output_shape_for_valid_horizons(horizon):
    net = tiny_unet()
    sample, cond = inputs(3, horizon)
    assert net(sample, 10, cond).shape == (3, horizon, ACTION_DIM)


def test_unet_horizon_rule():
    assert ConditionalUnet1D.horizon_multiple((256, 512, 1024)) == 4
    assert ConditionalUnet1D.horizon_multiple((256,)) == 1
    net = tiny_unet()
    assert net.required_horizon_multiple == 4
    sample, cond = inputs(2, 10)
    with pytest.raises(ValueError, match=r"T=10 is not divisible by 4.*4, 8, 12"):
        net(sample, 1, cond)
    # One level never downsamples, so any horizon works.
    one_level = tiny_unet(down_dims=(16,))
    for horizon in (5, 7):
        sample, cond = inputs(2, horizon)
        assert one_level(sample, 1, cond).shape == (2, horizon, ACTION_DIM)


@pytest.mark.parametrize("make", [tiny_unet, tiny_mlp], ids=["unet", "mlp"])
def test_timestep_forms_agree(make):
    net = make().eval()
    sample, cond = inputs(3, 8)
    ref = net(sample, 7, cond)
    for t in (torch.tensor(7), torch.tensor(7.0), torch.tensor([7]), torch.full((3,), 7)):
        assert torch.allclose(net(sample, t, cond), ref, atol=1e-6)
    # The step matters, per sample.
    per_sample = net(sample, torch.tensor([7, 30, 90]), cond)
    assert torch.allclose(per_sample[0], ref[0], atol=1e-6)
    assert not torch.allclose(per_sample[1], ref[1], atol=1e-4)
    with pytest.raises(ValueError, match="timestep"):
        net(sample, torch.zeros(4), cond)


@pytest.mark.parametrize("make", [tiny_unet, tiny_mlp], ids=["unet", "mlp"])
def test_conditioning_matters_per_sample(make):
    net = make().eval()
    sample, cond = inputs(4, 8)
    out = net(sample, 5, cond)
    changed = cond.clone()
    changed[0] += 1.0
    out2 = net(sample, 5, changed)
    assert not torch.allclose(out2[0], out[0], atol=1e-4)
    # GroupNorm / no batch statistics: the other samples are untouched.
    assert torch.allclose(out2[1:], out[1:], atol=1e-6)
    with pytest.raises(ValueError, match="cond"):
        net(sample, 5, cond[:, :3])


@pytest.mark.parametrize("make", [tiny_unet, tiny_mlp], ids=["unet", "mlp"])
def test_gradients_reach_every_parameter(make):
    net = make()
    sample, cond = inputs(4, 8)
    weights = torch.randn(4, 8, ACTION_DIM, generator=torch.Generator().manual_seed(1))
    (net(sample, torch.tensor([1, 20, 50, 99]), cond) * weights).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_unet_without_cond_and_without_scale():
    torch.manual_seed(0)
    net = ConditionalUnet1D(ACTION_DIM, 0, down_dims=(16, 32), kernel_size=3, step_embed_dim=16)
    sample, _ = inputs(2, 8)
    assert net(sample, 3).shape == (2, 8, ACTION_DIM)
    bias_only = tiny_unet(cond_predict_scale=False)
    sample, cond = inputs(2, 8)
    assert bias_only(sample, 3, cond).shape == (2, 8, ACTION_DIM)
    # FiLM output width: 2 * channels with scale, channels without.
    assert tiny_unet().mid[0].cond_encoder[1].out_features == 128
    assert bias_only.mid[0].cond_encoder[1].out_features == 64


def test_unet_default_size_matches_diffusion_policy_low_dim():
    net = ConditionalUnet1D(action_dim=2, cond_dim=40)
    n_params = sum(p.numel() for p in net.parameters())
    # Measured: 65,783,298 (~66M), the size of DP's low-dim Push-T U-Net (down_dims 256/512/1024,
    # kernel 5, step embedding 256, FiLM scale); it changes only if the architecture does.
    assert 1_000_000 < n_params < 100_000_000
    assert n_params == 65_783_298


def test_mlp_denoiser_shape_and_horizon_check():
    net = tiny_mlp(horizon=8)
    sample, cond = inputs(3, 8)
    assert net(sample, 4, cond).shape == (3, 8, ACTION_DIM)
    bad, _ = inputs(3, 6)
    with pytest.raises(ValueError, match="horizon=8"):
        net(bad, 4, cond)
    normed = tiny_mlp(horizon=8, hidden=(32, 64, 64), layer_norm=True, activation="relu")
    assert normed(sample, 4, cond).shape == (3, 8, ACTION_DIM)
    with pytest.raises(ValueError, match="activation"):
        tiny_mlp(activation="swishy")


def overfit_ratio(net: torch.nn.Module, steps: int, lr: float) -> float:
    """First loss / last loss when regressing fixed random targets on one fixed batch."""
    g = torch.Generator().manual_seed(0)
    sample, cond = torch.randn(8, 8, ACTION_DIM, generator=g), torch.randn(8, COND_DIM, generator=g)
    t = torch.randint(0, 100, (8,), generator=g)
    target = torch.randn(8, 8, ACTION_DIM, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = (net(sample, t, cond) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0] / losses[-1]


def test_mlp_denoiser_overfits_a_batch():
    assert overfit_ratio(tiny_mlp(horizon=8), steps=200, lr=3e-3) > 10


def test_unet_overfits_a_batch():
    assert overfit_ratio(tiny_unet(down_dims=(16, 32)), steps=80, lr=3e-3) > 10
