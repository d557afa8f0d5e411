"""The CUDA kernels against the reference on the GPU (skipped elsewhere, with the reason).

Tolerances follow /work/.library/device/METHOD.md: relative L2 error against a float64 reference,
float32 far under 1e-3 (we ask 1e-5), float16 / bfloat16 operands between 1e-3 and 1e-2; NaN never
passes (rel_error turns it into inf). Outputs are poisoned before each kernel call by the caching
allocator's reuse of a NaN-filled buffer, so an unwritten element shows up as NaN.
"""
from __future__ import annotations

import pytest
import torch

import cuda_ops
from cuda_ops import reference
from kernel_helpers import kernels, random_upfirdn_cases, rel_error

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
ACTS = sorted(reference.ACTIVATIONS)


@pytest.fixture(scope="module")
def k():
    bias_act, upfirdn2d = kernels("cuda")
    return type("Kernels", (), {"bias_act": staticmethod(bias_act), "upfirdn2d": staticmethod(upfirdn2d)})


def _poison():
    """Fill freed cached blocks with NaN so a kernel output that reuses them shows unwritten elements."""
    junk = torch.full((1 << 22,), float("nan"), device="cuda")
    del junk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_cuda_matches_the_reference(k, act, dtype):
    torch.manual_seed(ACTS.index(act))
    for shape, dim, clamp in [((3, 8, 7, 5), 1, None), ((4, 64, 33, 17), 1, 0.7), ((2, 9), -1, 256.0)]:
        x64 = torch.randn(shape, dtype=torch.float64, device="cuda") * 2
        b64 = torch.randn(shape[dim], dtype=torch.float64, device="cuda")
        x, b = x64.to(dtype).requires_grad_(), b64.to(dtype).requires_grad_()
        _poison()
        out = k.bias_act(x, b, dim=dim, act=act, gain=1.3, clamp=clamp)
        ref = reference.bias_act(x.double(), b.double(), dim=dim, act=act, gain=1.3, clamp=clamp)
        assert out.dtype == dtype
        assert rel_error(out, ref) < TOL[dtype], (shape, clamp)
        dy = torch.randn_like(ref)
        gx, gb = torch.autograd.grad(out, (x, b), dy.to(dtype))
        xr, br = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        wx, wb = torch.autograd.grad(reference.bias_act(xr, br, dim=dim, act=act, gain=1.3, clamp=clamp), (xr, br), dy)
        # Elements at the clamp boundary may round to the other side in low precision: allow a little more.
        assert rel_error(gx, wx) < 4 * TOL[dtype] and rel_error(gb, wb) < 4 * TOL[dtype], (shape, clamp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_upfirdn2d_cuda_matches_the_reference(k, dtype):
    for i, case in enumerate(random_upfirdn_cases(60, seed=7, max_side=40)):
        torch.manual_seed(i)
        x = torch.randn(case.shape, device="cuda").to(dtype).requires_grad_()
        f = case.filter(torch.float32, "cuda")
        _poison()
        out = k.upfirdn2d(x, f, **case.kwargs())
        ref = reference.upfirdn2d(x.double(), f.double(), **case.kwargs())
        assert out.dtype == dtype and out.shape == ref.shape
        assert rel_error(out, ref) < TOL[dtype], case
        dy = torch.randn_like(ref)
        (got,) = torch.autograd.grad(out, x, dy.to(dtype))
        xr = x.detach().double().requires_grad_()
        (want,) = torch.autograd.grad(reference.upfirdn2d(xr, f.double(), **case.kwargs()), xr, dy)
        assert rel_error(got, want) < TOL[dtype], case


def test_second_order_cuda_matches_the_reference(k):
    torch.manual_seed(3)
    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    f = reference.setup_filter([1, 3, 3, 1], device="cuda")

    def r1_like(bias_act, upfirdn2d):
        y = bias_act(upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4), b, act="lrelu", clamp=1.0)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (x, b))

    got = r1_like(k.bias_act, k.upfirdn2d)
    want = r1_like(reference.bias_act, reference.upfirdn2d)
    for g, w in zip(got, want):
        assert rel_error(g, w) < 1e-4


def test_large_filters_and_images_use_the_global_memory_path(k):
    torch.manual_seed(4)
    x = torch.randn(1, 4, 300, 200, device="cuda")
    f = torch.rand(96, 97, device="cuda")  # 37 KB of taps: over the shared-memory limit
    out = k.upfirdn2d(x, f, up=2, down=3, padding=(40, 41, 30, 33))
    assert rel_error(out, reference.upfirdn2d(x.double(), f.double(), up=2, down=3, padding=(40, 41, 30, 33))) < 1e-5


def test_facade_uses_the_cuda_kernels_after_the_self_test(k):
    x = torch.randn(1, 4, 8, 8, device="cuda")
    cuda_ops.bias_act(x, act="lrelu")
    cuda_ops.upfirdn2d(x, None, up=2)
    status = cuda_ops.status()
    for op in ("bias_act", "upfirdn2d"):
        assert "cuda:0: kernel (CUDA, self-test passed" in status[op], status[op]
