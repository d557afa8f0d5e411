"""The ops every network calls, behind one façade that picks the implementation.

Signatures follow NVIDIA's `torch_utils.ops`, plus `impl`. Today every op runs its plain-PyTorch
reference (`cuda_ops.reference`); compiled kernels plug in here and must match it.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from . import reference
from .reference.upfirdn2d import IntPair, setup_filter

__all__ = ["bias_act", "conv2d_resample", "downsample2d", "filter2d", "filtered_lrelu", "setup_filter",
           "status", "upfirdn2d", "upsample2d"]

Impl = Literal["auto", "ref"]
OPS = ("bias_act", "upfirdn2d", "filtered_lrelu")


def _check_impl(impl: str) -> None:
    if impl not in ("auto", "ref"):
        raise ValueError(f"impl must be 'auto' or 'ref', got {impl!r}")


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: Impl = "auto") -> torch.Tensor:
    """Bias, activation, gain and clamp in one pass where a kernel runs.

    Args:
        x: input, any shape; `b` is added along `dim`.
        act: one of `reference.ACTIVATIONS` ("linear", "relu", "lrelu", ...).
        alpha, gain: activation parameter and output gain; None takes the activation's default.
        clamp: clamp the output to [-clamp, clamp]; None for no clamp.
    Returns:
        A tensor of x's shape and dtype.
    """
    _check_impl(impl)
    return reference.bias_act(x, b, dim, act, alpha, gain, clamp)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: IntPair = 1, down: IntPair = 1,
              padding: IntPair = 0, flip_filter: bool = False, gain: float = 1,
              impl: Impl = "auto") -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample.

    Args:
        x: [N, C, H, W].
        f: [fh, fw] or separable [fw] float32 filter (see `setup_filter`); None is identity.
        up, down: integer factors, or (x, y) pairs.
        padding: int, (px, py) or (x0, x1, y0, y1), applied after upsampling; negative crops.
    Returns:
        [N, C, (H*up + y0 + y1 - fh + 1) / down, (W*up + x0 + x1 - fw + 1) / down], rounded up.
    """
    _check_impl(impl)
    return reference.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None = None, fd: torch.Tensor | None = None,
                   b: torch.Tensor | None = None, up: int = 1, down: int = 1, padding: IntPair = 0,
                   gain: float = math.sqrt(2), slope: float = 0.2, clamp: float | None = None,
                   flip_filter: bool = False, impl: Impl = "auto") -> torch.Tensor:
    """Bias, upsample through fu, leaky ReLU with gain and clamp, downsample through fd (StyleGAN3).

    Returns:
        [N, C, out_h, out_w] with out = (in*up + pad0 + pad1 - (fu-1) - (fd-1) + (down-1)) // down.
    """
    _check_impl(impl)
    return reference.filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)


# Composites of the ops above; they speed up as the ops do.
upsample2d = reference.upsample2d
downsample2d = reference.downsample2d
filter2d = reference.filter2d
conv2d_resample = reference.conv2d_resample


def status() -> dict[str, str]:
    """Per op, which implementation runs and why."""
    return {op: "reference (plain PyTorch; no compiled kernels in this build)" for op in OPS}
