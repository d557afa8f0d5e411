"""Export a StyleGAN2 network to the `.pt` layout of rosinality's stylegan2-pytorch.

That project's checkpoints are `torch.save`d dicts: `g_ema` (and `g`, `d`) state dicts plus
`latent_avg`. Its naming, against NVIDIA's:

    mapping.fc{i}.{weight,bias}           -> style.{i+1}.{weight,bias}       (style.0 is PixelNorm)
    synthesis.b4.const [C,4,4]            -> input.input [1,C,4,4]
    b4.conv1 / b4.torgb                   -> conv1 / to_rgb1
    b{r}.conv0, b{r}.conv1, b{r}.torgb    -> convs.{2j}, convs.{2j+1}, to_rgbs.{j}   (j = 0 for r = 8)
    SynthesisLayer.weight [O,I,k,k]       -> .conv.weight [1,O,I,k,k]
    .affine.{weight,bias}                 -> .conv.modulation.{weight,bias}
    .noise_strength []                    -> .noise.weight [1]
    .bias [O]                             -> .activate.bias [O]   (ToRGB: .bias [1,3,1,1])
    .noise_const [r,r]                    -> noises.noise_{n} [1,1,r,r]  (n counts convolutions from 0)
    D: b{R}.fromrgb                       -> convs.0 (ConvLayer: .0 conv, .1 activation bias)
       b{r}.conv0, conv1, skip            -> convs.{j+1}.conv1, .conv2 (.0 blur, .1 conv, .2 bias), .skip
       b4.conv, b4.fc, b4.out             -> final_conv, final_linear.0, final_linear.1

Scaling: both sides store weights unscaled and apply the He constant (and the mapping's lr
multiplier) at run time with the same values, so weights and biases copy 1:1; the +1 of the
modulation bias is stored on both sides too. Flips: NVIDIA's upsampling convolutions run as a
transposed convolution of the stored kernel, exactly like rosinality's, and both flipped the
TF kernels of those layers when converting them, so no kernel is flipped here. Blur kernels are
buffers there: the normalised 2-D filter, times 4 (the upsampling gain) where it follows an
upsampling step.

Not representable: StyleGAN3 (a different synthesis network), conditional networks (no label
input), and architectures or settings the rosinality classes hard-code differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from engine.checkpoint import family_of_module
from engine.errors import UnsupportedNetworkError
from engine.jobs import atomic_write

__all__ = ["export_rosinality", "rosinality_discriminator_state", "rosinality_generator_state",
           "to_rosinality"]


def _refuse(what: str, why: str) -> None:
    raise UnsupportedNetworkError(f"{what} cannot be exported to rosinality's stylegan2-pytorch: {why}")


def _check_generator(G: nn.Module, key: str) -> None:
    family = family_of_module(G)
    if family == "stylegan3":
        _refuse(key, "it is a StyleGAN3 network, which that project does not implement; use the native "
                     "checkpoint or NVIDIA's pickle instead")
    if family != "stylegan2":
        _refuse(key, f"it is a {family}, not a generator")
    kw = G.init_kwargs
    mapping = kw.get("mapping_kwargs") or {}
    if G.c_dim:
        _refuse(key, f"it is conditional (c_dim={G.c_dim}), and that project's generator takes no label")
    checks = [
        (G.img_channels == 3, f"it makes {G.img_channels}-channel images; ToRGB there makes 3"),
        (G.z_dim == G.w_dim, f"z_dim ({G.z_dim}) differs from w_dim ({G.w_dim}); there both are style_dim"),
        (mapping.get("layer_features") in (None, G.w_dim), "its mapping layers are not w_dim wide"),
        (mapping.get("activation", "lrelu") == "lrelu", "its mapping activation is not leaky ReLU"),
        (kw.get("architecture", "skip") == "skip", f"its architecture is {kw.get('architecture')!r}, not 'skip'"),
        (kw.get("use_noise", True), "it has no noise inputs"),
        (kw.get("kernel_size", 3) == 3, "its convolutions are not 3x3"),
    ]
    for ok, why in checks:
        if not ok:
            _refuse(key, why)


def _modconv(out: dict, sd: Mapping[str, torch.Tensor], src: str, dst: str) -> None:
    out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)              # [1, O, I, k, k]
    out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
    out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]


def _styled_conv(out: dict, sd: Mapping[str, torch.Tensor], src: str, dst: str) -> None:
    _modconv(out, sd, src, dst)
    out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
    out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]


def _to_rgb(out: dict, sd: Mapping[str, torch.Tensor], src: str, dst: str) -> None:
    _modconv(out, sd, src, dst)
    out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)               # [1, 3, 1, 1]


def rosinality_generator_state(G: nn.Module, key: str = "G_ema") -> dict[str, torch.Tensor]:
    """G's state dict in rosinality's Generator naming (see the module docstring)."""
    _check_generator(G, key)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in G.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]

    resolutions = G.synthesis.block_resolutions                               # 4, 8, ..., R
    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)               # [1, C, 4, 4]
    _styled_conv(out, sd, "synthesis.b4.conv1", "conv1")
    _to_rgb(out, sd, "synthesis.b4.torgb", "to_rgb1")
    noises = {0: sd["synthesis.b4.conv1.noise_const"]}
    for j, res in enumerate(resolutions[1:]):
        block = f"synthesis.b{res}"
        # the upsampling FIR kernel there carries the gain of 2x upsampling: 2**2
        up_kernel = sd[f"{block}.resample_filter"] * 4
        _styled_conv(out, sd, f"{block}.conv0", f"convs.{2 * j}")
        out[f"convs.{2 * j}.conv.blur.kernel"] = up_kernel.clone()
        _styled_conv(out, sd, f"{block}.conv1", f"convs.{2 * j + 1}")
        _to_rgb(out, sd, f"{block}.torgb", f"to_rgbs.{j}")
        out[f"to_rgbs.{j}.upsample.kernel"] = up_kernel.clone()
        noises[2 * j + 1] = sd[f"{block}.conv0.noise_const"]
        noises[2 * j + 2] = sd[f"{block}.conv1.noise_const"]
    for n, noise in noises.items():
        out[f"noises.noise_{n}"] = noise.reshape(1, 1, *noise.shape)          # [1, 1, r, r]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _check_discriminator(D: nn.Module, key: str) -> None:
    if family_of_module(D) != "discriminator":
        _refuse(key, "it is not a discriminator")
    kw = D.init_kwargs
    epilogue = kw.get("epilogue_kwargs") or {}
    if D.c_dim:
        _refuse(key, f"it is conditional (c_dim={D.c_dim}), and that project's discriminator takes no label")
    checks = [
        (D.img_channels == 3, f"it reads {D.img_channels}-channel images"),
        (kw.get("architecture", "resnet") == "resnet", f"its architecture is {kw.get('architecture')!r}, not 'resnet'"),
        (epilogue.get("mbstd_group_size", 4) == 4, "its minibatch-stddev group size is "
                                                   f"{epilogue.get('mbstd_group_size')}; that project uses 4"),
        (epilogue.get("mbstd_num_channels", 1) == 1, "its minibatch-stddev layer has more than one channel"),
    ]
    for ok, why in checks:
        if not ok:
            _refuse(key, why)


def rosinality_discriminator_state(D: nn.Module, key: str = "D") -> dict[str, torch.Tensor]:
    """D's state dict in rosinality's Discriminator naming (see the module docstring)."""
    _check_discriminator(D, key)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in D.state_dict().items()}
    resolutions = D.block_resolutions                                        # R, R/2, ..., 8
    out: dict[str, torch.Tensor] = {
        "convs.0.0.weight": sd[f"b{resolutions[0]}.fromrgb.weight"],
        "convs.0.1.bias": sd[f"b{resolutions[0]}.fromrgb.bias"],
    }
    for j, res in enumerate(resolutions):
        src, dst = f"b{res}", f"convs.{j + 1}"
        kernel = sd[f"{src}.resample_filter"]                                # downsampling: gain 1
        out[f"{dst}.conv1.0.weight"] = sd[f"{src}.conv0.weight"]
        out[f"{dst}.conv1.1.bias"] = sd[f"{src}.conv0.bias"]
        out[f"{dst}.conv2.0.kernel"] = kernel.clone()
        out[f"{dst}.conv2.1.weight"] = sd[f"{src}.conv1.weight"]
        out[f"{dst}.conv2.2.bias"] = sd[f"{src}.conv1.bias"]
        out[f"{dst}.skip.0.kernel"] = kernel.clone()
        out[f"{dst}.skip.1.weight"] = sd[f"{src}.skip.weight"]
    out.update({
        "final_conv.0.weight": sd["b4.conv.weight"],
        "final_conv.1.bias": sd["b4.conv.bias"],
        "final_linear.0.weight": sd["b4.fc.weight"],
        "final_linear.0.bias": sd["b4.fc.bias"],
        "final_linear.1.weight": sd["b4.out.weight"],
        "final_linear.1.bias": sd["b4.out.bias"],
    })
    return {k: v.contiguous().clone() for k, v in out.items()}


def _channel_multiplier(G: nn.Module) -> int | None:
    """rosinality's channel_multiplier if G's channels follow its table (512 up to 32 px), else None."""
    channels = {res: getattr(G.synthesis, f"b{res}").conv1.weight.shape[0] for res in G.synthesis.block_resolutions}
    for cm in (1, 2, 4):
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
                 1024: 16 * cm}
        if all(table.get(res) == ch for res, ch in channels.items()):
            return cm
    return None


def to_rosinality(networks: Mapping[str, nn.Module], include_g: bool = True, include_d: bool = True) -> dict[str, Any]:
    """The checkpoint dict rosinality's scripts read: g_ema (+ g, d where present), latent_avg, and a hint."""
    if "G_ema" not in networks:
        raise UnsupportedNetworkError("a rosinality export needs G_ema, the generator its scripts sample from")
    G_ema = networks["G_ema"]
    ckpt: dict[str, Any] = {"g_ema": rosinality_generator_state(G_ema, "G_ema"),
                            "latent_avg": G_ema.mapping.w_avg.detach().to("cpu", torch.float32).clone()}
    if include_g and networks.get("G") is not None:
        ckpt["g"] = rosinality_generator_state(networks["G"], "G")
    if include_d and networks.get("D") is not None:
        ckpt["d"] = rosinality_discriminator_state(networks["D"], "D")
    # Generator(size, style_dim, n_mlp, channel_multiplier, lr_mlp) arguments, as plain data
    ckpt["styledeck"] = {
        "size": int(G_ema.img_resolution), "style_dim": int(G_ema.w_dim), "n_mlp": int(G_ema.mapping.num_layers),
        "channel_multiplier": _channel_multiplier(G_ema),
        "lr_mlp": float((G_ema.init_kwargs.get("mapping_kwargs") or {}).get("lr_multiplier", 0.01)),
    }
    return ckpt


def export_rosinality(networks: Mapping[str, nn.Module] | str | Path, path: str | Path, include_g: bool = True,
                      include_d: bool = True) -> Path:
    """Write `to_rosinality(networks)` with torch.save, atomically; returns the path.

    `networks` is a dict of networks ({'G_ema': G, ...}) or the path of a network file to read.
    """
    if isinstance(networks, (str, Path)):
        from engine.loader import load_network  # the loader imports the formats; only this path needs it
        networks = load_network(networks)
    path = Path(path)
    ckpt = to_rosinality(networks, include_g=include_g, include_d=include_d)
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return path
