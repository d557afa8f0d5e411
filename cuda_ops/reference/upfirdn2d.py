"""Upsample, pad, FIR-filter and downsample in plain PyTorch: the definition of `upfirdn2d`.

The filter is either 2-D [fh, fw] or 1-D [fw], which means separable (applied along x, then y).
Like NVIDIA's op, the filter is applied as a convolution (flipped) unless `flip_filter` is set.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

IntPair = int | Sequence[int]
UpFirDn2d = Callable[..., torch.Tensor]  # upfirdn2d's signature: the reference or the façade's


def parse_scaling(scaling: IntPair) -> tuple[int, int]:
    """An int or (sx, sy) as (sx, sy), each at least 1."""
    sx, sy = (scaling, scaling) if isinstance(scaling, int) else tuple(scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"scaling factors must be at least 1, got {scaling!r}")
    return int(sx), int(sy)


def parse_padding(padding: IntPair) -> tuple[int, int, int, int]:
    """An int, (px, py) or (x0, x1, y0, y1) as (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    if len(padding) == 4:
        return tuple(padding)  # type: ignore[return-value]
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding!r}")


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter; None is the 1x1 identity."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"a filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(
    f,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """A float32 filter tensor from taps: 1-D taps become separable when long, else their outer product."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8  # short filters are cheaper as one 2-D pass
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: IntPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Zero-insert upsample by `up`, pad (negative crops), filter with `f` * gain, keep every `down`-th pixel."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    n, c, h, w = x.shape

    if upx > 1 or upy > 1:  # zeros after every pixel: [N, C, H*upy, W*upx]
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]

    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # conv2d correlates; a FIR filter convolves
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        k = f[None, None].expand(c, 1, f.shape[0])
        x = F.conv2d(x, k.unsqueeze(2), groups=c)  # along x
        x = F.conv2d(x, k.unsqueeze(3), groups=c)  # along y

    return x[:, :, ::downy, ::downx]


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: IntPair = 2, padding: IntPair = 0,
               flip_filter: bool = False, gain: float = 1, *, op: UpFirDn2d = upfirdn2d) -> torch.Tensor:
    """Upsample by `up` keeping the image centred: output size is input size * up (plus padding).

    `op` runs the upfirdn2d (the façade passes its own, so a kernel speeds this up too).
    """
    upx, upy = parse_scaling(up)
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [x0 + (fw + upx - 1) // 2, x1 + (fw - upx) // 2, y0 + (fh + upy - 1) // 2, y1 + (fh - upy) // 2]
    return op(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: IntPair = 2, padding: IntPair = 0,
                 flip_filter: bool = False, gain: float = 1, *, op: UpFirDn2d = upfirdn2d) -> torch.Tensor:
    """Downsample by `down` keeping the image centred: output size is input size / down (plus padding)."""
    downx, downy = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [x0 + (fw - downx + 1) // 2, x1 + (fw - downx) // 2, y0 + (fh - downy + 1) // 2, y1 + (fh - downy) // 2]
    return op(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: IntPair = 0,
             flip_filter: bool = False, gain: float = 1, *, op: UpFirDn2d = upfirdn2d) -> torch.Tensor:
    """Filter keeping the size (plus padding)."""
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return op(x, f, padding=p, flip_filter=flip_filter, gain=gain)
