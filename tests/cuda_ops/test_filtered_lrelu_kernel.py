"""The compiled filtered_lrelu (C++ CPU build here, CUDA on a GPU) against the reference, forward and backward.

Configurations: the layers of real StyleGAN3-T/R networks (their filters, factors and paddings) and
random ones (factors 1-4, 1-24 taps, separable and 2-D filters, negative padding, gains, slopes,
clamps, flip_filter). References run in float64.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch

from cuda_ops import build, reference
from cuda_ops.reference.filtered_lrelu import output_size
from cuda_ops.selftest import rel_error
from engine.networks.stylegan3 import SynthesisNetwork


@pytest.fixture(scope="module")
def K():
    """The compiled op's Python module; fails (not skips) when the kernels do not build."""
    reason = build.load_kernels("cpu")
    assert reason is None, f"cpu kernels did not build: {reason}"
    from cuda_ops.kernels import filtered_lrelu as module
    return module


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int, int]
    fu: torch.Tensor | None
    fd: torch.Tensor | None
    up: int
    down: int
    padding: tuple[int, int, int, int]
    gain: float
    slope: float
    clamp: float | None
    flip_filter: bool

    def args(self, x, b, device="cpu", dtype=torch.float32):
        to = (lambda f: None if f is None else f.to(device=device, dtype=dtype))
        return (x, to(self.fu), to(self.fd), b, self.up, self.down, self.padding, self.gain, self.slope, self.clamp,
                self.flip_filter)


def _real_layers() -> list[tuple[str, Case]]:
    """One case per distinct layer kind of StyleGAN3-T (64 and 256 px) and StyleGAN3-R (256 px), at tiny width."""
    cases, seen = [], set()
    for res, kwargs in [(64, {}), (256, {}), (256, dict(conv_kernel=1, use_radial_filters=True))]:
        net = SynthesisNetwork(w_dim=4, img_resolution=res, img_channels=3, channel_base=64, channel_max=2, **kwargs)
        for name, layer in net.named_children():
            if not hasattr(layer, "up_filter"):
                continue
            side = int(layer.in_size[0]) + layer.conv_kernel - 1
            fu, fd = layer.up_filter, layer.down_filter
            # Layers differing only in size repeat the same index arithmetic: keep the smallest.
            key = (layer.up_factor, layer.down_factor, tuple(layer.padding), None if fd is None else fd.ndim,
                   layer.is_torgb)
            if key in seen:
                continue
            seen.add(key)
            gain, slope = (1.0, 1.0) if layer.is_torgb else (math.sqrt(2), 0.2)
            cfg = "R" if kwargs else "T"
            cases.append((f"sg3{cfg}{res}-{name}", Case((1, 2, side, side), fu, fd, layer.up_factor,
                                                         layer.down_factor, tuple(layer.padding), gain, slope,
                                                         layer.conv_clamp, False)))
    return cases


REAL_LAYERS = _real_layers()


def _random_cases(count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    cases = []
    while len(cases) < count:
        up, down = rng.choice([1, 2, 4]), rng.choice([1, 2, 4])
        sep_u, sep_d = rng.random() < 0.6, rng.random() < 0.6
        fuw = rng.randint(1, 24 if sep_u else 9)
        fdw = rng.randint(1, 24 if sep_d else 9)
        fuh = fuw if sep_u else rng.randint(1, 9)
        fdh = fdw if sep_d else rng.randint(1, 9)
        h, w = rng.randint(1, 14), rng.randint(1, 14)
        pad = tuple(rng.randint(-6, 12) for _ in range(4))
        if (output_size(w, up, down, pad[0], pad[1], fuw, fdw) < 1
                or output_size(h, up, down, pad[2], pad[3], fuh, fdh) < 1):
            continue
        fu = torch.rand([fuw] if sep_u else [fuh, fuw], generator=g, dtype=torch.float64) - 0.25
        fd = torch.rand([fdw] if sep_d else [fdh, fdw], generator=g, dtype=torch.float64) - 0.25
        if rng.random() < 0.1:
            fu = None if up == 1 else fu
        clamp = rng.choice([None, None, 0.5, 2.0])
        cases.append(Case((rng.randint(1, 2), rng.randint(1, 11), h, w), fu, fd, up, down, pad,
                          rng.choice([1.0, math.sqrt(2), 0.7]), rng.choice([0.2, 0.0, 1.0, -0.3]), clamp,
                          rng.random() < 0.5))
    return cases


RANDOM = _random_cases(40, seed=7)


def _inputs(case: Case, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.shape, generator=g, dtype=torch.float64)
    b = torch.randn(case.shape[1], generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def _fwd_bwd(fn, case: Case, x, b, dy, device="cpu", filter_dtype=torch.float32):
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    y = fn(*case.args(x, b, device, filter_dtype))
    dx, db = torch.autograd.grad(y, [x, b], dy.to(y.dtype))
    return y, dx, db


def _check_against_reference(K, case: Case, dtype, device, tol: float, seed: int = 0):
    x, b = _inputs(case, dtype, device, seed)
    xr = x.detach().cpu().double().requires_grad_(True)
    br = b.detach().cpu().double().requires_grad_(True)
    ref_y = reference.filtered_lrelu(*case.args(xr, br, "cpu", torch.float64))
    dy = torch.randn(ref_y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref_dx, ref_db = torch.autograd.grad(ref_y, [xr, br], dy)
    y, dx, db = _fwd_bwd(K.filtered_lrelu, case, x, b, dy.to(device), device,
                         torch.float64 if dtype == torch.float64 else torch.float32)
    assert y.dtype == dtype and y.shape == ref_y.shape
    for name, out, ref in [("y", y, ref_y), ("dx", dx, ref_dx), ("db", db, ref_db)]:
        err = rel_error(out.cpu(), ref)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


# ---------------------------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("case", [c for _, c in REAL_LAYERS], ids=[n for n, _ in REAL_LAYERS])
def test_cpu_matches_reference_on_stylegan3_layers(K, case):
    _check_against_reference(K, case, torch.float32, "cpu", tol=1e-5)


@pytest.mark.parametrize("index", range(len(RANDOM)))
def test_cpu_matches_reference_on_random_configurations(K, index):
    _check_against_reference(K, RANDOM[index], torch.float32, "cpu", tol=1e-5, seed=index)


@pytest.mark.parametrize("index", range(0, len(RANDOM), 4))
def test_cpu_float64_matches_reference_to_rounding(K, index):
    _check_against_reference(K, RANDOM[index], torch.float64, "cpu", tol=1e-12, seed=index)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_precision_computes_in_float(K, dtype):
    _, case = REAL_LAYERS[1]  # up 4, 24 taps, negative padding
    # float accumulation: the only errors are rounding the input and the output to 8/11 bits
    _check_against_reference(K, case, dtype, "cpu", tol=1e-2)


def test_cpu_is_tiled_correctly_on_large_planes(K):
    """Planes bigger than one tile (and more planes than one lane group) exercise the tile seams."""
    fu = reference.setup_filter([1, 3, 5, 7, 7, 5, 3, 1, 1, 2, 1, 1], separable=True).double()
    case = Case((1, 11, 100, 67), fu, fu, 2, 2, (9, 8, 9, 8), math.sqrt(2), 0.2, 0.9, False)
    _check_against_reference(K, case, torch.float32, "cpu", tol=1e-5)
    radial = torch.outer(fu, fu)
    case = Case((1, 9, 40, 70), fu, radial, 4, 2, (-6, -9, -6, -9), math.sqrt(2), 0.2, None, True)
    _check_against_reference(K, case, torch.float32, "cpu", tol=1e-5)


def test_gradcheck_float64(K):
    g = torch.Generator().manual_seed(3)
    for fu, fd, up, down, pad in [(torch.rand(4, dtype=torch.float64, generator=g), torch.rand(3, 3, dtype=torch.float64, generator=g), 2, 2, (2, 1, 3, 0)),
                                  (torch.rand(2, 3, dtype=torch.float64, generator=g), torch.rand(5, dtype=torch.float64, generator=g), 1, 2, (1, 2, 0, 3))]:
        x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
        # clamp high enough that finite differences do not straddle a clamp edge
        assert torch.autograd.gradcheck(lambda x, b: K.filtered_lrelu(x, fu, fd, b, up, down, pad, 1.3, 0.2, 50.0),
                                        (x, b))


def test_mask_holds_every_pre_activation_sign_and_clamp(K):
    """The forward's mask is the sign/clamp of the reference's pre-activation, every byte of it."""
    g = torch.Generator().manual_seed(5)
    fu, fd = torch.rand(12, generator=g), torch.rand(5, 5, generator=g)
    x, b = torch.randn(2, 9, 37, 151, generator=g), torch.randn(9, generator=g)
    pad, clamp, gain, slope = (3, 7, -2, 5), 0.5, 1.4, 0.2
    _, mask = torch.ops.styledeck.filtered_lrelu(x, fu, fd, b, 2, 3, list(pad), gain, slope, clamp, False, True)
    u = reference.upfirdn2d(reference.bias_act(x.double(), b.double()), fu.double(), up=2, padding=pad, gain=4)
    v = torch.where(u > 0, u, u * slope) * gain
    expected = torch.where(v.abs() > clamp, 2, (u > 0).to(torch.int64)).to(torch.uint8)
    assert mask.shape == expected.shape
    assert (mask == expected).float().mean() > 0.9999  # float32 vs float64 may disagree on a rare edge sample


def test_no_mask_without_gradient(K):
    x = torch.randn(1, 2, 8, 8)
    _, mask = torch.ops.styledeck.filtered_lrelu(x, torch.ones(1), torch.ones(1), torch.zeros(2), 1, 1, [0, 0, 0, 0],
                                                 1.0, 0.2, -1.0, False, False)
    assert mask.numel() == 0
    with pytest.raises(RuntimeError, match="write_mask=False"):
        x.requires_grad_(True)
        y, _ = torch.ops.styledeck.filtered_lrelu(x, torch.ones(1), torch.ones(1), torch.zeros(2), 1, 1, [0, 0, 0, 0],
                                                  1.0, 0.2, -1.0, False, False)
        y.sum().backward()


def test_second_order_gradient_raises_a_clear_error(K):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    f = torch.rand(4, dtype=torch.float64)
    y = K.filtered_lrelu(x, f, f, None, 2, 2, 2)
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second-order"):
        dx.sum().backward()


def test_bad_arguments_raise_value_errors(K):
    x = torch.randn(1, 2, 8, 8)
    f = torch.rand(4)
    with pytest.raises(ValueError, match="leaves no output"):
        K.filtered_lrelu(x, f, f, up=1, padding=-4)
    with pytest.raises(ValueError, match="bias"):
        K.filtered_lrelu(x, f, f, torch.zeros(3))
    with pytest.raises(ValueError, match="requires grad"):
        K.filtered_lrelu(x, f.requires_grad_(True), f.detach())
    with pytest.raises(ValueError, match="N, C, H, W"):
        K.filtered_lrelu(x[0], f.detach(), f.detach())


def test_non_contiguous_input(K):
    _, case = REAL_LAYERS[0]
    x, b = _inputs(case)
    x = x.to(memory_format=torch.channels_last)
    y = K.filtered_lrelu(*case.args(x, b))
    ref = reference.filtered_lrelu(*case.args(x.double(), b.double(), dtype=torch.float64))
    assert rel_error(y, ref) < 1e-5


def test_opcheck_cpu(K):
    g = torch.Generator().manual_seed(9)
    fu, fd = torch.rand(6, generator=g), torch.rand(3, 4, generator=g)
    x, b = torch.randn(2, 3, 7, 6, generator=g), torch.randn(3, generator=g)
    args = (fu, fd, b, 2, 2, [3, 2, 1, 4], 1.4, 0.2, 0.8, False)
    torch.library.opcheck(torch.ops.styledeck.filtered_lrelu, (x, *args, False))
    torch.library.opcheck(torch.ops.styledeck.filtered_lrelu, (x.requires_grad_(True), *args, True))
    y, mask = torch.ops.styledeck.filtered_lrelu(x.detach(), *args, True)
    torch.library.opcheck(torch.ops.styledeck.filtered_lrelu_backward,
                          (torch.randn(y.shape, generator=g), mask, fu, fd, 2, 2, [3, 2, 1, 4], 1.4, 0.2, False))


# ---------------------------------------------------------------------------------------------- GPU


@pytest.fixture(scope="module")
def K_cuda():
    reason = build.load_kernels("cuda")
    assert reason is None, f"cuda kernels did not build: {reason}"
    from cuda_ops.kernels import filtered_lrelu as module
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("case", [c for _, c in REAL_LAYERS], ids=[n for n, _ in REAL_LAYERS])
def test_cuda_matches_reference_on_stylegan3_layers(K_cuda, case, dtype, tol):
    _check_against_reference(K_cuda, case, dtype, "cuda", tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("index", range(len(RANDOM)))
def test_cuda_matches_reference_on_random_configurations(K_cuda, index, dtype, tol):
    _check_against_reference(K_cuda, RANDOM[index], dtype, "cuda", tol, seed=index)


@pytest.mark.gpu
def test_cuda_large_planes_and_mask(K_cuda):
    fu = reference.setup_filter([1, 3, 5, 7, 7, 5, 3, 1, 1, 2, 1, 1], separable=True).double()
    for case in [Case((2, 37, 150, 133), fu, fu, 2, 2, (9, 8, 9, 8), math.sqrt(2), 0.2, 0.9, False),
                 Case((1, 9, 140, 70), fu, torch.outer(fu, fu), 4, 2, (-6, -9, -6, -9), math.sqrt(2), 0.2, None, True)]:
        _check_against_reference(K_cuda, case, torch.float32, "cuda", tol=1e-5)
    g = torch.Generator().manual_seed(5)
    x, b, f = torch.randn(2, 9, 37, 151, generator=g), torch.randn(9, generator=g), torch.rand(12, generator=g)
    args = (f, f, b, 2, 2, [3, 7, -2, 5], 1.4, 0.2, 0.5, False, True)
    _, mask_cpu = torch.ops.styledeck.filtered_lrelu(x, *args)
    _, mask_gpu = torch.ops.styledeck.filtered_lrelu(x.cuda(), *[a.cuda() if torch.is_tensor(a) else a for a in args])
    assert (mask_gpu.cpu() == mask_cpu).float().mean() > 0.9999


@pytest.mark.gpu
def test_opcheck_cuda(K_cuda):
    g = torch.Generator().manual_seed(9)
    fu, fd = torch.rand(6, generator=g).cuda(), torch.rand(3, 4, generator=g).cuda()
    x, b = torch.randn(2, 3, 7, 6, generator=g).cuda(), torch.randn(3, generator=g).cuda()
    args = (fu, fd, b, 2, 2, [3, 2, 1, 4], 1.4, 0.2, 0.8, False)
    torch.library.opcheck(torch.ops.styledeck.filtered_lrelu, (x, *args, False))
    torch.library.opcheck(torch.ops.styledeck.filtered_lrelu, (x.requires_grad_(True), *args, True))
