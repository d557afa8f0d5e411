"""The C++ CPU kernels against the plain-PyTorch reference: forward, backward and second order.

The CPU kernels run the same per-element arithmetic (csrc/*.h) as the CUDA kernels, so these tests
check the index, phase, filter, activation and clamp logic of both without a GPU. CI builds them,
so a failed build fails here rather than skipping.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cuda_ops
from cuda_ops import reference, selftest
from kernel_helpers import kernels, random_upfirdn_cases, rel_error

ACTS = sorted(reference.ACTIVATIONS)


@pytest.fixture(scope="module")
def k():
    bias_act, upfirdn2d = kernels("cpu")
    return type("Kernels", (), {"bias_act": staticmethod(bias_act), "upfirdn2d": staticmethod(upfirdn2d)})


# ---------------------------------------------------------------------------------------------- bias_act

@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_act_forward_and_backward_match_the_reference(k, act, dtype):
    torch.manual_seed(ACTS.index(act))
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for shape, dim, clamp, gain in [((3, 8, 7, 5), 1, None, None), ((4, 6, 5), 2, 0.7, 1.7),
                                    ((2, 9), 1, 0.0, None), ((5, 3, 4), 0, 3.0, 0.5)]:
        x = (torch.randn(shape, dtype=dtype) * 3).requires_grad_()
        b = torch.randn(shape[dim], dtype=dtype, requires_grad=True)
        out = k.bias_act(x, b, dim=dim, act=act, gain=gain, clamp=clamp)
        ref = reference.bias_act(x, b, dim=dim, act=act, gain=gain, clamp=clamp)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        assert rel_error(out, ref) < tol, (shape, dim, clamp)
        dy = torch.randn_like(ref)
        got = torch.autograd.grad(out, (x, b), dy)
        want = torch.autograd.grad(ref, (x, b), dy)
        for g, w in zip(got, want):
            assert rel_error(g, w) < tol or torch.equal(g, w), (shape, dim, clamp)


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_second_order_matches_the_reference(k, act):
    """R1 and path-length regularisation differentiate the gradient again."""
    torch.manual_seed(10 + ACTS.index(act))
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 4, 3, dtype=torch.float64)

    def second(fn):
        (gx,) = torch.autograd.grad(fn(x, b, act=act, gain=1.3, clamp=1.5), x, dy, create_graph=True)
        # d/d(x, b, dy) of <gx, v>: touches both the d/dx and the d/d(dy) branch of the gradient op
        return torch.autograd.grad((gx * v).sum(), (x, b, dy), allow_unused=True, materialize_grads=True)

    for g, w in zip(second(k.bias_act), second(reference.bias_act)):
        assert rel_error(g, w) < 1e-12 or (g.abs().max() == 0 and w.abs().max() == 0)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "softplus", "elu"])
def test_bias_act_passes_gradcheck_and_gradgradcheck(k, act):
    torch.manual_seed(20)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: k.bias_act(x, b, act=act, gain=0.8, clamp=1.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_handles_strides_no_bias_and_promotion(k):
    torch.manual_seed(21)
    x = torch.randn(4, 10, 6, 8).permute(0, 3, 1, 2)  # channels-last-like strides: [4, 8, 10, 6]
    b = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(k.bias_act(x, b, act="lrelu"), reference.bias_act(x, b, act="lrelu"))
    assert k.bias_act(x, b).dtype == torch.float64  # float32 + float64 bias promotes, as x + b does
    torch.testing.assert_close(k.bias_act(x, None, act="selu", clamp=0.5),
                               reference.bias_act(x, None, act="selu", clamp=0.5))


def test_bias_act_rejects_bad_arguments_like_the_reference(k):
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="unknown activation"):
        k.bias_act(x, act="gelu-ish")
    with pytest.raises(ValueError, match="does not match"):
        k.bias_act(x, torch.zeros(5))


# --------------------------------------------------------------------------------------------- upfirdn2d

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_random_configurations_match_the_reference(k, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for i, case in enumerate(random_upfirdn_cases(60, seed=1 if dtype == torch.float32 else 2)):
        torch.manual_seed(i)
        x = torch.randn(case.shape, dtype=dtype, requires_grad=True)
        f = case.filter(dtype)
        out = k.upfirdn2d(x, f, **case.kwargs())
        ref = reference.upfirdn2d(x, f, **case.kwargs())
        assert out.shape == ref.shape, case
        assert rel_error(out, ref) < tol, case
        dy = torch.randn_like(ref)
        (got,) = torch.autograd.grad(out, x, dy)
        (want,) = torch.autograd.grad(ref, x, dy)
        assert rel_error(got, want) < tol, case


def test_upfirdn2d_second_order_matches_the_reference(k):
    """The gradient is upfirdn2d again, so its own gradient (w.r.t. dy) must match too."""
    for i, case in enumerate(random_upfirdn_cases(15, seed=3)):
        torch.manual_seed(100 + i)
        x = torch.randn(case.shape, dtype=torch.float64, requires_grad=True)
        f = case.filter()

        def second(fn):
            out = fn(x, f, **case.kwargs())
            dy = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i),
                             requires_grad=True)
            (gx,) = torch.autograd.grad(out, x, dy, create_graph=True)
            v = torch.randn(gx.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i + 1))
            return torch.autograd.grad((gx * v).sum(), dy)[0]

        assert rel_error(second(k.upfirdn2d), second(reference.upfirdn2d)) < 1e-12, case


def test_upfirdn2d_passes_gradcheck_and_gradgradcheck(k):
    torch.manual_seed(30)
    f2 = torch.rand(3, 4, dtype=torch.float64)
    f1 = torch.rand(5, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    for f, kw in [(f2, dict(up=2, padding=(2, 1, 3, -1), gain=2.0)), (f1, dict(up=(1, 2), down=(2, 1), padding=2)),
                  (f2, dict(down=2, padding=(1, 2, 0, 3), flip_filter=True))]:
        fn = lambda x: k.upfirdn2d(x, f, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_handles_strides_none_filter_and_low_precision(k):
    torch.manual_seed(31)
    x = torch.randn(2, 9, 7, 3).permute(0, 3, 1, 2)  # [2, 3, 9, 7], not contiguous
    f = reference.setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(k.upfirdn2d(x, f, up=2, padding=2), reference.upfirdn2d(x, f, up=2, padding=2))
    torch.testing.assert_close(k.upfirdn2d(x, None, down=2, padding=-1),
                               reference.upfirdn2d(x, None, down=2, padding=-1))
    for dtype in (torch.bfloat16, torch.float16):
        out = k.upfirdn2d(x.to(dtype), f, down=2, padding=1)
        assert out.dtype == dtype
        assert rel_error(out, reference.upfirdn2d(x, f, down=2, padding=1)) < 1e-2


def test_upfirdn2d_rejects_padding_that_leaves_no_output(k):
    with pytest.raises(RuntimeError, match="leave no output"):
        k.upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(3, 3), padding=-1)


def test_composites_through_the_kernel_match_the_reference(k):
    torch.manual_seed(32)
    f = reference.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 9, 8)
    w = torch.randn(4, 3, 3, 3)
    for name, args in [("upsample2d", (x, f)), ("downsample2d", (x, f)), ("filter2d", (x, f)),
                       ("conv2d_resample", (x, w, f, 2, 1, 1)), ("conv2d_resample", (x, w, f, 1, 2, 1))]:
        got = getattr(reference, name)(*args, op=k.upfirdn2d)
        want = getattr(reference, name)(*args)
        assert rel_error(got, want) < 1e-5, name


# ------------------------------------------------------------------------------------ self-test, façade

def test_self_test_accepts_the_cpu_kernels(k):
    assert selftest.check("bias_act", k.bias_act, torch.device("cpu")) is None
    assert selftest.check("upfirdn2d", k.upfirdn2d, torch.device("cpu")) is None


def test_self_test_rejects_a_wrong_or_failing_kernel():
    slightly_off = lambda *a, **kw: reference.upfirdn2d(*a, **kw) * 1.001  # noqa: E731
    message = selftest.check("upfirdn2d", slightly_off, torch.device("cpu"))
    assert message is not None and "relative error 1.00e-03" in message

    def broken(*a, **kw):
        raise RuntimeError("illegal memory access")
    assert "illegal memory access" in selftest.check("bias_act", broken, torch.device("cpu"))


def test_status_says_what_runs_on_cpu_and_why(k):
    status = cuda_ops.status()
    assert set(status) == set(cuda_ops.OPS)
    for op in ("bias_act", "upfirdn2d"):
        line = status[op]
        assert line.startswith("cpu: ")
        expected = "kernel (C++ CPU, self-test passed" if cuda_ops.CPU_KERNEL_FASTER[op] else \
            "reference (kept on CPU: the C++ kernel was not measured faster"
        assert expected in line, line


def test_a_second_process_loads_the_cached_build_without_compiling(k, tmp_path):
    """The build is keyed on the sources; a fresh process finds it and logs nothing."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
            "from cuda_ops import build; r = build.load_kernels('cpu'); print('RESULT', r)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert "RESULT None" in proc.stdout, proc.stderr
    assert "building" not in proc.stderr, proc.stderr


def test_reference_only_runs_the_reference_inside_and_the_kernel_again_after(k):
    cpu = torch.device("cpu")
    assert cuda_ops._kernel("upfirdn2d", "auto", cpu) is not None          # the CPU kernel is chosen
    with cuda_ops.reference_only():
        for op in cuda_ops.OPS:
            assert cuda_ops._kernel(op, "auto", cpu) is None
    assert cuda_ops._kernel("upfirdn2d", "auto", cpu) is not None
    with pytest.raises(ValueError, match="impl must be"):
        cuda_ops.bias_act(torch.zeros(2), impl="fast")
