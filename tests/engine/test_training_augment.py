"""Adaptive discriminator augmentation: each transform alone, the pipe's gradients, and the p controller."""
from __future__ import annotations

import math

import pytest
import torch

from engine.training.augment import (AdaController, AugmentPipe, affine_resample, augment_preset, rotate2d,
                                     translate2d)

BGC = ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
       "brightness", "contrast", "lumaflip", "hue", "saturation"]


def images(n: int = 16, size: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn([n, 3, size, size], generator=torch.Generator().manual_seed(seed), dtype=dtype)


def pipe_with(p: float, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def bump(n: int = 8, size: int = 32, sigma: float = 4.0, centre=(0.0, 0.0)) -> torch.Tensor:
    """A smooth radial Gaussian bump (peak 1) on a -0.5 background, in every channel."""
    c = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    yy, xx = torch.meshgrid(c - centre[1], c - centre[0], indexing="ij")
    img = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) * 1.5 - 0.5
    return img.expand(n, 3, size, size).clone()


def centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (x, y) of img + 0.5 per image, in pixels: [N, 2]."""
    w = (img.mean(dim=1) + 0.5).clamp(min=0)                      # [N, H, W]
    idx = torch.arange(img.shape[-1], dtype=torch.float32)
    total = w.sum(dim=[1, 2])
    return torch.stack([(w.sum(1) * idx).sum(1) / total, (w.sum(2) * idx).sum(1) / total], dim=1)


def test_preset_bgc_names_every_transform():
    assert sorted(augment_preset("bgc")) == sorted(BGC)
    assert all(v == 1 for v in augment_preset("bgc").values())
    with pytest.raises(ValueError, match="bgcfnc"):
        augment_preset("bgcfnc")


@pytest.mark.parametrize("name", BGC)
def test_each_transform_is_the_exact_identity_at_p0_and_keeps_shape_at_p1(name):
    x = images()
    assert torch.equal(pipe_with(0.0, **{name: 1})(x), x)
    assert torch.equal(pipe_with(1.0, **{name: 0})(x), x)      # multiplier 0
    for dtype in (torch.float32, torch.float64):
        y = pipe_with(1.0, **{name: 1})(x.to(dtype))
        assert y.shape == x.shape and y.dtype == dtype
        assert not torch.equal(y, x.to(dtype))


def test_the_whole_pipe_is_the_identity_at_p0_and_only_p_is_state():
    pipe = pipe_with(0.0, **augment_preset("bgc"))
    x = images(dtype=torch.float64)
    assert torch.equal(pipe(x), x)
    assert list(pipe.state_dict()) == ["p"]


def test_xflip_flips_about_half_the_images_exactly():
    x = images(32)
    torch.manual_seed(1)
    y = pipe_with(1.0, xflip=1)(x)
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(32)]
    same = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 4 < sum(flipped) < 28


def test_rotate90_turns_each_image_by_a_multiple_of_90_degrees_exactly():
    x = images(32)
    torch.manual_seed(2)
    y = pipe_with(1.0, rotate90=1)(x)
    turns = []
    for i in range(32):
        k = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(k) == 1
        turns.append(k[0])
    assert len(set(turns)) == 4


def test_xint_shifts_the_content_by_whole_pixels():
    size, xint_max = 32, 0.125
    x = images(16, size)
    torch.manual_seed(3)
    y = pipe_with(1.0, xint=1, xint_max=xint_max)(x)
    limit = round(xint_max * size)
    shifts = []
    for i in range(16):
        found = [(dx, dy) for dx in range(-limit, limit + 1) for dy in range(-limit, limit + 1)
                 if torch.equal(y[i, :, max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)],
                                x[i, :, max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)])]
        assert len(found) == 1, found
        shifts.append(found[0])
    assert sum(s != (0, 0) for s in shifts) >= 12


def test_resampler_conventions_identity_rotation_translation_and_constants():
    x = bump(2, 32, sigma=5, centre=(2.0, -3.0))
    inner = (..., slice(4, -4), slice(4, -4))
    eye = torch.eye(3).repeat(2, 1, 1)
    assert (affine_resample(x, eye, AugmentPipe().resample_filter) - x)[inner].abs().max() < 1e-3
    quarter = affine_resample(x, rotate2d(torch.full([2], math.pi / 2)), AugmentPipe().resample_filter)
    assert (quarter - torch.rot90(x, 1, dims=(2, 3)))[inner].abs().max() < 1e-3
    # An inverse translation by -1 pixel moves the content one pixel right.
    moved = affine_resample(x, translate2d(torch.full([2], -1.0), torch.zeros(2)), AugmentPipe().resample_filter)
    assert (moved[..., 4:-4, 5:-4] - x[..., 4:-4, 4:-5]).abs().max() < 1e-3
    # Normalised filters and mirrored borders: a constant image stays constant under anything.
    flat = torch.full([2, 3, 16, 16], 0.3)
    skew = rotate2d(torch.tensor([0.3, 2.0])) @ translate2d(torch.tensor([5.0, -7.0]), torch.tensor([1.5, 0.0]))
    assert (affine_resample(flat, skew, AugmentPipe().resample_filter) - 0.3).abs().max() < 1e-5


def test_rotation_keeps_a_radial_bump_and_turns_anything_else():
    torch.manual_seed(4)
    pipe = pipe_with(1.0, rotate=1)
    x = bump()
    y = pipe(x)
    assert (y - x)[..., 6:-6, 6:-6].abs().max() < 0.02
    x_off = bump(centre=(5.0, 0.0))
    y_off = pipe(x_off)
    moved = (centroid(y_off) - centroid(x_off)).norm(dim=1)
    assert (moved > 1.0).sum() >= 4


def test_isotropic_scale_keeps_the_centre_and_changes_the_width():
    torch.manual_seed(5)
    x = bump(8, 32, sigma=4)
    y = pipe_with(1.0, scale=1, scale_std=0.5)(x)
    assert (centroid(y) - centroid(x)).abs().max() < 0.05
    assert (y[:, :, 16, 16] - x[:, :, 16, 16]).abs().max() < 0.05      # peak value survives
    width = lambda img: (img.mean(1) + 0.5).sum(dim=[1, 2])            # noqa: E731  area ~ s^2
    ratio = width(y) / width(x)
    assert (ratio - 1).abs().max() > 0.1


def test_anisotropic_scale_stretches_one_axis_against_the_other():
    torch.manual_seed(6)
    x = bump(8, 32, sigma=4)
    y = pipe_with(1.0, aniso=1, aniso_std=0.5)(x)
    profile_x, profile_y = (y.mean(1) + 0.5).sum(1), (y.mean(1) + 0.5).sum(2)   # [N, W], [N, H]
    assert (profile_x - profile_y).abs().max() > 0.5
    assert (centroid(y) - centroid(x)).abs().max() < 0.05


def test_xfrac_moves_the_content_by_fractions_of_a_pixel_without_changing_it():
    torch.manual_seed(7)
    x = bump(8, 32, sigma=3)
    y = pipe_with(1.0, xfrac=1, xfrac_std=0.05)(x)
    shift = centroid(y) - centroid(x)
    assert shift.abs().max() > 0.3 and shift.abs().max() < 8
    assert ((shift - shift.round()).abs() > 0.05).any()
    assert (y.amax(dim=[1, 2, 3]) - 1).abs().max() < 0.05


def test_brightness_adds_one_constant_per_image():
    x = images()
    y = pipe_with(1.0, brightness=1)(x)
    diff = (y - x).flatten(1)
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)
    assert diff[:, 0].abs().min() > 0
    assert 0.05 < diff[:, 0].std() < 0.5                             # brightness_std = 0.2


def test_contrast_scales_each_image_about_mid_grey():
    x = images()
    y = pipe_with(1.0, contrast=1)(x)
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
    assert (ratio[:, 0] > 0).all() and (ratio[:, 0] - 1).abs().min() > 0


def luma(img: torch.Tensor) -> torch.Tensor:
    return img.mean(dim=1, keepdim=True)


def test_lumaflip_negates_luma_and_keeps_chroma():
    x = images(32)
    y = pipe_with(1.0, lumaflip=1)(x)
    assert torch.allclose(y - luma(y), x - luma(x), atol=1e-5)
    flipped = torch.isclose(luma(y), -luma(x), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(luma(y), luma(x), atol=1e-5).flatten(1).all(1)
    assert (flipped | kept).all() and 4 < flipped.sum() < 28


def test_hue_rotation_keeps_luma_and_chroma_strength():
    x = images()
    y = pipe_with(1.0, hue=1)(x)
    assert torch.allclose(luma(y), luma(x), atol=1e-5)
    assert torch.allclose((y - luma(y)).norm(dim=1), (x - luma(x)).norm(dim=1), atol=1e-4)
    assert (y - x).abs().max() > 0.1


def test_saturation_keeps_luma_and_scales_chroma():
    x = images()
    y = pipe_with(1.0, saturation=1)(x)
    assert torch.allclose(luma(y), luma(x), atol=1e-5)
    ratio = ((y - luma(y)).norm(dim=1) / (x - luma(x)).norm(dim=1)).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-3)
    assert (ratio[:, 0] - 1).abs().max() > 0.1


def test_grey_images_get_the_colour_transforms_as_one_channel():
    x = torch.randn(8, 1, 16, 16)
    y = pipe_with(1.0, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)(x)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_gradients_flow_through_the_pipe_to_second_order():
    pipe = pipe_with(1.0, **augment_preset("bgc"))
    x = images(2, 8, dtype=torch.float64).requires_grad_(True)

    def augmented(img: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(8)                # the same random transforms for every evaluation
        return pipe(img)

    # For fixed random draws the pipe is affine, A(x) = L x + b, so autograd's vector-Jacobian
    # product must satisfy <L^T w, v> = <w, A(v) - A(0)> for any w, v (the adjoint identity).
    w, v = torch.randn_like(x), torch.randn_like(x)
    (vjp,) = torch.autograd.grad((augmented(x) * w).sum(), x)
    assert vjp.abs().sum() > 0
    assert torch.allclose((vjp * v).sum(), (w * (augmented(v) - augmented(torch.zeros_like(v)))).sum(), rtol=1e-9)
    # The R1 pattern: the gradient of a function of augmented images, itself differentiated.
    (g,) = torch.autograd.grad(augmented(x).tanh().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_seed_same_augmentation():
    pipe = pipe_with(0.7, **augment_preset("bgc"))
    x = images()
    torch.manual_seed(9)
    a = pipe(x)
    torch.manual_seed(9)
    assert torch.equal(pipe(x), a)


# ---- AdaController ----------------------------------------------------------------------------


def controller(p: float = 0.0, **kwargs) -> AdaController:
    return AdaController(pipe_with(p), **{"target": 0.6, "interval": 4, "kimg": 0.1, "batch_size": 4, **kwargs})


def test_p_rises_on_an_overfitting_discriminator_and_is_clamped_at_one():
    ada = controller()
    step = 4 * 4 / (0.1 * 1000)                 # batch * interval / (kimg * 1000)
    for _ in range(3):
        ada.update(torch.full([4, 1], 2.5))
    assert ada.p == 0 and ada.rt is None        # nothing moves before `interval` steps
    ada.update(torch.full([4, 1], 2.5))
    assert ada.rt == 1.0 and ada.p == pytest.approx(step)
    for _ in range(4 * 10):
        ada.update(torch.rand([4, 1]) + 0.1)
    assert ada.p == 1.0


def test_p_falls_when_reals_score_negative_and_is_clamped_at_zero():
    ada = controller(0.5)
    for _ in range(4):
        ada.update(-torch.rand([4, 1]) - 0.1)
    assert ada.rt == -1.0 and ada.p == pytest.approx(0.5 - 0.16)
    for _ in range(4 * 10):
        ada.update(-torch.ones([4, 1]))
    assert ada.p == 0.0


def test_p_holds_at_the_target_and_follows_the_mean_sign():
    ada = controller(0.5, target=0.5)
    for _ in range(4):  # three positive, one negative per batch: r_t = 0.5 = target
        ada.update(torch.tensor([[1.0], [2.0], [3.0], [-1.0]]))
    assert ada.rt == 0.5 and ada.p == 0.5
    for _ in range(4):  # r_t = 0 < 0.5
        ada.update(torch.tensor([[1.0], [2.0], [-3.0], [-1.0]]))
    assert ada.rt == 0.0 and ada.p == pytest.approx(0.34)


def test_controller_state_round_trips_mid_interval():
    logits = [torch.randn([4, 1], generator=torch.Generator().manual_seed(i)) + 0.5 for i in range(30)]
    ada = controller(0.3)
    for l in logits[:13]:
        ada.update(l)
    state = {k: v.clone() for k, v in ada.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    resumed = controller(0.0)
    resumed.load_state_dict(state)
    assert resumed.p == ada.p and resumed.rt == ada.rt
    for l in logits[13:]:
        ada.update(l)
        resumed.update(l)
        assert resumed.p == ada.p and resumed.rt == ada.rt
    fresh = controller(0.0)
    fresh.load_state_dict(controller(0.0).state_dict())
    assert fresh.rt is None
