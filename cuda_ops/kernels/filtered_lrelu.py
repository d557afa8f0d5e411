"""`styledeck::filtered_lrelu`: fake kernels, autograd and the reference-shaped wrapper.

Imported only once the compiled library has declared the schemas (cuda_ops.build).

The forward op runs bias, upsampling through fu, leaky ReLU * gain, clamp and downsampling through fd
in one tiled pass. When a gradient is needed it also writes one byte per pre-activation sample (its
sign, or "clamped"); the backward op upsamples dL/dy by `down` through fd, multiplies by the
activation's derivative from that mask, and downsamples by `up` through fu, again in one pass.
Gradients flow to x and b only (the filters are fixed buffers). Second-order gradients are not
implemented: StyleGAN3 training has no path-length regularisation, and R1 only differentiates the
discriminator, so nothing differentiates through this op twice; asking for it raises.
"""
from __future__ import annotations

import math

import torch

from ..reference.filtered_lrelu import output_size
from ..reference.upfirdn2d import IntPair, filter_size, parse_padding, parse_scaling

_op = torch.ops.styledeck.filtered_lrelu
_backward_op = torch.ops.styledeck.filtered_lrelu_backward


@torch.library.register_fake("styledeck::filtered_lrelu")
def _(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter, write_mask):
    torch._check(x.ndim == 4, lambda: "filtered_lrelu: x must be [N, C, H, W]")
    torch._check(fu.ndim in (1, 2) and fd.ndim in (1, 2), lambda: "filtered_lrelu: filters must be 1-D or 2-D")
    n, c, h, w = x.shape
    x0, x1, y0, y1 = padding
    (fuw, fuh), (fdw, fdh) = filter_size(fu), filter_size(fd)
    y = x.new_empty([n, c, output_size(h, up, down, y0, y1, fuh, fdh), output_size(w, up, down, x0, x1, fuw, fdw)])
    if not write_mask:
        return y, x.new_empty([0], dtype=torch.uint8)
    mask = x.new_empty([n, c, h * up + y0 + y1 - (fuh - 1), w * up + x0 + x1 - (fuw - 1)], dtype=torch.uint8)
    return y, mask


@torch.library.register_fake("styledeck::filtered_lrelu_backward")
def _(grad, mask, fu, fd, up, down, padding, gain, slope, flip_filter):
    torch._check(mask.ndim == 4 and grad.ndim == 4, lambda: "filtered_lrelu_backward: grad and mask must be 4-D")
    x0, x1, y0, y1 = padding
    (fuw, fuh) = filter_size(fu)
    h = (mask.shape[2] - y0 - y1 + fuh - 1) // up
    w = (mask.shape[3] - x0 - x1 + fuw - 1) // up
    return grad.new_empty([grad.shape[0], grad.shape[1], h, w])


def _setup(ctx, inputs, output):
    _, fu, fd, b, up, down, padding, gain, slope, _, flip_filter, _ = inputs
    ctx.save_for_backward(output[1], fu, fd)
    ctx.args = (up, down, padding, gain, slope, flip_filter)
    ctx.b_dtype = b.dtype


def _backward(ctx, dy, _dmask):
    mask, fu, fd = ctx.saved_tensors
    if mask.numel() == 0:
        raise RuntimeError("filtered_lrelu: the forward ran with write_mask=False, so it cannot be differentiated; "
                           "call cuda_ops.kernels.filtered_lrelu.filtered_lrelu, which sets it when needed")
    dx = _backward_op(dy.contiguous(), mask, fu, fd, *ctx.args)
    db = None
    if ctx.needs_input_grad[3]:  # accumulate half-precision gradients in float32
        db = dx.sum(dim=[0, 2, 3], dtype=torch.promote_types(dx.dtype, torch.float32)).to(ctx.b_dtype)
    return (dx if ctx.needs_input_grad[0] else None), None, None, db, None, None, None, None, None, None, None, None


torch.library.register_autograd("styledeck::filtered_lrelu", _backward, setup_context=_setup)


def _no_second_order(ctx, *grads):
    raise NotImplementedError("filtered_lrelu: second-order gradients are not implemented (StyleGAN3 training "
                              "needs none: no path-length regularisation); use impl='ref' to differentiate twice")


torch.library.register_autograd("styledeck::filtered_lrelu_backward", _no_second_order,
                                setup_context=lambda ctx, inputs, output: None)


def _filter(f: torch.Tensor | None, x: torch.Tensor, name: str) -> torch.Tensor:
    if f is None:
        return torch.ones([1], dtype=torch.float32, device=x.device)
    if f.ndim not in (1, 2):
        raise ValueError(f"a filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    if f.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"filtered_lrelu: {name} requires grad, but the compiled op only differentiates x and b "
                         "(filters are fixed buffers); use impl='ref'")
    return f.to(x.device)


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
    """The compiled `filtered_lrelu`; same signature and result as `cuda_ops.reference.filtered_lrelu`.

    Differentiable once with respect to x and b (see the module docstring).
    """
    if x.ndim != 4:
        raise ValueError(f"filtered_lrelu expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    up, _ = parse_scaling(up)
    down, _ = parse_scaling(down)
    x0, x1, y0, y1 = parse_padding(padding)
    fu = _filter(fu, x, "fu")
    fd = _filter(fd, x, "fd")
    (fuw, fuh), (fdw, fdh) = filter_size(fu), filter_size(fd)
    if output_size(x.shape[3], up, down, x0, x1, fuw, fdw) < 1 or output_size(x.shape[2], up, down, y0, y1, fuh, fdh) < 1:
        raise ValueError(f"filtered_lrelu: padding {padding!r} leaves no output for input {tuple(x.shape)}")
    if b is None:
        b = x.new_zeros([x.shape[1]])
    elif b.ndim != 1 or b.shape[0] != x.shape[1]:
        raise ValueError(f"bias of shape {tuple(b.shape)} does not match dim 1 of x {tuple(x.shape)}")
    write_mask = torch.is_grad_enabled() and (x.requires_grad or b.requires_grad)
    y, _ = _op(x, fu, fd, b, up, down, [x0, x1, y0, y1], float(gain), float(slope),
               -1.0 if clamp is None else float(clamp), bool(flip_filter), write_mask)
    return y
