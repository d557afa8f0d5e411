"""StyleGAN3 on tiny networks: filter design, equivariance (T: translation, R: rotation), EMAs, dtypes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cuda_ops
from engine.networks.stylegan3 import Generator, design_lowpass_filter, input_transform


def tiny(config: str, seed: int = 0, **kwargs) -> Generator:
    """A 32 px StyleGAN3 with 4 layers; 'r' is NVIDIA's R config (1x1 convs, radial filters)."""
    torch.manual_seed(seed)
    args = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3, channel_base=1024,
                channel_max=32, num_layers=4, num_fp16_res=0)
    if config == "r":
        args.update(conv_kernel=1, use_radial_filters=True)
    args.update(kwargs)
    return Generator(**args).eval()


def render(G: Generator, ws: torch.Tensor, rotate: float = 0.0, translate=(0.0, 0.0)) -> torch.Tensor:
    G.synthesis.input.transform.copy_(torch.from_numpy(input_transform(rotate, translate)))
    try:
        with torch.no_grad():
            return G.synthesis(ws)
    finally:
        G.synthesis.input.transform.copy_(torch.eye(3))


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images normalised by a's standard deviation, over `mask` [H, W] if given."""
    scale = a.std()
    err = ((a - b) / scale).square()
    mse = err.mean() if mask is None else (err * mask).sum() / (mask.sum() * a.shape[0] * a.shape[1])
    return float(10 * torch.log10(4 / mse))


@pytest.fixture(scope="module")
def ws() -> torch.Tensor:
    torch.manual_seed(1)
    G = tiny("t")
    with torch.no_grad():
        return G.mapping(torch.randn(3, 16), None)


# --- filter design ------------------------------------------------------------------------------

def response(f: np.ndarray, fs: float, nu_x: np.ndarray, nu_y: np.ndarray | None = None) -> np.ndarray:
    """|H| of a centred 1-D filter at frequencies nu_x, or of a 2-D filter at (nu_x, nu_y)."""
    t = (np.arange(f.shape[0]) - (f.shape[0] - 1) / 2) / fs
    ex = np.exp(-2j * np.pi * np.outer(nu_x, t))
    if nu_y is None:
        return np.abs(ex @ f)
    ey = np.exp(-2j * np.pi * np.outer(nu_y, t))
    return np.abs(np.einsum("pk,pj,jk->p", ex, ey, f))


def test_single_tap_means_no_filter():
    assert design_lowpass_filter(1, cutoff=4, width=8, fs=32) is None
    with pytest.raises(ValueError):
        design_lowpass_filter(0, cutoff=4, width=8, fs=32)


def test_separable_filter_passes_dc_and_stops_above_the_transition():
    fs, fc, hw = 32, 4, 4
    f = design_lowpass_filter(12, cutoff=fc, width=2 * hw, fs=fs).double().numpy()
    assert f.shape == (12,)
    np.testing.assert_allclose(f, f[::-1], atol=1e-7)                # linear phase
    assert f.sum() == pytest.approx(1, abs=1e-6)
    assert response(f, fs, np.linspace(0, fc / 4, 5)).min() > 0.95
    assert response(f, fs, np.linspace(fc + hw, fs / 2, 50)).max() < 0.01


def test_radial_filter_is_isotropic_where_the_separable_one_is_not():
    fs, fc, hw = 32, 4, 4
    sep = design_lowpass_filter(12, cutoff=fc, width=2 * hw, fs=fs).double().numpy()
    sep = np.outer(sep, sep)
    rad = design_lowpass_filter(12, cutoff=fc, width=2 * hw, fs=fs, radial=True).double().numpy()
    assert rad.shape == (12, 12)
    assert rad.sum() == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(rad, rad.T, atol=1e-7)
    np.testing.assert_allclose(rad, np.rot90(rad), atol=1e-7)
    theta = np.linspace(0, np.pi / 2, 19)

    def spread(f, radius):
        h = response(f, fs, radius * np.cos(theta), radius * np.sin(theta))
        return h.max() - h.min(), h.max()
    (sep_spread, _), (rad_spread, _) = spread(sep, fc), spread(rad, fc)
    assert rad_spread < 0.3 * sep_spread                               # same gain in every direction
    assert spread(rad, fc + hw)[1] < 0.5 * spread(sep, fc + hw)[1]     # diagonals are stopped too


def test_odd_radial_filter_has_a_finite_centre():
    f = design_lowpass_filter(7, cutoff=2, width=4, fs=16, radial=True)
    assert torch.isfinite(f).all() and f[3, 3] == f.max()


# --- architecture ---------------------------------------------------------------------------------

def test_r_config_layout():
    """NVIDIA's R config at 64 px (train.py doubles channel_base and channel_max for it)."""
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=64, img_channels=3, channel_base=4096,
                  channel_max=128, conv_kernel=1, use_radial_filters=True, num_fp16_res=2)
    state = G.state_dict()
    assert G.synthesis.layer_names[0] == "L0_36_128" and G.synthesis.layer_names[-1] == "L14_64_3"
    for idx, name in enumerate(G.synthesis.layer_names):
        layer = getattr(G.synthesis, name)
        assert state[f"synthesis.{name}.weight"].shape[2:] == (1, 1)
        if layer.is_torgb:
            assert f"synthesis.{name}.down_filter" not in state and f"synthesis.{name}.up_filter" not in state
            continue
        assert state[f"synthesis.{name}.up_filter"].ndim == 1           # up filters stay separable
        down = state[f"synthesis.{name}.down_filter"]
        assert down.ndim == (1 if layer.is_critically_sampled else 2), name
        assert layer.is_critically_sampled == (idx >= 12)
    with torch.no_grad():
        img = G(torch.randn(2, 64), None)
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()


def test_truncation_cutoff_and_conditioning():
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=5, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                  channel_max=16, num_layers=4, num_fp16_res=0)
    G.mapping.w_avg.normal_()
    z, c = torch.randn(2, 8), F.one_hot(torch.tensor([1, 3]), 5).float()
    with torch.no_grad():
        ws = G.mapping(z, c)
        cut = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
        img = G(z, c, truncation_psi=0.5, truncation_cutoff=2)
    assert ws.shape == (2, G.num_ws, 16)
    assert torch.allclose(cut[:, :2], G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg), atol=1e-6)
    assert torch.equal(cut[:, 2:], ws[:, 2:])
    assert img.shape == (2, 3, 16, 16)
    assert not torch.allclose(ws[0], G.mapping(z[:1], c[1:]).detach()[0])   # the label matters


def test_update_emas_moves_magnitude_ema_and_w_avg_only_when_asked():
    G = tiny("t")
    layer = getattr(G.synthesis, G.synthesis.layer_names[2])
    z = torch.randn(2, 16)
    with torch.no_grad():
        G(z, None)
        assert layer.magnitude_ema.item() == 1 and G.mapping.w_avg.abs().sum() == 0
        x = None

        def grab(module, args):
            nonlocal x
            x = args[0]
        handle = layer.register_forward_pre_hook(grab)
        G(z, None, update_emas=True)
        handle.remove()
    expected = torch.tensor(1.0).lerp(x.square().mean(), 1 - layer.magnitude_ema_beta)
    assert layer.magnitude_ema.item() == pytest.approx(expected.item(), rel=1e-5)
    assert layer.magnitude_ema.item() != 1 and G.mapping.w_avg.abs().sum() > 0


def test_batch_samples_are_independent(ws):
    G = tiny("t")
    with torch.no_grad():
        together = G.synthesis(ws)
        alone = G.synthesis(ws[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_a_transform_per_sample_equals_the_buffer_set_for_each(ws):
    G = tiny("t")
    moves = [(0.0, (0.0, 0.0)), (30.0, (0.1, -0.05)), (-75.0, (0.0, 0.2))]
    with torch.no_grad():
        batch = G.synthesis(ws, transform=torch.from_numpy(np.stack([input_transform(r, t) for r, t in moves])))
    for i, (rotate, translate) in enumerate(moves):
        assert torch.allclose(batch[i:i + 1], render(G, ws[i:i + 1], rotate, translate), atol=1e-5)
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))      # the buffer is left alone


def test_noise_mode_is_accepted_and_ignored(ws):
    G = tiny("t")
    with torch.no_grad():
        images = [G.synthesis(ws, noise_mode=mode) for mode in ("const", "random", "none")]
        with pytest.raises(ValueError, match="noise_mode"):
            G.synthesis(ws, noise_mode="loud")
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])


def test_cpu_runs_float32_even_in_fp16_layers(ws):
    """float16 is a CUDA-only speed-up; on the CPU fp16 layers compute exactly as force_fp32."""
    G = tiny("t", num_fp16_res=1)
    assert any(getattr(G.synthesis, n).use_fp16 for n in G.synthesis.layer_names)
    with torch.no_grad():
        img = G.synthesis(ws)
        ref = G.synthesis(ws, force_fp32=True)
    assert img.dtype == torch.float32 and torch.equal(img, ref)


def test_gradients_reach_every_parameter():
    G = tiny("r")
    G.train()
    G(torch.randn(2, 16), None).square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # The input affine starts with zero weights; its gradient still exists.
    assert not missing


# --- equivariance -----------------------------------------------------------------------------------

def test_t_config_integer_translation_shifts_the_image(ws):
    G = tiny("t")
    px = 2                                                   # translate is in image widths
    base = render(G, ws)
    moved_x = render(G, ws, translate=(px / G.img_resolution, 0))
    moved_y = render(G, ws, translate=(0, px / G.img_resolution))
    crop = slice(4, -4)
    # +x moves the content right, +y moves it down (image rows grow downwards).
    assert psnr(base[..., crop, 4:-6], moved_x[..., crop, 6:-4]) > 60
    assert psnr(base[..., 4:-6, crop], moved_y[..., 6:-4, crop]) > 60
    assert psnr(base[..., crop, 4:-6], moved_x[..., crop, 4:-6]) < 30      # it did move


def test_r_config_rotates_by_90_degrees_exactly_and_t_does_not(ws):
    """Positive angles turn the image counter-clockwise as displayed (rows downwards)."""
    r, t = tiny("r"), tiny("t")
    r_img, r_rot = render(r, ws), render(r, ws, rotate=90)
    t_img, t_rot = render(t, ws), render(t, ws, rotate=90)
    assert psnr(torch.rot90(r_img, 1, dims=(2, 3)), r_rot) > 60     # 1x1 convs, symmetric filters
    assert psnr(r_img, r_rot) < 20                                  # it did turn
    assert psnr(torch.rot90(t_img, 1, dims=(2, 3)), t_rot) < 20     # 3x3 kernels have a direction


def rotate_image(img: torch.Tensor, degrees: float, up: int = 4) -> torch.Tensor:
    """Rotate band-limited images counter-clockwise: upsample, bicubic-resample, downsample."""
    res = img.shape[-1]
    f = design_lowpass_filter(12 * up, cutoff=res / 2, width=res * 0.3, fs=res * up)
    x = cuda_ops.upsample2d(img, f, up=up)
    a = np.radians(degrees)
    theta = torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0]], dtype=img.dtype)
    grid = F.affine_grid(theta.expand(img.shape[0], 2, 3), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bicubic", align_corners=False)
    return cuda_ops.downsample2d(x, f, down=up)


def test_r_config_is_far_more_rotation_equivariant_at_45_degrees(ws):
    """The EQ-R idea of the paper, cheaply: turn the input vs turn the output, in a central disc."""
    res = 32
    yy, xx = torch.meshgrid(torch.arange(res) + 0.5 - res / 2, torch.arange(res) + 0.5 - res / 2, indexing="ij")
    disc = ((yy ** 2 + xx ** 2).sqrt() < 0.35 * res).float()
    scores = {}
    for config in ("r", "t"):
        G = tiny(config)
        base = render(G, ws)
        assert psnr(rotate_image(base, 90), torch.rot90(base, 1, dims=(2, 3)), disc) > 45   # the tool works
        scores[config] = psnr(rotate_image(base, 45), render(G, ws, rotate=45), disc)
    assert scores["r"] > 30 and scores["r"] > scores["t"] + 15, scores


# --- CUDA ----------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_fp16_layers_run_half_and_stay_close(ws):
    G = tiny("t", num_fp16_res=1).cuda()   # L0 (16 samples per unit) float32, the rest float16
    dtypes = {}
    hooks = [getattr(G.synthesis, name).register_forward_hook(
        lambda module, args, out, name=name: dtypes.__setitem__(name, out.dtype)) for name in G.synthesis.layer_names]
    with torch.no_grad():
        img = G.synthesis(ws.cuda())
    for hook in hooks:
        hook.remove()
    assert img.dtype == torch.float32
    assert dtypes == {name: torch.float16 if getattr(G.synthesis, name).use_fp16 else torch.float32
                      for name in G.synthesis.layer_names}
    assert dtypes[G.synthesis.layer_names[0]] == torch.float32 and dtypes[G.synthesis.layer_names[1]] == torch.float16
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        full = G.synthesis(ws.cuda(), force_fp32=True).cpu()
        cpu = G.cpu().synthesis(ws, force_fp32=True)
    assert float((full - cpu).norm() / cpu.norm()) < 1e-4
    assert float((img.cpu() - cpu).norm() / cpu.norm()) < 2e-2        # float16 rounding, measured ~2e-3
