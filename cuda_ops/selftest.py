"""First-use self-test of each compiled op on each device: a small random probe against the reference.

A kernel that disagrees is never used on that device, so a wrong kernel cannot make a wrong image.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import reference

TOLERANCE = 1e-4  # relative L2 error; float32 kernels land near 1e-7 (METHOD.md: "far under 1e-3")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf on a shape mismatch or a non-finite value."""
    if out.shape != ref.shape:
        return math.inf
    out, ref = out.detach().double(), ref.detach().double()
    err = float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    return err if math.isfinite(err) else math.inf


def _probes(op: str, device: torch.device, g: torch.Generator) -> list[tuple[tuple, dict]]:
    """(args, kwargs) for the reference signature of `op`; odd sizes catch index bugs."""
    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    if op == "bias_act":
        return [((randn(2, 5, 3, 7), randn(5)), dict(act="lrelu", clamp=0.8)),
                ((randn(3, 4, 5), randn(4)), dict(act="swish", gain=0.7)),
                ((randn(6, 5), randn(5)), dict(act="tanh"))]
    if op == "upfirdn2d":
        f2 = torch.rand(4, 3, generator=g).to(device) + 0.1
        f1 = torch.rand(8, generator=g).to(device) + 0.1
        return [((randn(2, 3, 9, 7), f2), dict(up=2, padding=(2, 1, 3, 0), gain=4.0)),
                ((randn(1, 2, 11, 10), f1), dict(down=(2, 3), padding=(3, -1, 2, 4), flip_filter=True)),
                ((randn(1, 2, 5, 6), f1), dict(up=(3, 2), down=2, padding=(4, 3, 5, 2)))]
    if op == "filtered_lrelu":
        fu = torch.rand(6, generator=g).to(device) + 0.1
        fd = torch.rand(5, 5, generator=g).to(device) + 0.1
        return [((randn(2, 3, 8, 9), fu / fu.sum(), fd / fd.sum(), randn(3)),
                 dict(up=2, down=2, padding=(5, 4, 4, 5), gain=1.4, slope=0.2, clamp=0.6)),
                ((randn(1, 2, 7, 6), fu / fu.sum(), None, randn(2)), dict(up=2, padding=(3, 2, 2, 3)))]
    raise ValueError(f"no self-test probe for {op!r}")


def check(op: str, kernel: Callable, device: torch.device) -> str | None:
    """None if `kernel` matches the reference `op` (forward and x-gradient) on `device`, else why not."""
    ref_fn = getattr(reference, op)
    g = torch.Generator().manual_seed(1234)
    worst = 0.0
    try:
        with torch.enable_grad():
            for args, kwargs in _probes(op, device, g):
                # Forward and the gradient w.r.t. x: training runs both.
                outs, grads = [], []
                for fn in (kernel, ref_fn):
                    x = args[0].detach().requires_grad_()
                    out = fn(x, *args[1:], **kwargs)
                    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device)
                    outs.append(out.detach())
                    grads.append(torch.autograd.grad(out, x, dy)[0])
                worst = max(worst, rel_error(*outs), rel_error(*grads))
    except Exception as exc:  # noqa: BLE001 - a kernel that raises on a valid probe is as bad as a wrong one
        return f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    if worst > TOLERANCE:
        return f"relative error {worst:.2e} > {TOLERANCE:.0e}"
    return None
