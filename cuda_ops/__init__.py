"""The ops every network calls, behind one façade that picks the implementation.

Signatures follow NVIDIA's `torch_utils.ops`, plus `impl`. "ref" runs the plain-PyTorch reference
(`cuda_ops.reference`, the definition of correctness); "auto" runs the compiled kernel where it is
built for the tensor's device (`cuda_ops.build`), passed its first-use self-test there
(`cuda_ops.selftest`) and, on CPU, measured faster than the reference; otherwise the reference.
`status()` says per op what runs and why.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch

from . import build, reference, selftest
from .reference.upfirdn2d import IntPair, setup_filter

__all__ = ["bias_act", "conv2d_resample", "downsample2d", "filter2d", "filtered_lrelu", "reference_only",
           "setup_filter", "status", "upfirdn2d", "upsample2d"]

log = logging.getLogger(__name__)

Impl = Literal["auto", "ref"]
OPS = ("bias_act", "upfirdn2d", "filtered_lrelu")

# Whether the C++ CPU kernel beats the reference on CPU, measured on one thread at the bundled
# model's shapes. bias_act: about 2x at 64-128 px feature maps (one fused pass instead of three).
# upfirdn2d: the 64 px StyleGAN2 generator runs 1.66x faster with both kernels (97 ms vs 160 ms,
# best of 15), though a plain 4x4 filter at full resolution alone is slower than oneDNN's conv.
# filtered_lrelu: 13x (forward) and 9x (forward + backward) at a 64 px StyleGAN3-T layer, N=16, C=128
# (one fused tiled pass instead of an upsampled intermediate). Where False, "auto" keeps the
# reference on CPU (no build needed); tests still run the CPU kernel directly.
CPU_KERNEL_FASTER = {"bias_act": True, "upfirdn2d": True, "filtered_lrelu": True}


@dataclass(frozen=True)
class _Choice:
    kernel: Callable | None  # None: the reference runs
    why: str


_choices: dict[tuple[str, str], _Choice] = {}  # (op, "cpu" | "cuda:0" ...) -> choice, made once
_choice_lock = threading.Lock()


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def _choose(op: str, device: torch.device) -> _Choice | None:
    """Decide op's implementation on device; None means "undecided, use the reference this time"."""
    if device.type not in ("cpu", "cuda"):
        return _Choice(None, f"reference (no kernels for {device.type} tensors)")
    if device.type == "cpu" and not CPU_KERNEL_FASTER.get(op, False):  # decided before building: no build needed
        return _Choice(None, "reference (kept on CPU: the C++ kernel was not measured faster; see CPU_KERNEL_FASTER)")
    reason = build.load_kernels(device.type)
    if reason is not None:
        return _Choice(None, f"reference ({device.type} kernels unavailable: {reason})")
    try:
        kernel = getattr(importlib.import_module(f"cuda_ops.kernels.{op}"), op)
    except Exception as exc:  # noqa: BLE001 - an op whose Python side is missing or broken stays on the reference
        return _Choice(None, f"reference (no {op} kernel in this build: {type(exc).__name__}: {exc})")
    if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return None  # no probe can run while tracing or capturing; the first eager call decides
    where = _device_key(device)
    failure = selftest.check(op, kernel, device)
    if failure is not None:
        log.warning("StyleDeck %s kernel failed its self-test on %s (%s); using the reference there", op, where,
                    failure)
        return _Choice(None, f"reference ({op} kernel failed its self-test on {where}: {failure})")
    return _Choice(kernel, f"kernel ({'C++ CPU' if device.type == 'cpu' else 'CUDA'}, self-test passed on {where})")


_reference_only = threading.local()


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Inside (on this thread), every op runs its plain-PyTorch reference, as if called with impl="ref"."""
    before = getattr(_reference_only, "on", False)
    _reference_only.on = True
    try:
        yield
    finally:
        _reference_only.on = before


def _kernel(op: str, impl: str, device: torch.device) -> Callable | None:
    """The compiled op to run for `impl` on `device`, or None for the reference."""
    if impl not in ("auto", "ref"):
        raise ValueError(f"impl must be 'auto' or 'ref', got {impl!r}")
    if impl == "ref" or getattr(_reference_only, "on", False):
        return None
    key = (op, _device_key(device))
    choice = _choices.get(key)
    if choice is None:
        with _choice_lock:
            choice = _choices.get(key)
            if choice is None:
                choice = _choose(op, device)
                if choice is None:
                    return None
                _choices[key] = choice
    return choice.kernel


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: Impl = "auto") -> torch.Tensor:
    """Bias, activation, gain and clamp in one pass where a kernel runs.

    Args:
        x: input, any shape; `b` is added along `dim`.
        act: one of `reference.ACTIVATIONS` ("linear", "relu", "lrelu", ...).
        alpha, gain: activation parameter and output gain; None takes the activation's default.
        clamp: clamp the output to [-clamp, clamp]; None for no clamp.
    Returns:
        A tensor of x's shape and dtype.
    """
    kernel = _kernel("bias_act", impl, x.device)
    if kernel is not None:
        return kernel(x, b, dim, act, alpha, gain, clamp)
    return reference.bias_act(x, b, dim, act, alpha, gain, clamp)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: IntPair = 1, down: IntPair = 1,
              padding: IntPair = 0, flip_filter: bool = False, gain: float = 1,
              impl: Impl = "auto") -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample.

    Args:
        x: [N, C, H, W].
        f: [fh, fw] or separable [fw] float32 filter (see `setup_filter`); None is identity.
        up, down: integer factors, or (x, y) pairs.
        padding: int, (px, py) or (x0, x1, y0, y1), applied after upsampling; negative crops.
    Returns:
        [N, C, (H*up + y0 + y1 - fh + 1) / down, (W*up + x0 + x1 - fw + 1) / down], rounded up.
    """
    kernel = _kernel("upfirdn2d", impl, x.device)
    if kernel is not None and x.ndim == 4 and (f is None or not f.requires_grad):  # the kernel gives f no gradient
        return kernel(x, f, up, down, padding, flip_filter, gain)
    return reference.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None = None, fd: torch.Tensor | None = None,
                   b: torch.Tensor | None = None, up: int = 1, down: int = 1, padding: IntPair = 0,
                   gain: float = math.sqrt(2), slope: float = 0.2, clamp: float | None = None,
                   flip_filter: bool = False, impl: Impl = "auto") -> torch.Tensor:
    """Bias, upsample through fu, leaky ReLU with gain and clamp, downsample through fd (StyleGAN3).

    Returns:
        [N, C, out_h, out_w] with out = (in*up + pad0 + pad1 - (fu-1) - (fd-1) + (down-1)) // down.
    """
    kernel = _kernel("filtered_lrelu", impl, x.device)
    if kernel is not None and x.ndim == 4 and not any(f is not None and f.requires_grad for f in (fu, fd)):
        return kernel(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    return reference.filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)


# Composites of the ops above, running through the façade's upfirdn2d so they speed up with it.
def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: IntPair = 2, padding: IntPair = 0,
               flip_filter: bool = False, gain: float = 1, impl: Impl = "auto") -> torch.Tensor:
    """Upsample by `up` keeping the image centred (see `reference.upsample2d`)."""
    return reference.upsample2d(x, f, up, padding, flip_filter, gain, op=_upfirdn2d_for(impl))


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: IntPair = 2, padding: IntPair = 0,
                 flip_filter: bool = False, gain: float = 1, impl: Impl = "auto") -> torch.Tensor:
    """Downsample by `down` keeping the image centred (see `reference.downsample2d`)."""
    return reference.downsample2d(x, f, down, padding, flip_filter, gain, op=_upfirdn2d_for(impl))


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: IntPair = 0, flip_filter: bool = False,
             gain: float = 1, impl: Impl = "auto") -> torch.Tensor:
    """Filter keeping the size (see `reference.filter2d`)."""
    return reference.filter2d(x, f, padding, flip_filter, gain, op=_upfirdn2d_for(impl))


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: IntPair = 0, groups: int = 1, flip_weight: bool = True, flip_filter: bool = False,
                    impl: Impl = "auto") -> torch.Tensor:
    """Convolution with FIR up/downsampling (see `reference.conv2d_resample`)."""
    return reference.conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter,
                                     op=_upfirdn2d_for(impl))


def _upfirdn2d_for(impl: Impl) -> Callable[..., torch.Tensor]:
    if impl == "ref":
        return reference.upfirdn2d
    if impl != "auto":
        raise ValueError(f"impl must be 'auto' or 'ref', got {impl!r}")
    return upfirdn2d


def status(probe: bool = True) -> dict[str, str]:
    """Per op, which implementation "auto" runs on each device and why.

    With `probe` (the default) every device present is tried first — the CPU and each CUDA device —
    which builds the kernels if this machine has not yet (about a minute, once).
    """
    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if probe:
        for device in devices:
            for op in OPS:
                _kernel(op, "auto", device)
    result = {}
    for op in OPS:
        parts = []
        for device in devices:
            choice = _choices.get((op, _device_key(device)))
            parts.append(f"{_device_key(device)}: {choice.why if choice else 'not decided yet (no call so far)'}")
        result[op] = "; ".join(parts)
    return result
