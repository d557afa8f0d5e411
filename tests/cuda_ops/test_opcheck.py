"""torch.library.opcheck on every compiled op: schema, fake kernel, autograd registration, AOT dispatch.

opcheck checks the registration, not the numbers (test_cpu_kernels / test_cuda_kernels do that).
"""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import kernels


def _samples(device: str, dtype: torch.dtype) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_(grad)

    f2 = torch.rand(4, 3, generator=g).to(device)
    return [
        ("bias_act", (randn(2, 5, 3, 4), randn(5), 1, "lrelu", 0.2, 1.4, 0.9)),
        ("bias_act", (randn(3, 6), None, 1, "swish", 0.0, 1.0, -1.0)),
        ("bias_act_grad", (randn(2, 5, 3), randn(2, 5, 3), randn(5), 1, "tanh", 0.0, 1.0, -1.0, 1)),
        ("bias_act_grad", (randn(2, 5, 3, grad=False), randn(2, 5, 3, grad=False), None, 1, "sigmoid", 0.0, 2.0,
                           0.5, 2)),
        ("upfirdn2d", (randn(2, 3, 7, 6), f2, 2, 2, 1, 1, 2, 1, 1, 2, False, 4.0)),
        ("upfirdn2d", (randn(1, 2, 9, 8), f2, 1, 2, 2, 1, -1, 3, 2, 0, True, 1.0)),
    ]


def _run_opcheck(device: str, dtype: torch.dtype):
    for name, args in _samples(device, dtype):
        torch.library.opcheck(getattr(torch.ops.styledeck, name), args)


def test_opcheck_cpu():
    kernels("cpu")
    _run_opcheck("cpu", torch.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_cuda(dtype):
    kernels("cuda")
    _run_opcheck("cuda", dtype)
