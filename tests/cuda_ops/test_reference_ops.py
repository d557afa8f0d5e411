"""The reference ops against direct, loop-by-loop definitions, and their gradients in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cuda_ops
from cuda_ops import reference


def naive_upfirdn2d(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int],
                    flip_filter: bool = False, gain: float = 1.0) -> np.ndarray:
    """Textbook upfirdn: zero-stuff, pad, convolve (true convolution), decimate; one output pixel at a time."""
    n, c, h, w = x.shape
    if f.ndim == 1:
        f = np.outer(f, f)
    f = f * gain
    if flip_filter:
        f = f[::-1, ::-1]
    up_x = np.zeros((n, c, h * up, w * up))
    up_x[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    big = np.zeros((n, c, h * up + max(y0, 0) + max(y1, 0), w * up + max(x0, 0) + max(x1, 0)))
    big[:, :, max(y0, 0):max(y0, 0) + h * up, max(x0, 0):max(x0, 0) + w * up] = up_x
    big = big[:, :, max(-y0, 0):big.shape[2] - max(-y1, 0), max(-x0, 0):big.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    out_h = (big.shape[2] - fh) // down + 1
    out_w = (big.shape[3] - fw) // down + 1
    out = np.zeros((n, c, out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            for a in range(fh):
                for b in range(fw):
                    # convolution: filter tap (a, b) meets input pixel (fh-1-a, fw-1-b) of the window
                    out[:, :, oy, ox] += f[a, b] * big[:, :, oy * down + fh - 1 - a, ox * down + fw - 1 - b]
    return out


@pytest.mark.parametrize("up,down,pad,taps,flip", [
    (1, 1, (0, 0, 0, 0), [1, 3, 3, 1], False),
    (2, 1, (2, 1, 2, 1), [1, 3, 3, 1], False),
    (1, 2, (1, 1, 1, 1), [1, 2, 5, 1], True),
    (2, 2, (3, 2, 1, 4), [1, 2, 3, 4, 5], False),
    (3, 2, (-1, 2, 0, -2), [2, 1, 4], True),
])
def test_upfirdn2d_matches_the_textbook_definition(up, down, pad, taps, flip):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)  # odd sizes catch index bugs
    f = reference.setup_filter(taps, separable=False).double()
    out = cuda_ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0)
    expected = naive_upfirdn2d(x.numpy(), f.numpy(), up, down, pad, flip, 2.0)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_separable_filter_equals_its_outer_product():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    taps = torch.rand(12, dtype=torch.float64)
    f1 = taps / taps.sum()
    f2 = torch.outer(f1, f1)
    a = cuda_ops.upfirdn2d(x, f1, up=2, down=1, padding=[5, 6, 4, 7], gain=4)
    b = cuda_ops.upfirdn2d(x, f2, up=2, down=1, padding=[5, 6, 4, 7], gain=4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_setup_filter_normalises_and_chooses_separable():
    short = reference.setup_filter([1, 3, 3, 1])
    long = reference.setup_filter(list(range(1, 13)))
    assert short.shape == (4, 4) and long.shape == (12,)
    assert math.isclose(float(short.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(long.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(reference.setup_filter([1, 1], gain=4).sum()), 4.0, rel_tol=1e-6)


@pytest.mark.parametrize("op,expected_side", [("upsample2d", 24), ("downsample2d", 6), ("filter2d", 12)])
def test_resampling_helpers_keep_the_image_centred(op, expected_side):
    f = reference.setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 1, 12, 12)
    y = getattr(cuda_ops, op)(x, f)
    assert y.shape[-2:] == (expected_side, expected_side)
    # A constant image stays constant in the interior: the filter gain is right.
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones_like(y[..., 2:-2, 2:-2]), atol=1e-6)


@pytest.mark.parametrize("act", sorted(reference.ACTIVATIONS))
def test_bias_act_definition(act):
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    out = cuda_ops.bias_act(x, b, act=act, gain=1.5, clamp=0.8)
    s = x + b[None, :, None]
    funcs = {"linear": lambda v: v, "relu": torch.relu, "lrelu": lambda v: torch.where(v >= 0, v, 0.2 * v),
             "tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": torch.nn.functional.elu,
             "selu": torch.nn.functional.selu, "softplus": torch.nn.functional.softplus,
             "swish": lambda v: v * torch.sigmoid(v)}
    expected = (funcs[act](s) * 1.5).clamp(-0.8, 0.8)
    torch.testing.assert_close(out, expected)


def test_bias_act_defaults_and_dim():
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    out = cuda_ops.bias_act(x, b, dim=2, act="lrelu")
    expected = torch.nn.functional.leaky_relu(x + b, 0.2) * math.sqrt(2)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="unknown activation"):
        cuda_ops.bias_act(x, act="gelu-ish")
    with pytest.raises(ValueError, match="does not match"):
        cuda_ops.bias_act(x, torch.zeros(5, dtype=torch.float64))


def test_filtered_lrelu_is_its_three_steps_and_has_the_documented_size():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    fu = reference.setup_filter(torch.rand(12), separable=True).double()
    fd = reference.setup_filter(torch.rand(8), separable=True).double()
    pad = [9, 10, 9, 10]
    out = cuda_ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=pad, gain=1.3, slope=0.1, clamp=0.5)
    step = cuda_ops.upfirdn2d(x + b[None, :, None, None], fu, up=2, padding=pad, gain=4)
    step = (torch.where(step >= 0, step, 0.1 * step) * 1.3).clamp(-0.5, 0.5)
    step = cuda_ops.upfirdn2d(step, fd, down=2)
    torch.testing.assert_close(out, step)
    side = (10 * 2 + 19 - 11 - 7 + 1) // 2
    assert out.shape == (2, 3, side, side)


def test_conv2d_resample_flip_weight_convention():
    """flip_weight=False convolves with the flipped kernel (what NVIDIA's upsampling layers use)."""
    torch.manual_seed(4)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    plain = cuda_ops.conv2d_resample(x, w, padding=1)
    torch.testing.assert_close(plain, torch.nn.functional.conv2d(x, w, padding=1))
    flipped = cuda_ops.conv2d_resample(x, w, padding=1, flip_weight=False)
    torch.testing.assert_close(flipped, torch.nn.functional.conv2d(x, w.flip([2, 3]), padding=1))


def test_conv2d_resample_up_equals_upsample_then_conv():
    torch.manual_seed(5)
    f = reference.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    up = cuda_ops.conv2d_resample(x, w, f, up=2, padding=1)
    expected = torch.nn.functional.conv2d(cuda_ops.upsample2d(x, f, 2), w, padding=1)
    assert up.shape == (2, 3, 10, 10)
    # Same maths; they differ only where the filter sees the padding at the border.
    torch.testing.assert_close(up[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2])


def test_conv2d_resample_down_1x1_fast_path_equals_general_path():
    torch.manual_seed(6)
    f = reference.setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(3, 4, 1, 1, dtype=torch.float64)
    fast = cuda_ops.conv2d_resample(x, w, f, down=2)
    general = cuda_ops.downsample2d(torch.nn.functional.conv2d(x, w), f, 2)
    torch.testing.assert_close(fast, general)


def test_reference_ops_pass_gradcheck():
    torch.manual_seed(7)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fu = reference.setup_filter([1, 3, 3, 1]).double()
    assert torch.autograd.gradcheck(lambda x, b: cuda_ops.bias_act(x, b, act="lrelu", clamp=2.0), (x, b))
    assert torch.autograd.gradcheck(lambda x: cuda_ops.upfirdn2d(x, fu, up=2, down=1, padding=[2, 1, 2, 1]), (x,))
    assert torch.autograd.gradgradcheck(lambda x: cuda_ops.upfirdn2d(x, fu, down=2, padding=1), (x,))
    assert torch.autograd.gradcheck(
        lambda x, b: cuda_ops.filtered_lrelu(x, fu, fu, b, up=2, down=2, padding=3), (x, b))


def test_bad_arguments_are_clear_errors():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="at least 1"):
        cuda_ops.upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError, match="padding"):
        cuda_ops.upfirdn2d(x, None, padding=[1, 2, 3])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        cuda_ops.upfirdn2d(torch.randn(4, 4), None)
    with pytest.raises(ValueError, match="impl"):
        cuda_ops.bias_act(x, impl="cuda-please")


def test_status_names_every_op():
    assert set(cuda_ops.status()) == {"bias_act", "upfirdn2d", "filtered_lrelu"}
