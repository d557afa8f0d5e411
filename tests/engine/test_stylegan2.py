"""Behaviour of the StyleGAN2 generator, mapping network and modulated convolution on tiny networks."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.errors import UnsupportedNetworkError
from engine.networks.layers import Conv2dLayer, MappingNetwork, modulated_conv2d
from engine.networks.stylegan2 import Generator, SynthesisNetwork

TINY = dict(z_dim=16, w_dim=16, img_resolution=16, img_channels=3,
            channel_base=128, channel_max=16, num_fp16_res=2, mapping_kwargs=dict(num_layers=2))


def tiny_generator(c_dim: int = 0, seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    G = Generator(**{**TINY, "c_dim": c_dim, **overrides}).eval()
    # Random w_avg and noise strengths, so that truncation and noise change the output.
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    return G


def z_batch(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn([n, TINY["z_dim"]], generator=torch.Generator().manual_seed(seed))


def test_tiny_generator_shapes():
    G = tiny_generator()
    assert G.num_ws == 1 + 2 + 2 + 1 == G.synthesis.num_ws  # b4: 1 conv; b8, b16: 2 each; last ToRGB: 1
    ws = G.mapping(z_batch(), None)
    assert ws.shape == (3, G.num_ws, 16)
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (3, 3, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all()


def test_conditional_generator_depends_on_the_class():
    G = tiny_generator(c_dim=3)
    assert "mapping.embed.weight" in G.state_dict()
    z = z_batch(1).repeat(3, 1)
    c = torch.eye(3)
    img = G(z, c, noise_mode="const")
    assert img.shape == (3, 3, 16, 16)
    assert (img[0] - img[1]).abs().max() > 1e-3
    assert (img[1] - img[2]).abs().max() > 1e-3
    # same z and class: same image
    assert torch.allclose(G(z[:1], c[:1], noise_mode="const"), img[:1], atol=1e-5)


def test_truncation_pulls_towards_w_avg():
    G = tiny_generator()
    z = z_batch()
    ws1 = G.mapping(z, None)
    ws0 = G.mapping(z, None, truncation_psi=0)
    assert torch.allclose(ws0, G.mapping.w_avg.expand_as(ws0))
    ws_half = G.mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(ws_half, G.mapping.w_avg + 0.5 * (ws1 - G.mapping.w_avg), atol=1e-6)


def test_truncation_cutoff_truncates_only_the_first_layers():
    G = tiny_generator()
    z = z_batch()
    ws1 = G.mapping(z, None)
    full = G.mapping(z, None, truncation_psi=0.5)
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.equal(cut[:, :3], full[:, :3])
    assert torch.equal(cut[:, 3:], ws1[:, 3:])
    assert not torch.allclose(cut[:, :3], ws1[:, :3])


def test_noise_random_differs_const_repeats_none_differs_from_both():
    G = tiny_generator()
    ws = G.mapping(z_batch(), None)
    const_a = G.synthesis(ws, noise_mode="const")
    const_b = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const_a, const_b)
    rand_a = G.synthesis(ws, noise_mode="random")
    rand_b = G.synthesis(ws, noise_mode="random")
    assert (rand_a - rand_b).abs().max() > 1e-3
    none = G.synthesis(ws, noise_mode="none")
    assert (none - const_a).abs().max() > 1e-3
    torch.manual_seed(5)
    seeded_a = G.synthesis(ws, noise_mode="random")
    torch.manual_seed(5)
    assert torch.equal(G.synthesis(ws, noise_mode="random"), seeded_a)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="constant")


def test_rebuilt_from_init_kwargs_gives_identical_output():
    G = tiny_generator(c_dim=3)
    kwargs_before = copy.deepcopy(G.init_kwargs)
    G2 = type(G)(**G.init_kwargs).eval()
    assert G.init_kwargs == kwargs_before  # building from them does not mutate them
    assert G2.init_kwargs == G.init_kwargs
    G2.load_state_dict(G.state_dict(), strict=True)
    z, c = z_batch(), torch.eye(3)
    assert torch.equal(G2(z, c, truncation_psi=0.7, noise_mode="const"),
                       G(z, c, truncation_psi=0.7, noise_mode="const"))


def test_init_kwargs_is_a_deep_copy():
    mapping_kwargs = dict(num_layers=2)
    G = Generator(**{**TINY, "c_dim": 0, "mapping_kwargs": mapping_kwargs})
    mapping_kwargs["num_layers"] = 5
    assert G.init_kwargs["mapping_kwargs"] == {"num_layers": 2}


def test_ada_style_synthesis_kwargs_builds_the_same_network():
    flat = tiny_generator()
    synthesis_kwargs = {k: TINY[k] for k in ("channel_base", "channel_max", "num_fp16_res")}
    torch.manual_seed(0)
    ada = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=synthesis_kwargs).eval()
    assert {k: v.shape for k, v in ada.state_dict().items()} == {k: v.shape for k, v in flat.state_dict().items()}
    # stored flattened, in the stylegan3 form, with ada's conv_clamp default made explicit
    assert "synthesis_kwargs" not in ada.init_kwargs
    assert ada.init_kwargs["channel_base"] == 128 and ada.init_kwargs["conv_clamp"] is None
    ada.load_state_dict(flat.state_dict(), strict=True)
    ws = flat.mapping(z_batch(), None)
    # flat was built with conv_clamp=256, which these small activations never reach
    assert torch.allclose(ada.synthesis(ws, noise_mode="const"), flat.synthesis(ws, noise_mode="const"))
    rebuilt = Generator(**ada.init_kwargs)
    assert rebuilt.init_kwargs == ada.init_kwargs


def test_update_emas_moves_w_avg_towards_the_batch_mean():
    G = tiny_generator()
    z = z_batch(8)
    before = G.mapping.w_avg.clone()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, before)  # default: no update
    w_mean = G.mapping(z, None)[:, 0].mean(dim=0)
    G(z, None, update_emas=True, noise_mode="const")
    beta = G.mapping.w_avg_beta
    assert torch.allclose(G.mapping.w_avg, beta * before + (1 - beta) * w_mean, atol=1e-6)


def test_skip_w_avg_update_follows_stylegan2_ada():
    G = tiny_generator()
    z = z_batch(8)
    before = G.mapping.w_avg.clone()
    G.mapping.train()
    G.mapping(z, None, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    G.mapping(z, None, skip_w_avg_update=False)
    assert not torch.equal(G.mapping.w_avg, before)
    after_training = G.mapping.w_avg.clone()
    G.mapping.eval()
    G.mapping(z, None, skip_w_avg_update=False)  # ada updated only in training mode
    assert torch.equal(G.mapping.w_avg, after_training)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_architectures_build_run_and_name_their_layers(architecture):
    G = tiny_generator(architecture=architecture)
    keys = set(G.state_dict())
    assert ("synthesis.b8.torgb.weight" in keys) == (architecture == "skip")
    assert "synthesis.b16.torgb.weight" in keys                   # the last block always has one
    assert ("synthesis.b8.skip.weight" in keys) == (architecture == "resnet")
    assert G.num_ws == 6
    img = G(z_batch(), None, noise_mode="const")
    assert img.shape == (3, 3, 16, 16) and torch.isfinite(img).all()


def test_unknown_kwargs_are_refused_by_name():
    with pytest.raises(UnsupportedNetworkError, match="magic_number"):
        Generator(**{**TINY, "c_dim": 0, "magic_number": 3})
    with pytest.raises(UnsupportedNetworkError, match="depth"):
        Generator(**{**TINY, "c_dim": 0, "mapping_kwargs": {"depth": 3}})
    with pytest.raises(UnsupportedNetworkError, match="architecture"):
        SynthesisNetwork(16, 16, 3, architecture="fancy")


def test_conv_clamp_limits_activations():
    torch.manual_seed(0)
    G = Generator(**{**TINY, "c_dim": 0, "conv_clamp": 0.05}).eval()
    ws = G.mapping(z_batch(), None)
    block = G.synthesis.b4
    x, img = block(None, None, ws[:, :2], noise_mode="const")
    assert x.abs().max() <= 0.05 + 1e-6
    assert img.abs().max() <= 0.05 + 1e-6


def test_fused_and_non_fused_modconv_agree_in_both_directions():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8)
    weight = torch.randn(7, 5, 3, 3)
    styles = torch.randn(3, 5)
    noise = torch.randn(3, 1, 16, 16)
    filt = Conv2dLayer(1, 1, 1).resample_filter
    for kwargs in (dict(padding=1), dict(padding=1, up=2, resample_filter=filt, flip_weight=False, noise=noise),
                   dict(padding=1, demodulate=False)):
        fused = modulated_conv2d(x, weight, styles, fused_modconv=True, **kwargs)
        split = modulated_conv2d(x, weight, styles, fused_modconv=False, **kwargs)
        assert torch.allclose(fused, split, atol=1e-5)


def test_modulated_conv2d_equals_a_per_sample_convolution():
    """Eqs. 1-3 of the StyleGAN2 paper, one sample at a time with plain conv2d."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    weight = torch.randn(3, 4, 3, 3)
    styles = torch.rand(2, 4) + 0.5
    out = modulated_conv2d(x, weight, styles, padding=1)
    for i in range(2):
        w = weight * styles[i].reshape(1, 4, 1, 1)                               # modulate
        w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()     # demodulate
        expected = torch.nn.functional.conv2d(x[i:i + 1], w, padding=1)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-5)
    # demodulation makes the output independent of the style's overall scale
    assert torch.allclose(modulated_conv2d(x, weight, styles * 7, padding=1), out, atol=1e-5)


def test_mapping_network_without_num_ws_returns_w():
    torch.manual_seed(0)
    m = MappingNetwork(z_dim=0, c_dim=4, w_dim=8, num_ws=None, w_avg_beta=None, num_layers=2)
    assert "w_avg" not in m.state_dict()
    w = m(None, torch.eye(4))
    assert w.shape == (4, 8)
    with pytest.raises(ValueError, match="w_avg"):
        m(None, torch.eye(4), truncation_psi=0.5)


def test_generator_trains_gradients_reach_every_parameter():
    G = tiny_generator(c_dim=3).train()
    img = G(z_batch(), torch.eye(3), noise_mode="random", fused_modconv="inference_only")
    img.square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.gpu
def test_fp16_blocks_run_in_float16_on_cuda():
    G = tiny_generator().cuda()
    ws = G.mapping(z_batch().cuda(), None)
    b16 = G.synthesis.b16
    assert b16.use_fp16
    x, img = G.synthesis.b4(None, None, ws[:, :2], noise_mode="const")
    x, img = G.synthesis.b8(x, img, ws[:, 1:4], noise_mode="const")
    x16, _ = b16(x, img, ws[:, 3:6], noise_mode="const")
    x32, _ = b16(x, img, ws[:, 3:6], noise_mode="const", force_fp32=True)
    assert x16.dtype == torch.float16 and x32.dtype == torch.float32
    out = G.synthesis(ws, noise_mode="const")
    assert out.dtype == torch.float32
    ref = G.synthesis(ws, noise_mode="const", force_fp32=True)
    assert (out - ref).norm() / ref.norm() < 2e-2


class EasyDict(dict):
    """Stands in for dnnlib.EasyDict, the dict subclass NVIDIA's pickles record kwargs in."""


def test_init_kwargs_are_plain_dicts_even_from_dict_subclasses():
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3,
                  mapping_kwargs=EasyDict(num_layers=2),
                  synthesis_kwargs=EasyDict(channel_base=64, channel_max=16, resample_filter=(1, 3, 3, 1)))
    assert type(G.init_kwargs) is dict and type(G.init_kwargs["mapping_kwargs"]) is dict
    assert G.init_kwargs["resample_filter"] == [1, 3, 3, 1]
    assert G.init_kwargs["num_fp16_res"] == 0  # stylegan2-ada-pytorch's default, made explicit


def test_fp16_arithmetic_stays_close_to_float32(monkeypatch):
    """The float16 path (pre-normalised modulation, dtype hand-offs) runs only on CUDA; CI has no GPU,
    so this lets the fp16 blocks run in float16 on the CPU, where torch supports it."""
    import engine.networks.stylegan2 as sg2
    G = tiny_generator()
    ws = G.mapping(z_batch(), None)
    ref = G.synthesis(ws, noise_mode="const")
    monkeypatch.setattr(sg2, "block_dtype", lambda use_fp16, force_fp32, device, half_dtype=torch.float16:
                        half_dtype if use_fp16 and not force_fp32 else torch.float32)
    x, _ = G.synthesis.b16(*G.synthesis.b8(*G.synthesis.b4(None, None, ws[:, :2]), ws[:, 1:4]), ws[:, 3:6])
    assert x.dtype == torch.float16
    for fused in (True, False):
        img = G.synthesis(ws, noise_mode="const", fused_modconv=fused)
        assert img.dtype == torch.float32
        assert (img - ref).norm() / ref.norm() < 1e-2
    assert torch.equal(G.synthesis(ws, noise_mode="const", force_fp32=True), ref)
