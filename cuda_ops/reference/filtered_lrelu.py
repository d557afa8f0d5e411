"""Upsample, leaky ReLU, clamp and downsample in plain PyTorch: the definition of `filtered_lrelu`."""
from __future__ import annotations

import math

import torch

from .bias_act import bias_act
from .upfirdn2d import IntPair, filter_size, parse_padding, parse_scaling, upfirdn2d


def output_size(in_size: int, up: int, down: int, pad0: int, pad1: int, fu: int, fd: int) -> int:
    """Output length along one axis."""
    return (in_size * up + pad0 + pad1 - (fu - 1) - (fd - 1) + (down - 1)) // down


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: IntPair = 0,
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
    flip_filter: bool = False,
) -> torch.Tensor:
    """x + b, upsampled by `up` through fu, leaky ReLU * gain, clamped, downsampled by `down` through fd."""
    if x.ndim != 4:
        raise ValueError(f"filtered_lrelu expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    up, _ = parse_scaling(up)
    down, _ = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    fu_w, fu_h = filter_size(fu)
    fd_w, fd_h = filter_size(fd)
    out_w = output_size(x.shape[3], up, down, x0, x1, fu_w, fd_w)
    out_h = output_size(x.shape[2], up, down, y0, y1, fu_h, fd_h)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"filtered_lrelu: padding {padding!r} leaves no output for input {tuple(x.shape)}")

    x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=[x0, x1, y0, y1], gain=up ** 2, flip_filter=flip_filter)
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    x = upfirdn2d(x, fd, down=down, flip_filter=flip_filter)
    assert x.shape[2:] == (out_h, out_w), (x.shape, out_h, out_w)
    return x
