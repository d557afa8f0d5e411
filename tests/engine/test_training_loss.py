"""The training objective against independent computations: logistic losses, R1, path length, style
mixing, lazy-regularisation gains, metrics, and a few optimiser steps on tiny StyleGAN2/3 networks."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from engine.networks.discriminator import Discriminator
from engine.networks.stylegan2 import Generator as Generator2
from engine.networks.stylegan3 import Generator as Generator3
from engine.training.augment import AugmentPipe, augment_preset
from engine.training.loss import (StyleGANLoss, blur, disk_mask, path_length_penalty, preset_loss_kwargs,
                                  r1_penalty, rotate_images, rotation_equivariance_penalty, style_mix,
                                  turn_transforms)

Z = 16


def tiny_g2(seed: int = 0, resolution: int = 16) -> Generator2:
    torch.manual_seed(seed)
    return Generator2(z_dim=Z, c_dim=0, w_dim=16, img_resolution=resolution, img_channels=3, channel_base=128,
                      channel_max=16, num_fp16_res=0)


def tiny_g3(seed: int = 0) -> Generator3:
    torch.manual_seed(seed)
    return Generator3(z_dim=Z, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                      channel_max=16, num_layers=4, num_fp16_res=0)


def tiny_d(seed: int = 1) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                         num_fp16_res=0)


def batch(n: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand([n, 3, 16, 16], generator=g) * 2 - 1
    return real, torch.zeros([n, 0]), torch.randn([n, Z], generator=g), torch.zeros([n, 0])


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def zero_grads(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


def softplus_ref(t: torch.Tensor) -> torch.Tensor:
    """log(1 + e^t) in float64, written out (not F.softplus)."""
    return torch.log1p(torch.exp(t.double()))


# ---- non-saturating logistic losses ----------------------------------------------------------


class ConstD(nn.Module):
    """D(img) = known logits (a parameter) + 0 * img: the losses' values and gradients are closed-form."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits)[:, None])

    def forward(self, img, c, update_emas=False):
        return self.logits + 0 * img.sum(dim=[1, 2, 3], keepdim=True)


def test_d_logistic_loss_on_known_logits():
    G, D = tiny_g2(), ConstD([-2.0, -0.5, 0.0, 3.0])
    loss = StyleGANLoss(G, D, r1_gamma=0, style_mixing_prob=0, pl_weight=0)
    real, real_c, z, c = batch()
    m = loss.accumulate_gradients("Dmain", real, real_c, z, c, gain=1, cur_nimg=0)
    t = D.logits.detach().double().flatten()
    # Fake and real passes both see the same constant logits t.
    assert m["loss/D_fake"] == pytest.approx(softplus_ref(t).mean().item(), rel=1e-6)
    assert m["loss/D_real"] == pytest.approx(softplus_ref(-t).mean().item(), rel=1e-6)
    assert m["loss/D"] == pytest.approx((softplus_ref(t) + softplus_ref(-t)).mean().item(), rel=1e-6)
    # d/dt [softplus(t) + softplus(-t)] / N = (sigmoid(t) - sigmoid(-t)) / N
    expected = (torch.sigmoid(t) - torch.sigmoid(-t)) / 4
    assert torch.allclose(D.logits.grad.double().flatten(), expected, atol=1e-7)
    assert all(p.grad is None for p in G.parameters())


def test_g_logistic_loss_on_known_logits():
    G, D = tiny_g2(), ConstD([-1.0, 0.25, 2.0, 4.0])
    loss = StyleGANLoss(G, D, r1_gamma=0, style_mixing_prob=0, pl_weight=0)
    real, real_c, z, c = batch()
    m = loss.accumulate_gradients("Gmain", real, real_c, z, c, gain=1, cur_nimg=0)
    t = D.logits.detach().double().flatten()
    assert m["loss/G"] == pytest.approx(softplus_ref(-t).mean().item(), rel=1e-6)
    assert m["scores/fake"] == pytest.approx(t.mean().item(), rel=1e-6)
    assert m["signs/fake"] == pytest.approx(0.5)
    assert D.logits.grad is None                       # D is not trained in a G phase


def test_g_and_d_losses_match_an_independent_autograd_computation_on_real_networks():
    G, D = tiny_g2(), tiny_d()
    loss = StyleGANLoss(G, D, r1_gamma=0, style_mixing_prob=0, pl_weight=0)
    real, real_c, z, c = batch()
    torch.manual_seed(5)
    m = loss.accumulate_gradients("Gmain", real, real_c, z, c, gain=3, cur_nimg=0)
    got = grads(G)
    zero_grads(G, D)
    torch.manual_seed(5)                                # same synthesis noise
    logits = D(G(z, c), c)
    ref = softplus_ref(-logits).mean().float() * 3
    expected = torch.autograd.grad(ref, list(G.parameters()), allow_unused=True)
    assert m["loss/G"] == pytest.approx(ref.item() / 3, rel=1e-5)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b if b is not None else torch.zeros_like(a), rtol=1e-4, atol=1e-6)

    zero_grads(G, D)
    torch.manual_seed(6)
    m = loss.accumulate_gradients("Dmain", real, real_c, z, c, gain=1, cur_nimg=0)
    got = grads(D)
    zero_grads(G, D)
    torch.manual_seed(6)
    with torch.no_grad():
        fake = G(z, c)
    ref = softplus_ref(D(fake, c)).mean() + softplus_ref(-D(real, real_c)).mean()
    expected = torch.autograd.grad(ref.float(), list(D.parameters()))
    assert m["loss/D"] == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


# ---- R1 -----------------------------------------------------------------------------------------


class SmoothD(nn.Module):
    """A tiny float64 discriminator with smooth activations and batch coupling, for finite differences."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()
        self.fc = nn.Linear(4 * 6 * 6 + 1, 1).double()

    def forward(self, img, c, update_emas=False):
        x = torch.tanh(self.conv(img)).flatten(1)               # [N, 144]
        std = x.std(dim=0).mean().expand(x.shape[0], 1)         # like minibatch std: couples the batch
        return self.fc(torch.cat([x, std], dim=1))


def test_r1_matches_finite_differences_in_float64():
    D = SmoothD()
    x = torch.randn([2, 3, 6, 6], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    penalty, logits = r1_penalty(D, x, None)
    assert penalty.shape == (2,) and logits.shape == (2, 1)
    eps, flat = 1e-5, x.flatten()
    fd = torch.empty_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            d = torch.zeros_like(flat)
            d[i] = eps
            fd[i] = (D((flat + d).view_as(x), None).sum() - D((flat - d).view_as(x), None).sum()) / (2 * eps)
    expected = fd.view_as(x).square().sum(dim=[1, 2, 3])
    assert torch.allclose(penalty.detach(), expected, rtol=1e-7)


def test_r1_on_the_real_discriminator_matches_a_directional_difference():
    D = tiny_d()
    x = batch()[0]
    penalty, _ = r1_penalty(D, x, None)
    norm = penalty.sum().sqrt().item()                         # ||grad_x sum D|| over the batch
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(xx, None).sum(), xx)
    u, eps = g / g.norm(), 1e-2
    with torch.no_grad():
        slope = (D(x + eps * u, None).sum() - D(x - eps * u, None).sum()).item() / (2 * eps)
    assert slope == pytest.approx(norm, rel=5e-3)


def test_r1_in_the_loss_is_gamma_over_two_times_the_penalty_and_scales_with_gain():
    G, D = tiny_g2(), tiny_d()
    real, real_c, z, c = batch()
    loss = StyleGANLoss(G, D, r1_gamma=4.0, style_mixing_prob=0, pl_weight=0)
    m1 = loss.accumulate_gradients("Dreg", real, real_c, z, c, gain=1, cur_nimg=0)
    g1 = grads(D)
    penalty, _ = r1_penalty(D, real, real_c)
    assert m1["loss/r1"] == pytest.approx(penalty.mean().item(), rel=1e-5)
    expected = torch.autograd.grad(penalty.mean() * 2.0, list(D.parameters()), allow_unused=True)
    for a, b in zip(g1, expected):
        assert torch.allclose(a, b if b is not None else torch.zeros_like(a), rtol=1e-4, atol=1e-7)
    zero_grads(D)
    loss.accumulate_gradients("Dreg", real, real_c, z, c, gain=16, cur_nimg=0)
    for a, b in zip(grads(D), g1):
        assert torch.allclose(a, 16 * b, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in G.parameters())


def test_r1_backpropagates_through_augmentation():
    G, D = tiny_g2(), tiny_d()
    pipe = AugmentPipe(**augment_preset("bgc"))
    pipe.p.fill_(0.8)
    loss = StyleGANLoss(G, D, augment_pipe=pipe, r1_gamma=1.0, style_mixing_prob=0, pl_weight=0)
    real, real_c, z, c = batch()
    m = loss.accumulate_gradients("Dboth", real, real_c, z, c, gain=1, cur_nimg=0)
    assert math.isfinite(m["loss/r1"]) and m["loss/r1"] > 0
    assert all(torch.isfinite(g).all() for g in grads(D)) and sum(g.abs().sum() for g in grads(D)) > 0


# ---- path length ------------------------------------------------------------------------------


class SmoothSynthesis(nn.Module):
    """ws [N, 3, 4] -> img [N, 3, 5, 5] in float64, smooth, for finite differences."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(12, 75).double()

    def forward(self, ws, **kwargs):
        return torch.tanh(self.lin(ws.flatten(1))).view(-1, 3, 5, 5)


class SmoothG(nn.Module):
    def __init__(self):
        super().__init__()
        self.synthesis = SmoothSynthesis()


def jty_by_finite_differences(synthesis, ws: torch.Tensor, y: torch.Tensor, eps: float, **kwargs) -> torch.Tensor:
    """J^T y per image [N, num_ws, w_dim] from central differences of <y, synthesis(ws)>, all in one batch."""
    n, num_ws, w_dim = ws.shape
    basis = torch.eye(num_ws * w_dim, dtype=ws.dtype).view(-1, num_ws, w_dim) * eps        # [K, L, D]
    with torch.no_grad():
        plus = synthesis((ws[:, None] + basis).flatten(0, 1), **kwargs).view(n, len(basis), *y.shape[1:])
        minus = synthesis((ws[:, None] - basis).flatten(0, 1), **kwargs).view(n, len(basis), *y.shape[1:])
    return ((plus - minus) * y[:, None]).sum(dim=[2, 3, 4]).view(n, num_ws, w_dim) / (2 * eps)


def test_path_length_matches_finite_differences_in_float64_and_updates_the_mean():
    G = SmoothG()
    ws = torch.randn([3, 3, 4], dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y = torch.randn([3, 3, 5, 5], dtype=torch.float64, generator=torch.Generator().manual_seed(9)) / 5
    pl = path_length_penalty(G, ws, torch.tensor(0.5, dtype=torch.float64), pl_decay=0.1, noise=y)
    jty = jty_by_finite_differences(G.synthesis, ws, y, eps=1e-6)
    lengths = jty.square().sum(dim=2).mean(dim=1).sqrt()       # root mean over layers of |J_l^T y|^2
    assert torch.allclose(pl.lengths.detach(), lengths, rtol=1e-7)
    new_mean = 0.5 + 0.1 * (lengths.mean() - 0.5)
    assert pl.pl_mean.item() == pytest.approx(new_mean.item(), rel=1e-7)
    assert torch.allclose(pl.penalty.detach(), (lengths - new_mean).square(), rtol=1e-6)


def test_path_length_on_a_real_stylegan2_matches_finite_differences():
    G = tiny_g2(resolution=8)
    ws = G.mapping(torch.randn([2, Z], generator=torch.Generator().manual_seed(10)), None).detach()
    y = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(11)) / 8
    pl = path_length_penalty(G, ws, torch.tensor(0.0), noise=y, noise_mode="const")
    jty = jty_by_finite_differences(G.synthesis, ws, y, eps=1e-3, noise_mode="const")
    lengths = jty.square().sum(dim=2).mean(dim=1).sqrt()
    assert torch.allclose(pl.lengths.detach(), lengths, rtol=1e-2)


def test_path_length_phase_updates_pl_mean_and_scales_with_gain():
    G, D = tiny_g2(), tiny_d()
    real, real_c, z, c = batch()
    loss = StyleGANLoss(G, D, style_mixing_prob=0, pl_weight=2, pl_batch_shrink=4, pl_decay=0.01)
    loss.pl_mean.fill_(0.5)
    torch.manual_seed(12)
    m = loss.accumulate_gradients("Greg", real, real_c, z, c, gain=1, cur_nimg=0)
    length = m["pl/length"]                             # one image (4 // pl_batch_shrink)
    assert m["pl/mean"] == pytest.approx(0.5 + 0.01 * (length - 0.5), rel=1e-6)
    assert loss.pl_mean.item() == pytest.approx(m["pl/mean"], rel=1e-6)
    assert m["loss/pl"] == pytest.approx((length - m["pl/mean"]) ** 2, rel=1e-4)
    g1 = grads(G)
    assert sum(g.abs().sum() for g in g1) > 0 and all(p.grad is None for p in D.parameters())
    zero_grads(G)
    loss.pl_mean.fill_(0.5)
    torch.manual_seed(12)
    loss.accumulate_gradients("Greg", real, real_c, z, c, gain=4, cur_nimg=0)
    for a, b in zip(grads(G), g1):
        assert torch.allclose(a, 4 * b, rtol=1e-4, atol=1e-7)
    assert loss.state_dict()["pl_mean"].item() == pytest.approx(m["pl/mean"], rel=1e-6)


# ---- style mixing -------------------------------------------------------------------------------


def test_style_mixing_takes_the_later_layers_from_a_second_latent():
    G = tiny_g2()
    z = torch.randn([64, Z], generator=torch.Generator().manual_seed(13))
    ws = G.mapping(z, None)
    torch.manual_seed(14)
    mixed, cutoff = style_mix(G, ws, z, None, prob=0.5)
    num_ws = G.num_ws
    was_mixed = cutoff < num_ws
    assert 10 < was_mixed.sum() < 54 and (cutoff >= 1).all()
    for i in range(64):
        k = int(cutoff[i])
        assert torch.equal(mixed[i, :k], ws[i, :k])               # own latent before the cutoff
        if k < num_ws:
            second = mixed[i, k:]
            assert torch.equal(second, second[:1].expand_as(second))  # one other w after it
            assert not torch.allclose(second[0], ws[i, 0])
    assert len(set(cutoff[was_mixed].tolist())) == num_ws - 1       # every cutoff 1 .. num_ws-1 occurs
    same, none = style_mix(G, ws, z, None, prob=0.0)
    assert same is ws and (none == num_ws).all()


def test_style_mixing_changes_what_run_g_renders():
    G, D = tiny_g2(), tiny_d()
    z = torch.randn([8, Z])
    plain = StyleGANLoss(G, D, style_mixing_prob=0)
    mixing = StyleGANLoss(G, D, style_mixing_prob=1)
    with torch.no_grad():
        _, ws_plain = plain.run_G(z, None)
        _, ws_mixed = mixing.run_G(z, None)
    assert torch.equal(ws_plain[:, 0], ws_mixed[:, 0])
    assert not torch.equal(ws_plain[:, -1], ws_mixed[:, -1])


# ---- phases, metrics, blur ------------------------------------------------------------------------


@pytest.mark.parametrize("phase,keys", [
    ("Gmain", {"loss/G", "scores/fake", "signs/fake"}),
    ("Greg", {"loss/pl", "pl/length", "pl/mean"}),
    ("Gboth", {"loss/G", "scores/fake", "signs/fake", "loss/pl", "pl/length", "pl/mean"}),
    ("Dmain", {"loss/D", "loss/D_fake", "loss/D_real", "scores/fake", "signs/fake", "scores/real", "signs/real"}),
    ("Dreg", {"loss/r1", "scores/real", "signs/real"}),
    ("Dboth", {"loss/D", "loss/D_fake", "loss/D_real", "loss/r1", "scores/fake", "signs/fake", "scores/real",
               "signs/real"}),
])
def test_metrics_of_each_phase(phase, keys):
    G, D = tiny_g2(), tiny_d()
    loss = StyleGANLoss(G, D)
    real, real_c, z, c = batch()
    m = loss.accumulate_gradients(phase, real, real_c, z, c, gain=1, cur_nimg=0)
    assert set(m) == keys
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    trained, other = (G, D) if phase.startswith("G") else (D, G)
    assert any(p.grad is not None for p in trained.parameters())
    assert all(p.grad is None for p in other.parameters())
    assert all(p.requires_grad for p in list(G.parameters()) + list(D.parameters()))   # restored
    if phase.startswith("D"):
        assert loss.last_real_logits is not None and loss.last_real_logits.shape == (4, 1)


def test_disabled_regularisers_skip_their_phases_and_real_logits_accumulate():
    G, D = tiny_g2(), tiny_d()
    loss = StyleGANLoss(G, D, r1_gamma=0, pl_weight=0)
    real, real_c, z, c = batch()
    assert loss.accumulate_gradients("Greg", real, real_c, z, c, gain=4, cur_nimg=0) == {}
    assert loss.accumulate_gradients("Dreg", real, real_c, z, c, gain=16, cur_nimg=0) == {}
    assert all(p.grad is None for p in list(G.parameters()) + list(D.parameters()))
    assert "loss/pl" not in loss.accumulate_gradients("Gboth", real, real_c, z, c, gain=1, cur_nimg=0)
    loss.accumulate_gradients("Dmain", real, real_c, z, c, gain=1, cur_nimg=0)
    loss.accumulate_gradients("Dboth", real, real_c, z, c, gain=1, cur_nimg=0)
    assert loss.last_real_logits.shape == (8, 1)       # both D phases' reals, for AdaController
    with pytest.raises(ValueError, match="Gboth"):
        loss.accumulate_gradients("G", real, real_c, z, c, gain=1, cur_nimg=0)


def test_blur_fades_out_and_preserves_flat_images():
    loss = StyleGANLoss(tiny_g2(), tiny_d(), blur_init_sigma=10, blur_fade_kimg=2)
    assert [loss.blur_sigma(n) for n in (0, 1000, 2000, 5000)] == [10, 5, 0, 0]
    assert StyleGANLoss(tiny_g2(), tiny_d(), blur_init_sigma=10).blur_sigma(0) == 0   # no fade: no blur
    flat = torch.full([1, 3, 32, 32], 0.25)
    assert torch.allclose(blur(flat, 2.0)[..., 8:-8, 8:-8], flat[..., 8:-8, 8:-8], atol=1e-6)
    noisy = torch.randn([1, 3, 32, 32])
    assert blur(noisy, 2.0).std() < 0.5 * noisy.std()
    assert torch.equal(blur(noisy, 0.0), noisy)


def test_preset_loss_kwargs_follow_nvidia_train_py():
    assert preset_loss_kwargs("stylegan2", 32) == dict(style_mixing_prob=0.9, pl_weight=2, pl_no_weight_grad=True)
    assert preset_loss_kwargs("stylegan3-r", 64)["blur_fade_kimg"] == 400
    assert "blur_init_sigma" not in preset_loss_kwargs("stylegan3-t", 64)  # NVIDIA blurs for R only
    assert preset_loss_kwargs("stylegan3-r", 32)["pl_weight"] == 0
    with pytest.raises(ValueError):
        preset_loss_kwargs("stylegan1", 32)


# ---- smoke: a few optimiser steps ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["stylegan2", "stylegan3-t"])
def test_a_few_training_steps_give_finite_losses_and_move_the_weights(family):
    G = tiny_g2() if family == "stylegan2" else tiny_g3()
    D = tiny_d()
    pipe = AugmentPipe(**augment_preset("bgc"))
    pipe.p.fill_(0.3)
    loss = StyleGANLoss(G, D, augment_pipe=pipe, r1_gamma=1.0, **preset_loss_kwargs(family, 4))
    opt_g = torch.optim.Adam(G.parameters(), lr=0.002, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99), eps=1e-8)
    g0, d0 = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    phases = [("Gmain", opt_g, G, 1), ("Greg", opt_g, G, 4), ("Dmain", opt_d, D, 1), ("Dreg", opt_d, D, 16)]
    torch.manual_seed(15)
    seen: dict[str, float] = {}
    for step in range(2):
        real, real_c, z, c = batch(seed=20 + step)
        for name, opt, module, gain in phases:
            opt.zero_grad(set_to_none=True)
            m = loss.accumulate_gradients(name, real, real_c, z, c, gain=gain, cur_nimg=step * 4)
            opt.step()
            seen.update(m)
    assert all(math.isfinite(v) for v in seen.values())
    assert {"loss/G", "loss/D", "loss/r1"} <= set(seen)
    assert ("loss/pl" in seen) == (family == "stylegan2")
    assert all(torch.isfinite(p).all() for p in list(G.parameters()) + list(D.parameters()))
    assert any(not torch.equal(v, G.state_dict()[k]) for k, v in g0.items() if k.endswith("weight"))
    assert any(not torch.equal(v, D.state_dict()[k]) for k, v in d0.items() if k.endswith("weight"))
    if family == "stylegan2":   # Dmain ran G with update_emas: w_avg follows the batches
        assert not torch.equal(g0["mapping.w_avg"], G.mapping.w_avg)


def test_conditional_networks_train_with_labels():
    torch.manual_seed(16)
    G = Generator2(z_dim=Z, c_dim=3, w_dim=16, img_resolution=16, img_channels=3, channel_base=128,
                   channel_max=16, num_fp16_res=0)
    D = Discriminator(c_dim=3, img_resolution=16, img_channels=3, channel_base=128, channel_max=16, num_fp16_res=0)
    loss = StyleGANLoss(G, D, r1_gamma=1.0)
    real, _, z, _ = batch()
    c = torch.eye(3)[[0, 1, 2, 0]]
    for phase in ("Gboth", "Dboth"):
        m = loss.accumulate_gradients(phase, real, c, z, c, gain=1, cur_nimg=0)
        assert all(math.isfinite(v) for v in m.values())
    assert G.mapping.embed.weight.grad is not None and D.mapping.embed.weight.grad is not None


# ----------------------------------------------------------------------------------------------
# Rotation equivariance (StyleGAN3)


def test_rotate_images_turns_counter_clockwise_as_displayed():
    img = torch.rand([2, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    # numpy's rot90 turns an array counter-clockwise as displayed (rows downwards).
    for k, degrees in ((1, 90.0), (2, 180.0), (3, 270.0)):
        turned = rotate_images(img, torch.full([2], degrees))
        assert torch.allclose(turned, torch.rot90(img, k, dims=(2, 3)), atol=1e-5), degrees
    assert torch.allclose(rotate_images(img, torch.zeros([2])), img, atol=1e-6)
    # A bright dot right of the centre goes up (smaller row) for +90 degrees.
    dot = torch.zeros([1, 1, 9, 9])
    dot[0, 0, 4, 7] = 1
    assert rotate_images(dot, torch.tensor([90.0]))[0, 0].argmax() == 1 * 9 + 4


def test_disk_mask_keeps_what_a_turn_keeps_in_frame():
    m = disk_mask(16)
    assert m.shape == (1, 1, 16, 16) and m[0, 0, 8, 8] == 1 and m[0, 0, 0, 0] == 0 and m[0, 0, 8, 1] == 1
    assert abs(float(m.mean()) - math.pi * 0.45 ** 2) < 0.05


def test_equivariance_penalty_is_zero_without_a_turn_and_training_on_it_lowers_it():
    G = tiny_g3()
    z = torch.randn([4, Z], generator=torch.Generator().manual_seed(3))
    degrees = torch.tensor([0.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        ws = G.mapping(z, None)
        assert float(rotation_equivariance_penalty(G, ws, G.synthesis(ws), degrees).max()) < 1e-10
    degrees = torch.tensor([90.0, 45.0, 180.0, 270.0])
    opt = torch.optim.Adam(G.synthesis.parameters(), lr=0.01)

    def penalty() -> torch.Tensor:
        ws = G.mapping(z, None).detach()
        return rotation_equivariance_penalty(G, ws, G.synthesis(ws), degrees).mean()

    before = float(penalty().detach())
    for _ in range(15):
        opt.zero_grad()
        penalty().backward()
        opt.step()
    assert before > 0 and float(penalty().detach()) < 0.5 * before


@pytest.mark.parametrize("turn_fakes", [False, True])
def test_g_main_adds_the_weighted_equivariance_term_and_reports_it(turn_fakes):
    G, D = tiny_g3(), tiny_d()
    real, real_c, z, c = batch()
    plain = StyleGANLoss(G, D, r1_gamma=1, turn_fakes=turn_fakes, **preset_loss_kwargs("stylegan3-t", 4))
    torch.manual_seed(5)
    m = plain.accumulate_gradients("Gmain", real, real_c, z, c, gain=1, cur_nimg=0)
    assert "loss/eq" not in m
    g_plain = grads(G)
    zero_grads(G, D)
    torch.manual_seed(5)
    eq = StyleGANLoss(G, D, r1_gamma=1, eq_rot_weight=3, turn_fakes=turn_fakes,
                      **preset_loss_kwargs("stylegan3-t", 4))
    m = eq.accumulate_gradients("Gmain", real, real_c, z, c, gain=1, cur_nimg=0)
    assert m["loss/eq"] > 0
    assert any(not torch.allclose(a, b) for a, b in zip(grads(G), g_plain))


def test_turned_fakes_are_the_input_turned_by_a_random_angle_in_both_players_phases():
    G, D = tiny_g3(), tiny_d()
    _, _, z, c = batch()
    loss = StyleGANLoss(G, D, turn_fakes=True, **preset_loss_kwargs("stylegan3-t", 4))
    turns = torch.cat([loss.fake_turns(4) for _ in range(50)])
    assert turns.min() >= 0 and turns.max() < 360 and turns.std() > 80      # spread over the circle
    assert StyleGANLoss(G, D, **preset_loss_kwargs("stylegan3-t", 4)).fake_turns(4) is None
    with torch.no_grad():
        upright, ws = loss.run_G(z, c)
        assert torch.equal(loss.run_G(z, c, degrees=torch.zeros(4))[0], upright)
        turned = loss.run_G(z, c, degrees=torch.full([4], 90.0))[0]
        assert torch.allclose(turned, G.synthesis(ws, transform=turn_transforms(torch.full([4], 90.0))))
        assert not torch.allclose(turned, upright, atol=1e-3)
    # D's phase on fakes sees turned pictures too: its gradients differ from the upright run's.
    real, real_c, _, _ = batch()
    got = []
    for turn in (False, True):
        zero_grads(G, D)
        torch.manual_seed(7)
        StyleGANLoss(G, D, r1_gamma=0, turn_fakes=turn, **preset_loss_kwargs("stylegan3-t", 4)).accumulate_gradients(
            "Dmain", real, real_c, z, c, gain=1, cur_nimg=0)
        got.append(grads(D))
    assert any(not torch.allclose(a, b) for a, b in zip(*got))


def test_turning_the_input_needs_a_stylegan3_generator():
    for kwargs in (dict(eq_rot_weight=1), dict(turn_fakes=True)):
        with pytest.raises(ValueError, match="StyleGAN3"):
            StyleGANLoss(tiny_g2(), tiny_d(), **kwargs)
