"""2-D convolution with optional FIR up/downsampling, composed from conv2d and upfirdn2d."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .upfirdn2d import IntPair, UpFirDn2d, filter_size, parse_padding, upfirdn2d


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: IntPair = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
    *,
    op: UpFirDn2d = upfirdn2d,
) -> torch.Tensor:
    """Upsample (zeros + filter f), correlate with w, downsample (filter f + decimate).

    `flip_weight=False` convolves with the spatially flipped kernel, as NVIDIA's layers ask for
    in their upsampling layers; their weights are trained with that convention.
    `op` runs the upfirdn2d (the façade passes its own, so a kernel speeds this up too).
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample expects 4-D x and w, got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"x has {x.shape[1]} channels but w expects {w.shape[1] * groups}")
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = parse_padding(padding)
    # Padding that keeps the image centred through the resampling filter.
    if up > 1:
        x0 += (fw + up - 1) // 2
        x1 += (fw - up) // 2
        y0 += (fh + up - 1) // 2
        y1 += (fh - up) // 2
    if down > 1:
        x0 += (fw - down + 1) // 2
        x1 += (fw - down) // 2
        y0 += (fh - down + 1) // 2
        y1 += (fh - down) // 2

    if not flip_weight:
        w = w.flip([2, 3])
    w = w.to(x.dtype)
    kh, kw = w.shape[2], w.shape[3]

    if up == 1 and down > 1 and kw == 1 and kh == 1:
        # A 1x1 kernel commutes with the filter: decimate first, convolve the smaller image.
        x = op(x, f, down=down, padding=[x0, x1, y0, y1], flip_filter=flip_filter)
        return F.conv2d(x, w, groups=groups)

    x = op(x, f if up > 1 else None, up=up, padding=[x0, x1, y0, y1],
                  gain=up ** 2, flip_filter=flip_filter)
    x = F.conv2d(x, w, groups=groups)
    if down > 1:
        x = op(x, f, down=down, flip_filter=flip_filter)
    return x
