"""`styledeck::upfirdn2d`: fake kernel, autograd (any order) and the reference-shaped wrapper.

Imported only once the compiled library has declared the schema (cuda_ops.build).
"""
from __future__ import annotations

import torch

from ..reference.upfirdn2d import IntPair, parse_padding, parse_scaling

_op = torch.ops.styledeck.upfirdn2d


def _out_size(in_size, up: int, down: int, pad0: int, pad1: int, taps: int):
    return (in_size * up + pad0 + pad1 - taps) // down + 1


@torch.library.register_fake("styledeck::upfirdn2d")
def _(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    torch._check(x.ndim == 4 and f.ndim == 2, lambda: "upfirdn2d: x must be 4-D and f 2-D")
    n, c, h, w = x.shape
    out_h = _out_size(h, upy, downy, pady0, pady1, f.shape[0])
    out_w = _out_size(w, upx, downx, padx0, padx1, f.shape[1])
    return x.new_empty([n, c, out_h, out_w])


def _setup(ctx, inputs, output):
    x, f, *args = inputs
    ctx.save_for_backward(f)
    ctx.args = args
    ctx.in_size = x.shape[2:]
    ctx.out_size = output.shape[2:]


def _backward(ctx, dy):
    # The adjoint of zero-insert/pad/correlate/decimate is zero-insert by `down`, correlate with
    # the flipped filter, crop back and decimate by `up`: upfirdn2d again, so it differentiates too.
    (f,) = ctx.saved_tensors
    upx, upy, downx, downy, px0, px1, py0, py1, flip, gain = ctx.args
    (h, w), (oh, ow) = ctx.in_size, ctx.out_size
    fh, fw = f.shape
    dx = None
    if ctx.needs_input_grad[0]:
        dx = _op(dy, f, downx, downy, upx, upy,
                 fw - px0 - 1, w * upx - ow * downx + px0 - upx + 1,
                 fh - py0 - 1, h * upy - oh * downy + py0 - upy + 1,
                 not flip, gain)
    return dx, None, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("styledeck::upfirdn2d", _backward, setup_context=_setup)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: IntPair = 1, down: IntPair = 1,
              padding: IntPair = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """The compiled `upfirdn2d`; same signature and result as `cuda_ops.reference.upfirdn2d`.

    The filter gets no gradient (it is a fixed buffer in every network here).
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.ndim == 2:
        return _op(x, f, upx, upy, downx, downy, x0, x1, y0, y1, flip_filter, float(gain))
    if f.ndim != 1:
        raise ValueError(f"a filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    # Separable: one pass along x, one along y. The pass that shrinks the image more goes first,
    # so the second one has less to do.
    n, c, h, w = x.shape
    taps = f.shape[0]
    x_first = h * _out_size(w, upx, downx, x0, x1, taps) <= w * _out_size(h, upy, downy, y0, y1, taps)
    passes = [(f[None, :], (upx, 1, downx, 1, x0, x1, 0, 0)), (f[:, None], (1, upy, 1, downy, 0, 0, y0, y1))]
    if not x_first:
        passes.reverse()
    (fa, a), (fb, b) = passes
    x = _op(x, fa, *a, flip_filter, float(gain))
    return _op(x, fb, *b, flip_filter, 1.0)
