"""Export to rosinality's stylegan2-pytorch layout: names, shapes, and numbers.

The numbers are checked with a small forward pass of that layout written here from its public
description (PixelNorm + EqualLinear mapping, modulated convolutions with a transposed
convolution and blur for upsampling, NoiseInjection, FusedLeakyReLU, skip ToRGBs; ResBlock
discriminator with minibatch stddev), independently of engine/networks; fed the exported
reference network it must reproduce NVIDIA's reference images and logits.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference_data import load_reference, rel_error, state_of
from engine.errors import UnsupportedNetworkError
from engine.networks import discriminator, stylegan2, stylegan3
from engine.rosinality import export_rosinality, to_rosinality

SQRT2 = math.sqrt(2)


# ---------------------------------------------------------------------------------------------- the layout's forward

def fused_lrelu(x, bias):
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * SQRT2


def ros_mapping(sd, z, lr_mul=0.01):
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)            # PixelNorm
    i = 1
    while f"style.{i}.weight" in sd:
        w = sd[f"style.{i}.weight"]
        x = fused_lrelu(F.linear(x, w * (lr_mul / math.sqrt(w.shape[1]))), sd[f"style.{i}.bias"] * lr_mul)
        i += 1
    return x


def upfirdn(x, kernel, up, down, pad0, pad1):
    n, c, h, w = x.shape
    if up > 1:                                                                  # zero insertion
        x = x.view(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).view(n, c, h * up, w * up)
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)              # true convolution
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def modulated_conv(sd, prefix, x, style, demodulate=True, upsample=False):
    weight = sd[f"{prefix}.weight"]                                             # [1, O, I, k, k]
    _, out_ch, in_ch, k, _ = weight.shape
    n, _, h, w = x.shape
    s = F.linear(style, sd[f"{prefix}.modulation.weight"] / math.sqrt(style.shape[1]),
                 sd[f"{prefix}.modulation.bias"])
    wt = weight / math.sqrt(in_ch * k * k) * s.view(n, 1, in_ch, 1, 1)
    if demodulate:
        wt = wt * torch.rsqrt(wt.square().sum([2, 3, 4]) + 1e-8).view(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, h, w)
    if upsample:
        wt = wt.transpose(1, 2).reshape(n * in_ch, out_ch, k, k)
        out = F.conv_transpose2d(x, wt, stride=2, groups=n)
        out = out.view(n, out_ch, *out.shape[2:])
        return upfirdn(out, sd[f"{prefix}.blur.kernel"], 1, 1, 1, 1)
    out = F.conv2d(x, wt.reshape(n * out_ch, in_ch, k, k), padding=k // 2, groups=n)
    return out.view(n, out_ch, h, w)


def styled_conv(sd, prefix, x, style, noise, upsample=False):
    out = modulated_conv(sd, f"{prefix}.conv", x, style, upsample=upsample)
    out = out + sd[f"{prefix}.noise.weight"] * noise
    return fused_lrelu(out, sd[f"{prefix}.activate.bias"])


def to_rgb(sd, prefix, x, style, skip=None):
    out = modulated_conv(sd, f"{prefix}.conv", x, style, demodulate=False) + sd[f"{prefix}.bias"]
    if skip is not None:
        out = out + upfirdn(skip, sd[f"{prefix}.upsample.kernel"], 2, 1, 2, 1)
    return out


def ros_synthesis(sd, ws):
    out = sd["input.input"].repeat(ws.shape[0], 1, 1, 1)
    out = styled_conv(sd, "conv1", out, ws[:, 0], sd["noises.noise_0"])
    skip = to_rgb(sd, "to_rgb1", out, ws[:, 1])
    i, j = 1, 0
    while f"to_rgbs.{j}.bias" in sd:
        out = styled_conv(sd, f"convs.{2 * j}", out, ws[:, i], sd[f"noises.noise_{2 * j + 1}"], upsample=True)
        out = styled_conv(sd, f"convs.{2 * j + 1}", out, ws[:, i + 1], sd[f"noises.noise_{2 * j + 2}"])
        skip = to_rgb(sd, f"to_rgbs.{j}", out, ws[:, i + 2], skip)
        i, j = i + 2, j + 1
    return skip


def conv_layer(sd, prefix, x, down=False, activate=True):
    idx = 0
    if down:
        k = sd[f"{prefix}.1.weight"].shape[-1]
        p = 2 + (k - 1)                                                         # len(blur) - factor + (k - 1)
        x = upfirdn(x, sd[f"{prefix}.0.kernel"], 1, 1, (p + 1) // 2, p // 2)
        idx = 1
    w = sd[f"{prefix}.{idx}.weight"]
    k = w.shape[-1]
    x = F.conv2d(x, w / math.sqrt(w.shape[1] * k * k), stride=2 if down else 1, padding=0 if down else k // 2)
    return fused_lrelu(x, sd[f"{prefix}.{idx + 1}.bias"]) if activate else x


def ros_discriminator(sd, img):
    out = conv_layer(sd, "convs.0", img)
    i = 1
    while f"convs.{i}.conv1.0.weight" in sd:
        y = conv_layer(sd, f"convs.{i}.conv2", conv_layer(sd, f"convs.{i}.conv1", out), down=True)
        skip = conv_layer(sd, f"convs.{i}.skip", out, down=True, activate=False)
        out = (y + skip) / SQRT2
        i += 1
    n, c, h, w = out.shape
    group = min(n, 4)
    std = out.view(group, -1, 1, c, h, w)
    std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    out = torch.cat([out, std.repeat(group, 1, h, w)], 1)
    out = conv_layer(sd, "final_conv", out).view(n, -1)
    w0 = sd["final_linear.0.weight"]
    out = fused_lrelu(F.linear(out, w0 / math.sqrt(w0.shape[1])), sd["final_linear.0.bias"])
    w1 = sd["final_linear.1.weight"]
    return F.linear(out, w1 / math.sqrt(w1.shape[1]), sd["final_linear.1.bias"])


# ---------------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def reference():
    config, weights, expected = load_reference("sg2_uncond")
    G = stylegan2.Generator(**config["G_ema"]["init_kwargs"]).eval().requires_grad_(False)
    G.load_state_dict(state_of(weights, "G_ema"))
    D = discriminator.Discriminator(**config["D"]["init_kwargs"]).eval().requires_grad_(False)
    D.load_state_dict(state_of(weights, "D"))
    return G, D, expected


def expected_generator_shapes(n_mlp, dim, channels, res_log2):
    """rosinality's Generator state-dict keys and shapes, from its layout; channels: res -> width."""
    shapes = {f"style.{i}.{p}": ([dim, dim] if p == "weight" else [dim]) for i in range(1, n_mlp + 1)
              for p in ("weight", "bias")}
    c4 = channels[4]
    shapes["input.input"] = [1, c4, 4, 4]

    def styled(name, cin, cout, res, noise_idx):
        shapes.update({f"{name}.conv.weight": [1, cout, cin, 3, 3], f"{name}.conv.modulation.weight": [cin, dim],
                       f"{name}.conv.modulation.bias": [cin], f"{name}.noise.weight": [1],
                       f"{name}.activate.bias": [cout], f"noises.noise_{noise_idx}": [1, 1, res, res]})

    def rgb(name, cin):
        shapes.update({f"{name}.conv.weight": [1, 3, cin, 1, 1], f"{name}.conv.modulation.weight": [cin, dim],
                       f"{name}.conv.modulation.bias": [cin], f"{name}.bias": [1, 3, 1, 1]})

    styled("conv1", c4, c4, 4, 0)
    rgb("to_rgb1", c4)
    cin = c4
    for j, log2 in enumerate(range(3, res_log2 + 1)):
        res = 2 ** log2
        styled(f"convs.{2 * j}", cin, channels[res], res, 2 * j + 1)
        shapes[f"convs.{2 * j}.conv.blur.kernel"] = [4, 4]
        styled(f"convs.{2 * j + 1}", channels[res], channels[res], res, 2 * j + 2)
        rgb(f"to_rgbs.{j}", channels[res])
        shapes[f"to_rgbs.{j}.upsample.kernel"] = [4, 4]
        cin = channels[res]
    return shapes


def test_generator_layout_and_images(tmp_path, reference):
    G, D, expected = reference
    path = export_rosinality({"G_ema": G, "G": G, "D": D}, tmp_path / "ros.pt")
    ckpt = torch.load(path, weights_only=True)                   # plain tensors and dicts only
    assert set(ckpt) == {"g_ema", "g", "d", "latent_avg", "styledeck"}
    g = ckpt["g_ema"]
    channels = {res: min(2048 // res, 64) for res in (4, 8, 16, 32, 64)}
    assert {k: list(v.shape) for k, v in g.items()} == expected_generator_shapes(4, 64, channels, 6)
    assert torch.equal(ckpt["latent_avg"], G.mapping.w_avg)
    assert ckpt["styledeck"] == {"size": 64, "style_dim": 64, "n_mlp": 4, "channel_multiplier": None, "lr_mlp": 0.01}
    blur = torch.tensor([1., 3., 3., 1.])
    blur = torch.outer(blur, blur) / 64
    assert torch.allclose(g["convs.0.conv.blur.kernel"], blur * 4)   # after upsampling: times the gain 2**2
    assert torch.allclose(ckpt["d"]["convs.1.skip.0.kernel"], blur)

    z = torch.from_numpy(expected["z"])
    with torch.no_grad():
        w = ros_mapping(g, z)
        ours = G.mapping(z, None)[:, 0]
        assert rel_error(w, ours) < 1e-6
        assert rel_error(w, expected["ws_psi1.0"][:, 0]) < 1e-4
        ws = torch.from_numpy(expected["ws_psi0.7"])
        assert rel_error(ros_synthesis(g, ws), expected["img_psi0.7"]) < 1e-4


def test_discriminator_layout_and_logits(reference):
    G, D, expected = reference
    d = to_rosinality({"G_ema": G, "D": D})["d"]
    keys = {"convs.0.0.weight", "convs.0.1.bias", "final_conv.0.weight", "final_conv.1.bias",
            "final_linear.0.weight", "final_linear.0.bias", "final_linear.1.weight", "final_linear.1.bias"}
    for i in range(1, 5):  # 64 -> 32 -> 16 -> 8 -> 4
        keys |= {f"convs.{i}.{k}" for k in ("conv1.0.weight", "conv1.1.bias", "conv2.0.kernel", "conv2.1.weight",
                                            "conv2.2.bias", "skip.0.kernel", "skip.1.weight")}
    assert set(d) == keys
    assert d["final_conv.0.weight"].shape == (64, 65, 3, 3) and d["convs.1.skip.1.weight"].shape == (64, 32, 1, 1)
    with torch.no_grad():
        logits = ros_discriminator(d, torch.from_numpy(expected["img_psi1.0"]))
    assert rel_error(logits, expected["d_logits"]) < 1e-4


def test_optional_parts(tmp_path, reference):
    G, D, _ = reference
    ckpt = to_rosinality({"G_ema": G, "D": D}, include_d=False)
    assert set(ckpt) == {"g_ema", "latent_avg", "styledeck"}


def tiny_sg2(**kwargs):
    args = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, channel_base=64, channel_max=8,
                mapping_kwargs=dict(num_layers=2))
    return stylegan2.Generator(**{**args, **kwargs})


def test_refusals(tmp_path):
    G3 = stylegan3.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=128,
                             channel_max=8, num_layers=4, num_critical=1)
    with pytest.raises(UnsupportedNetworkError, match="G_ema cannot be exported.*StyleGAN3"):
        export_rosinality({"G_ema": G3}, tmp_path / "x.pt")
    with pytest.raises(UnsupportedNetworkError, match=r"conditional \(c_dim=4\)"):
        export_rosinality({"G_ema": tiny_sg2(c_dim=4)}, tmp_path / "x.pt")
    D = discriminator.Discriminator(c_dim=4, img_resolution=8, img_channels=3, channel_base=64, channel_max=8)
    with pytest.raises(UnsupportedNetworkError, match=r"D cannot be exported.*conditional"):
        export_rosinality({"G_ema": tiny_sg2(), "D": D}, tmp_path / "x.pt")
    with pytest.raises(UnsupportedNetworkError, match="architecture is 'resnet'"):
        export_rosinality({"G_ema": tiny_sg2(architecture="resnet")}, tmp_path / "x.pt")
    with pytest.raises(UnsupportedNetworkError, match="needs G_ema"):
        export_rosinality({"D": D}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []      # no temporary file left either


def test_export_from_a_file(tmp_path, reference):
    from engine.checkpoint import save_checkpoint
    G, D, _ = reference
    src = save_checkpoint(tmp_path / "ref.safetensors", {"G_ema": G, "D": D})
    ckpt = torch.load(export_rosinality(src, tmp_path / "ref.pt"), weights_only=True)
    assert set(ckpt) == {"g_ema", "d", "latent_avg", "styledeck"}
    assert torch.equal(ckpt["g_ema"]["input.input"][0], G.synthesis.b4.const)
