"""`styledeck::bias_act`: fake kernel, autograd (first and second order) and the reference-shaped wrapper.

Imported only once the compiled library has declared the schema (cuda_ops.build).
"""
from __future__ import annotations

import torch

from ..reference.bias_act import resolve

_op = torch.ops.styledeck.bias_act
_grad = torch.ops.styledeck.bias_act_grad


def _reduce_to_bias(dx: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over every axis but `dim`: the bias gradient from the input gradient."""
    return dx.sum([d for d in range(dx.ndim) if d != dim % dx.ndim])


@torch.library.register_fake("styledeck::bias_act")
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("styledeck::bias_act_grad")
def _(dy, x, b, dim, act, alpha, gain, clamp, order):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_bias_act(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, act, alpha, gain, clamp)


def _backward_bias_act(ctx, dy):
    x, b = ctx.saved_tensors
    dim = ctx.args[0]
    dx = _grad(dy, x, b, *ctx.args, 1) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
    db = _reduce_to_bias(dx, dim) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None


def _setup_grad(ctx, inputs, output):
    dy, x, b, dim, act, alpha, gain, clamp, order = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.order = order


def _backward_grad(ctx, ddx):
    # out = dy * g_k(z), z = x + b: d out/d dy = g_k(z), d out/dz = dy * g_{k+1}(z).
    dy, x, b = ctx.saved_tensors
    dim = ctx.args[0]
    d_dy = _grad(ddx, x, b, *ctx.args, ctx.order) if ctx.needs_input_grad[0] else None
    d_x = d_b = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        if ctx.order >= 2:
            raise NotImplementedError("bias_act: third-order gradients are not implemented")
        d_x = _grad(ddx * dy, x, b, *ctx.args, ctx.order + 1)
        d_b = _reduce_to_bias(d_x, dim) if b is not None and ctx.needs_input_grad[2] else None
    return d_dy, d_x, d_b, None, None, None, None, None, None


torch.library.register_autograd("styledeck::bias_act", _backward_bias_act, setup_context=_setup_bias_act)
torch.library.register_autograd("styledeck::bias_act_grad", _backward_grad, setup_context=_setup_grad)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """The compiled `bias_act`; same signature and result as `cuda_ops.reference.bias_act`."""
    alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    if b is not None:
        if b.ndim != 1 or x.ndim == 0 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(b.shape)} does not match dim {dim} of x {tuple(x.shape)}")
        if b.dtype != x.dtype:  # the reference's x + b promotes; so do we
            dtype = torch.promote_types(x.dtype, b.dtype)
            x, b = x.to(dtype), b.to(dtype)
    return _op(x, b, dim, act, alpha, gain, clamp)
