"""StyleGAN2 generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Read top down: the modulated convolution layer, the ToRGB layer, the per-resolution block, the
synthesis network and the Generator that joins it to the mapping network. Children and init
kwargs carry NVIDIA's names, so their state dicts load with strict=True and their pickles'
recorded kwargs rebuild the same network.

Precision: blocks among the `num_fp16_res` highest resolutions run in float16 only on CUDA and
only when `force_fp32` is not set. On CPU everything runs in float32, because float16
convolution there is slow and not always implemented, and the results must match the float32
reference; NVIDIA's code makes the same choice.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

import cuda_ops
from engine.errors import UnsupportedNetworkError
from engine.networks.layers import (MAPPING_KWARGS, Conv2dLayer, FullyConnectedLayer, MappingNetwork,
                                    activation_gain, check_kwargs, modulated_conv2d, plain_kwargs)

NoiseMode = Literal["random", "const", "none"]

LAYER_KWARGS = ("kernel_size", "use_noise", "activation")
BLOCK_KWARGS = ("architecture", "resample_filter", "conv_clamp", "fp16_channels_last",
                "fused_modconv_default") + LAYER_KWARGS
SYNTHESIS_KWARGS = ("channel_base", "channel_max", "num_fp16_res") + BLOCK_KWARGS


def block_dtype(use_fp16: bool, force_fp32: bool, device: torch.device,
                half_dtype: torch.dtype = torch.float16) -> torch.dtype:
    """`half_dtype` (float16 unless the fast render path picks bfloat16) for an fp16 block on CUDA
    unless forced to float32; float32 otherwise (see module doc)."""
    return half_dtype if use_fp16 and not force_fp32 and device.type == "cuda" else torch.float32


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution, optional 2x upsampling, per-pixel noise, bias and activation."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels
        out_channels: int,                # number of output channels
        w_dim: int,                       # intermediate latent (W) dimensionality
        resolution: int,                  # output resolution of this layer
        kernel_size: int = 3,             # convolution kernel size
        up: int = 1,                      # integer upsampling factor
        use_noise: bool = True,           # add per-pixel noise?
        activation: str = "lrelu",        # activation name, as understood by cuda_ops.bias_act
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter taps for upsampling
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp; None = no clamp
        channels_last: bool = False,      # keep the weight in channels-last memory format?
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        # Styles start at 1 (bias_init=1): an untrained layer begins as a plain convolution.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", cuda_ops.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "random",
                fused_modconv: bool = True, gain: float = 1) -> torch.Tensor:
        """x [N, in_channels, R / up, R / up], w [N, w_dim] -> [N, out_channels, R, R]."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)  # [N, in_channels]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [R, R], the same for every sample

        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return cuda_ops.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation (the colours keep their scale)."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels
        out_channels: int,                # number of image channels
        w_dim: int,                       # intermediate latent (W) dimensionality
        kernel_size: int = 1,             # convolution kernel size
        conv_clamp: float | None = None,  # clamp the output to +-conv_clamp; None = no clamp
        channels_last: bool = False,      # keep the weight in channels-last memory format?
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation the He scale has to be applied explicitly; folding it into the
        # styles is cheaper than scaling the weight.
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x [N, in_channels, R, R], w [N, w_dim] -> [N, img_channels, R, R]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return cuda_ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (const |) conv0 (up 2x), conv1, and ToRGB."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels, 0 = first block (learned constant)
        out_channels: int,                # number of output channels
        w_dim: int,                       # intermediate latent (W) dimensionality
        resolution: int,                  # resolution of this block
        img_channels: int,                # number of output colour channels
        is_last: bool,                    # is this the last block?
        architecture: str = "skip",       # 'orig', 'skip' or 'resnet'
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter taps for resampling
        conv_clamp: float | None = 256,   # clamp convolution outputs to +-conv_clamp; None = no clamp
        use_fp16: bool = False,           # run this block in float16 (on CUDA)?
        fp16_channels_last: bool = False,  # channels-last memory format when in float16?
        fused_modconv_default: bool | str = True,  # default fused_modconv; 'inference_only' = not when training
        **layer_kwargs: Any,              # handed to every SynthesisLayer
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise UnsupportedNetworkError(f"unknown synthesis architecture {architecture!r}; "
                                          "expected 'orig', 'skip' or 'resnet'")
        check_kwargs(layer_kwargs, LAYER_KWARGS, "SynthesisBlock")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", cuda_ops.setup_filter(list(resample_filter)))
        self.num_conv = 0   # how many ws the convolutions take
        self.num_torgb = 0  # how many ws the ToRGB takes (it shares the next block's first w)

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(
        self,
        x: torch.Tensor | None,         # features from the previous block [N, in_channels, R/2, R/2]
        img: torch.Tensor | None,       # image so far [N, img_channels, R/2, R/2] (skip), or None
        ws: torch.Tensor,               # [N, num_conv + num_torgb, w_dim]
        force_fp32: bool = False,       # run in float32 even if this is an fp16 block
        fused_modconv: bool | str | None = None,  # None = fused_modconv_default
        update_emas: bool = False,      # unused; accepted for NVIDIA's signature
        half_dtype: torch.dtype = torch.float16,  # what an fp16 block runs in on CUDA (render fast path)
        channels_last: bool | None = None,  # half-precision activations channels-last; None = fp16_channels_last
        **layer_kwargs: Any,            # noise_mode, handed to the layers
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features [N, out_channels, R, R], image [N, img_channels, R, R] or None)."""
        del update_emas
        if ws.shape[1] != self.num_conv + self.num_torgb:
            raise ValueError(f"block b{self.resolution} takes {self.num_conv + self.num_torgb} ws, "
                             f"got {ws.shape[1]}")
        w_iter = iter(ws.unbind(dim=1))
        dtype = block_dtype(self.use_fp16, force_fp32, ws.device, half_dtype)
        if channels_last is None:
            channels_last = self.channels_last
        memory_format = (torch.channels_last if channels_last and dtype != torch.float32
                         else torch.contiguous_format)
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == "resnet":
            x = x.to(dtype=dtype, memory_format=memory_format)
            # sqrt(1/2) on both branches keeps the sum at unit variance.
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=math.sqrt(0.5), **layer_kwargs)
            x = y + x
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            img = cuda_ops.upsample2d(img, self.resample_filter)  # [N, img_channels, R, R]
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution]."""

    def __init__(
        self,
        w_dim: int,                  # width of each w
        img_resolution: int,         # output side in pixels, a power of two
        img_channels: int,           # 3 for RGB
        channel_base: int = 32768,   # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,      # cap on any layer's channels
        num_fp16_res: int = 4,       # how many of the highest resolutions run in float16
        **block_kwargs: Any,         # handed to every block, as the pickle recorded them
    ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise UnsupportedNetworkError(f"img_resolution must be a power of two of at least 4, got {img_resolution}")
        check_kwargs(block_kwargs, BLOCK_KWARGS, "SynthesisNetwork")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]  # 4, 8, ..., R
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim,
                                   resolution=res, img_channels=img_channels, is_last=is_last,
                                   use_fp16=res >= fp16_resolution, **block_kwargs)
            # Each block's ToRGB reuses the next block's first w, so only the last one adds a w.
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs: Any) -> torch.Tensor:
        """block_kwargs: noise_mode, force_fp32, fused_modconv, update_emas, half_dtype, channels_last."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        block_ws = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv

        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, **block_kwargs)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


# stylegan2-ada-pytorch's SynthesisNetwork/SynthesisBlock defaults where they differ from stylegan3's;
# a pickle in that form that leaves them out means these.
_ADA_SYNTHESIS_DEFAULTS = {"num_fp16_res": 0, "conv_clamp": None}


class Generator(nn.Module):
    """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, img_resolution, img_resolution]."""

    def __init__(
        self,
        z_dim: int,                    # input latent (Z) dimensionality
        c_dim: int,                    # conditioning label (C) dimensionality, 0 = unconditional
        w_dim: int,                    # intermediate latent (W) dimensionality
        img_resolution: int,           # output resolution
        img_channels: int,             # number of output colour channels
        mapping_kwargs: dict | None = None,   # arguments for MappingNetwork
        synthesis_kwargs: dict | None = None,  # stylegan2-ada-pytorch form: SynthesisNetwork arguments as one dict
        **kwargs: Any,                 # stylegan3 form: SynthesisNetwork arguments, flattened
    ):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        if synthesis_kwargs is not None:
            overlap = sorted(set(synthesis_kwargs) & set(kwargs))
            if overlap:
                raise UnsupportedNetworkError(
                    f"Generator got {', '.join(overlap)} both flattened and in synthesis_kwargs")
            kwargs = {**_ADA_SYNTHESIS_DEFAULTS, **synthesis_kwargs, **kwargs}
        check_kwargs(kwargs, SYNTHESIS_KWARGS, "Generator")
        check_kwargs(mapping_kwargs, MAPPING_KWARGS, "Generator mapping_kwargs")
        # The stylegan3-repo form, so that type(G)(**G.init_kwargs) rebuilds this network.
        self.init_kwargs = plain_kwargs(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                             img_channels=img_channels, mapping_kwargs=mapping_kwargs, **kwargs))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Synthesis first: NVIDIA registers it first, and the mapping needs its num_ws.
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **plain_kwargs(kwargs))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,                       # [N, z_dim]
        c: torch.Tensor | None,                # [N, c_dim]
        truncation_psi: float = 1,             # w_avg + psi * (w - w_avg); 1 = off
        truncation_cutoff: int | None = None,  # truncate only the first `cutoff` ws; None = all
        update_emas: bool = False,             # update w_avg from this batch?
        **synthesis_kwargs: Any,               # noise_mode, force_fp32, fused_modconv
    ) -> torch.Tensor:
        """img [N, img_channels, img_resolution, img_resolution], roughly in [-1, 1]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"img_resolution={self.img_resolution}, img_channels={self.img_channels}")
