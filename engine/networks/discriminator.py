"""StyleGAN2 discriminator (residual by default), with conditional projection through a mapping network.

Read top down: the per-resolution block, the minibatch standard deviation layer, the 4x4
epilogue and the Discriminator. Children and init kwargs carry NVIDIA's names (`b64.fromrgb`,
`b32.skip`, `b4.fc`, `mapping.embed`), so their state dicts load with strict=True.

Precision: as in the generator, blocks among the `num_fp16_res` highest resolutions run in
float16 only on CUDA and without `force_fp32`; on CPU everything runs in float32 (float16
convolution there is slow or missing, and results must match the float32 reference).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import cuda_ops
from engine.errors import UnsupportedNetworkError
from engine.networks.layers import (MAPPING_KWARGS, Conv2dLayer, FullyConnectedLayer, MappingNetwork, check_kwargs,
                                    plain_kwargs)
from engine.networks.stylegan2 import block_dtype

D_BLOCK_KWARGS = ("activation", "resample_filter", "fp16_channels_last", "freeze_layers")
EPILOGUE_KWARGS = ("mbstd_group_size", "mbstd_num_channels", "activation")


class DiscriminatorBlock(nn.Module):
    """One resolution of D: (fromrgb), conv0, conv1 with 2x downsampling, and a residual skip."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels, 0 = first block (reads the image)
        tmp_channels: int,                # number of intermediate channels
        out_channels: int,                # number of output channels
        resolution: int,                  # resolution of this block
        img_channels: int,                # number of input colour channels
        first_layer_idx: int,             # index of this block's first layer, for freeze_layers
        architecture: str = "resnet",     # 'orig', 'skip' or 'resnet'
        activation: str = "lrelu",        # activation name, as understood by cuda_ops.bias_act
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter taps for resampling
        conv_clamp: float | None = None,  # clamp convolution outputs to +-conv_clamp; None = no clamp
        use_fp16: bool = False,           # run this block in float16 (on CUDA)?
        fp16_channels_last: bool = False,  # channels-last memory format when in float16?
        freeze_layers: int = 0,           # layers with index below this are frozen (buffers, not parameters)
    ):
        if in_channels not in (0, tmp_channels):
            raise UnsupportedNetworkError(
                f"DiscriminatorBlock needs in_channels 0 or {tmp_channels}, got {in_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise UnsupportedNetworkError(f"unknown discriminator architecture {architecture!r}; "
                                          "expected 'orig', 'skip' or 'resnet'")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", cuda_ops.setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable() -> Iterator[bool]:  # one value per layer, in creation order
            while True:
                layer_idx = self.first_layer_idx + self.num_layers
                self.num_layers += 1
                yield layer_idx >= freeze_layers
        trainable_iter = trainable()

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=next(trainable_iter), conv_clamp=conv_clamp,
                                       channels_last=self.channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=next(trainable_iter), conv_clamp=conv_clamp,
                                 channels_last=self.channels_last)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=next(trainable_iter), resample_filter=resample_filter,
                                 conv_clamp=conv_clamp, channels_last=self.channels_last)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=next(trainable_iter), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [N, in_channels, R, R] (None in the first block), img [N, img_channels, R, R] ->
        (x [N, out_channels, R/2, R/2], img [N, img_channels, R/2, R/2] for 'skip', else None)."""
        device = (x if x is not None else img).device
        dtype = block_dtype(self.use_fp16, force_fp32, device)
        memory_format = (torch.channels_last if self.channels_last and dtype == torch.float16
                         else torch.contiguous_format)

        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = cuda_ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None

        if self.architecture == "resnet":
            # sqrt(1/2) on both branches keeps the sum at unit variance.
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)

        assert x.dtype == dtype
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across groups of samples as extra feature maps (Karras et al. 2018)."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size      # samples per group; None = the whole batch
        self.num_channels = num_channels  # how many feature maps to append

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise ValueError(f"minibatch std needs a batch divisible by its group size {g}, got {n}")
        f = self.num_channels
        # Sample i joins group i % (n / g): the batch is split into g interleaved slices.
        y = x.reshape(g, -1, f, c // f, h, w)   # [g, n/g, f, c/f, h, w]
        y = y - y.mean(dim=0)                   # deviation from the group mean
        y = y.square().mean(dim=0)              # variance over the group  [n/g, f, c/f, h, w]
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])               # one number per slice and channel group  [n/g, f]
        y = y.reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)                # back to every sample  [n, f, h, w]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch std, conv, fully connected, output (projected onto cmap when conditional)."""

    def __init__(
        self,
        in_channels: int,                 # number of input channels
        cmap_dim: int,                    # dimensionality of the mapped label, 0 = unconditional
        resolution: int,                  # resolution of this block (4)
        img_channels: int,                # number of input colour channels
        architecture: str = "resnet",     # 'orig', 'skip' or 'resnet'
        mbstd_group_size: int | None = 4,  # group size of the minibatch std layer; None = whole batch
        mbstd_num_channels: int = 1,      # feature maps of the minibatch std layer; 0 = no layer
        activation: str = "lrelu",        # activation name, as understood by cuda_ops.bias_act
        conv_clamp: float | None = None,  # clamp convolution outputs to +-conv_clamp; None = no clamp
    ):
        if architecture not in ("orig", "skip", "resnet"):
            raise UnsupportedNetworkError(f"unknown discriminator architecture {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None,
                force_fp32: bool = False) -> torch.Tensor:
        """x [N, C, 4, 4] -> logits [N, 1]. The head always runs in float32."""
        del force_fp32
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32))
        if self.mbstd is not None:
            x = self.mbstd(x)           # [N, C + mbstd_num_channels, 4, 4]
        x = self.conv(x)                # [N, C, 4, 4]
        x = self.fc(x.flatten(1))       # [N, C]
        x = self.out(x)                 # [N, max(cmap_dim, 1)]
        if self.cmap_dim > 0:
            # Projection discriminator (Miyato & Koyama 2018): score = <out, cmap> / sqrt(cmap_dim).
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class Discriminator(nn.Module):
    """img [N, img_channels, R, R], c [N, c_dim] -> logits [N, 1]."""

    def __init__(
        self,
        c_dim: int,                       # conditioning label (C) dimensionality, 0 = unconditional
        img_resolution: int,              # input resolution, a power of two
        img_channels: int,                # number of input colour channels
        architecture: str = "resnet",     # 'orig', 'skip' or 'resnet'
        channel_base: int = 32768,        # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,           # cap on any layer's channels
        num_fp16_res: int = 4,            # how many of the highest resolutions run in float16
        conv_clamp: float | None = 256,   # clamp convolution outputs to +-conv_clamp; None = no clamp
        cmap_dim: int | None = None,      # dimensionality of the mapped label, None = channels at 4x4
        block_kwargs: dict | None = None,     # arguments for every DiscriminatorBlock
        mapping_kwargs: dict | None = None,   # arguments for the label MappingNetwork
        epilogue_kwargs: dict | None = None,  # arguments for DiscriminatorEpilogue
    ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise UnsupportedNetworkError(f"img_resolution must be a power of two of at least 4, got {img_resolution}")
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        check_kwargs(block_kwargs, D_BLOCK_KWARGS, "Discriminator block_kwargs")
        check_kwargs(mapping_kwargs, MAPPING_KWARGS, "Discriminator mapping_kwargs")
        check_kwargs(epilogue_kwargs, EPILOGUE_KWARGS, "Discriminator epilogue_kwargs")
        self.init_kwargs = plain_kwargs(dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            cmap_dim=cmap_dim, block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
            epilogue_kwargs=epilogue_kwargs))
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]  # R, R/2, ..., 8
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res],
                                       channels[res // 2], resolution=res, first_layer_idx=layer_idx,
                                       use_fp16=res >= fp16_resolution, **block_kwargs, **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None, update_emas: bool = False,
                **block_kwargs: Any) -> torch.Tensor:
        """Logits [N, 1]; block_kwargs: force_fp32."""
        del update_emas  # D keeps no running averages; accepted for NVIDIA's signature
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None  # [N, cmap_dim]
        return self.b4(x, img, cmap)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
