"""How the renderer runs synthesis: the reference path, and the fast path it takes by default.

reference: float32 throughout, eager, TF32 off on CUDA, each layer's own modulated-convolution form.
    It defines the correct image, and it is what the CPU runs.
fast: on CUDA,
    - the layers the network was trained in half precision (its `num_fp16_res` top resolutions) run in
      half precision: float16 by default, the precision they were trained in, which on sm_80+ has the
      tensor-core rate of bfloat16 and three more mantissa bits; bfloat16 on request (`half`);
    - StyleGAN2's half-precision blocks keep their activations channels-last (cuDNN's fast layout);
    - the modulated convolution takes the form that suits the batch: per-sample weights in one
      grouped convolution for a batch of one, activations scaled around one shared-weight convolution
      for larger batches (the same function in another order; NVIDIA's generators choose the same way);
    - the synthesis of a fixed batch, resolution, noise mode and preview depth is captured once as a
      CUDA graph and replayed, so a render costs one launch instead of hundreds; a change of any of
      them captures another graph (the `max_graphs` newest are kept), and a capture that fails runs
      eagerly from then on, with one log line and the reason in `status`;
    - `torch.compile` of the synthesis on request (`compile`; slow first render, off by default).
    On the CPU the fast path is the reference path: half precision there is slow or missing, another
    convolution form changes the rounding, and CUDA graphs do not exist.
Mapping outputs are cached per source by the renderer's `LatentCache`, on either path.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

import cuda_ops
from engine.errors import StyleDeckError
from engine.latents import G_device

__all__ = ["GraphCache", "HALF_CHOICES", "MODCONV_FORMS", "RENDER_PATHS", "Plan", "RenderOptions", "RenderPath",
           "Synthesizer", "has_half_layers", "make_plan", "synthesis_until"]

log = logging.getLogger(__name__)

RenderPath = Literal["fast", "reference"]
RENDER_PATHS: tuple[str, ...] = ("fast", "reference")
HALF_CHOICES: tuple[str, ...] = ("auto", "float16", "bfloat16", "float32")
MODCONV_FORMS: tuple[str, ...] = ("auto", "grouped", "scaled")
_HALF_DTYPES = {"auto": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}
_CAPTURE_WARMUP = 2  # eager calls before a capture: cuDNN picks its algorithms, the ops build and self-test


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How a Renderer runs synthesis (see the module doc); the defaults are the fast path."""
    path: RenderPath = "fast"   # "fast" or "reference"
    half: str = "auto"          # fast path on CUDA: auto (= float16), float16, bfloat16, or float32 (no half)
    channels_last: bool = True  # fast path on CUDA: StyleGAN2's half-precision blocks channels-last
    modconv: str = "auto"       # fast path on CUDA: auto (grouped for batch 1, else scaled), grouped, scaled
    cuda_graphs: bool = True    # fast path on CUDA: capture and replay the synthesis
    compile: bool = False       # fast path on CUDA: torch.compile the synthesis (slow first render)
    max_graphs: int = 4         # CUDA graphs kept (each holds its own activation memory)

    def __post_init__(self) -> None:
        for name, value, allowed in (("path", self.path, RENDER_PATHS), ("half", self.half, HALF_CHOICES),
                                     ("modconv", self.modconv, MODCONV_FORMS)):
            if value not in allowed:
                raise StyleDeckError(f"Unknown render {name} {value!r}; use one of {', '.join(allowed)}.")
        if self.max_graphs < 1:
            raise StyleDeckError(f"max_graphs must be at least 1, got {self.max_graphs}.")


@dataclass(frozen=True, slots=True)
class Plan:
    """How one synthesis call runs; hashable, so it keys the CUDA graphs."""
    path: RenderPath
    device_type: str
    half: torch.dtype | None       # what the half-precision layers run in; None = float32 throughout
    channels_last: bool            # StyleGAN2 half blocks channels-last
    fused_modconv: bool | None     # True grouped, False scaled, None each layer's default
    graph: bool                    # capture and replay a CUDA graph
    compile: bool                  # torch.compile the synthesis

    def synthesis_kwargs(self, family: str) -> dict[str, Any]:
        """Keyword arguments for G.synthesis (and StyleGAN2 blocks) that carry out this plan."""
        kwargs: dict[str, Any] = {"force_fp32": True} if self.half is None else {"half_dtype": self.half}
        if family == "stylegan2" and self.half is not None:
            kwargs["channels_last"] = self.channels_last
        if self.fused_modconv is not None:
            kwargs["fused_modconv"] = self.fused_modconv
        return kwargs

    def describe(self) -> str:
        """One line for a status bar or a bench table, e.g. 'fast: float16 + float32, grouped modconv, CUDA graph'."""
        if self.path == "reference":
            return "reference: float32, eager" + (", no TF32" if self.device_type == "cuda" else "")
        if self.device_type != "cuda":
            return f"fast (= reference on {self.device_type}): float32, eager"
        parts = [f"{_dtype_name(self.half)} + float32" if self.half is not None else "float32"]
        if self.half is not None and self.channels_last:
            parts.append("channels-last")
        if self.fused_modconv is not None:
            parts.append(f"{'grouped' if self.fused_modconv else 'scaled'} modconv")
        if self.compile:
            parts.append("compiled")
        parts.append("CUDA graph" if self.graph else "eager")
        return "fast: " + ", ".join(parts)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def has_half_layers(G: nn.Module) -> bool:
    """Whether any synthesis layer of G was trained in half precision (use_fp16)."""
    return any(getattr(m, "use_fp16", False) for m in G.synthesis.modules())


def make_plan(options: RenderOptions, device_type: str, half_layers: bool, batch: int,
              compile_ok: bool = True) -> Plan:
    """The plan for a batch of `batch` on `device_type`; `half_layers`: G has layers trained in half precision."""
    o = options
    if o.path == "reference" or device_type != "cuda":
        return Plan(o.path, device_type, None, False, None, False, False)
    half = _HALF_DTYPES[o.half] if half_layers else None
    # One sample: its weights ARE the grouped conv's weights (no extra pass over the activations).
    # More: cuDNN runs one dense conv over the batch far better than N groups of per-sample weights.
    fused = {"grouped": True, "scaled": False, "auto": batch == 1}[o.modconv]
    return Plan("fast", device_type, half, o.channels_last, fused, o.cuda_graphs, o.compile and compile_ok)


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """TF32 off for cuDNN and cuBLAS while the reference path runs on CUDA (restored after)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def synthesis_until(G: nn.Module, ws: torch.Tensor, stop: int, **block_kwargs: Any) -> torch.Tensor:
    """StyleGAN2 'skip': run blocks 4..stop, upsample the partial RGB to full size. float32 [N, C, R, R]."""
    synthesis = G.synthesis
    ws = ws.to(torch.float32)
    x = img = None
    w_idx = 0
    for res in synthesis.block_resolutions:
        if res > stop:
            break
        block = getattr(synthesis, f"b{res}")
        # As SynthesisNetwork.forward: a block reads num_conv + num_torgb ws, advances num_conv.
        cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
        x, img = block(x, img, cur_ws, **block_kwargs)                   # img [N, C, res, res]
        w_idx += block.num_conv
    # Upsample the way the skipped blocks would (upsample2d with their [1, 3, 3, 1] filter, zero
    # padded): the preview then lacks only their ToRGB detail. F.interpolate(bilinear) has the
    # same interior weights but replicates edges, which brightens or darkens the border rows.
    res = stop
    while res < G.img_resolution:
        res *= 2
        img = cuda_ops.upsample2d(img, getattr(synthesis, f"b{res}").resample_filter)  # [N, C, res, res]
    return img


@dataclass
class _Graph:
    graph: Any                     # torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_out: torch.Tensor


class GraphCache:
    """CUDA graphs of a function of one tensor, one per key, the `max_graphs` most recent kept.

    A key whose capture fails is remembered with its reason and runs eagerly from then on.
    """

    def __init__(self, max_graphs: int = 4):
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Any, _Graph] = OrderedDict()
        self.failures: dict[Any, str] = {}  # key -> why its capture failed
        self.captures = 0                   # graphs captured so far

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self.failures.clear()

    def run(self, key: Any, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """(fn(x), how it ran: 'CUDA graph' or 'eager (...why...)'); the output is a fresh tensor."""
        if key in self.failures:
            return fn(x), f"eager (CUDA graph capture failed: {self.failures[key]})"
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(fn, x)
            except Exception as exc:  # any capture failure: the eager call still gives the image
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                self.failures[key] = reason
                log.warning("CUDA graph capture failed, rendering eagerly: %s", reason)
                return fn(x), f"eager (CUDA graph capture failed: {reason})"
            self._graphs[key] = entry
            self.captures += 1
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)   # frees that graph's memory pool
        self._graphs.move_to_end(key)
        entry.static_in.copy_(x)
        entry.graph.replay()
        return entry.static_out.clone(), "CUDA graph"  # the next replay overwrites static_out

    @staticmethod
    def _capture(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> _Graph:
        stream = torch.cuda.Stream(x.device)          # a CPU tensor fails here, as it should
        static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):               # warm up on a side stream, as capture wants
            for _ in range(_CAPTURE_WARMUP):
                fn(static_in)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread of the app may use CUDA while the render thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = fn(static_in)
        return _Graph(graph, static_in, static_out)


class Synthesizer:
    """Runs G's synthesis on the path `options` asks for: ws [N, num_ws, w_dim] -> float32 [N, C, H, W].

    Used from one thread, like the Renderer that owns it. `status` describes the last call.
    """

    def __init__(self, G: nn.Module, family: str, options: RenderOptions | None = None):
        self.G = G
        self.family = family
        self.options = options or RenderOptions()
        self.device = G_device(G)
        self._half_layers = has_half_layers(G)
        self.graphs = GraphCache(self.options.max_graphs)
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._compile_failure: str | None = None
        self.status = self.plan(1).describe()

    def reset(self) -> None:
        """Forget captured graphs and compiled code (after G's parameters were replaced)."""
        self.graphs.clear()
        self._compiled = None
        self._compile_failure = None

    def plan(self, batch: int) -> Plan:
        """What a call with `batch` samples does on this device with these options."""
        return make_plan(self.options, self.device.type, self._half_layers, batch,
                         compile_ok=self._compile_failure is None)

    def __call__(self, ws: torch.Tensor, noise_mode: str = "const", stop: int | None = None,
                 transform: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 images [N, C, H, W] of ws; `stop` runs a StyleGAN2 'skip' preview up to that block;
        `transform` [N, 3, 3] gives each StyleGAN3 sample its own input transform (video frames)."""
        plan = self.plan(ws.shape[0])
        kwargs = dict(plan.synthesis_kwargs(self.family), noise_mode=noise_mode)
        if transform is not None:
            if stop is not None or self.family != "stylegan3":
                raise StyleDeckError("Per-sample input transforms need a full StyleGAN3 synthesis.")
            kwargs["transform"] = transform
            # a captured graph would replay the first call's transforms: per-frame ones run eager
            plan = replace(plan, graph=False)

        def synthesize(w: torch.Tensor) -> torch.Tensor:
            if stop is not None:
                return synthesis_until(self.G, w, stop, **kwargs)
            if plan.compile:
                return self._compiled_synthesis()(w, **kwargs).to(torch.float32)
            return self.G.synthesis(w, **kwargs).to(torch.float32)

        how = plan.describe()
        if plan.path == "reference":
            with exact_float32(self.device):
                img = synthesize(ws)
        elif plan.graph and noise_mode != "random":  # random noise draws anew each call: eager
            img, ran = self.graphs.run((tuple(ws.shape), ws.dtype, noise_mode, stop, plan), synthesize, ws)
            how = how if ran == "CUDA graph" else how.replace("CUDA graph", ran)
        else:
            img = synthesize(ws)
            if plan.graph:
                how = how.replace("CUDA graph", "eager (random noise)")
        if plan.compile and self._compile_failure is not None:
            how += f"; compile failed: {self._compile_failure}"
        self.status = how
        return img

    def _compiled_synthesis(self) -> Callable[..., torch.Tensor]:
        """torch.compile(G.synthesis), or G.synthesis itself once compiling has failed."""
        if self._compile_failure is not None:
            return self.G.synthesis
        if self._compiled is None:
            compiled = torch.compile(self.G.synthesis, dynamic=False)

            def guarded(w: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                if self._compile_failure is not None:
                    return self.G.synthesis(w, **kwargs)
                try:
                    return compiled(w, **kwargs)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # the compiler is optional: the eager synthesis still works
                    self._compile_failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    log.warning("torch.compile of the synthesis failed, running it eagerly: %s",
                                self._compile_failure)
                    return self.G.synthesis(w, **kwargs)

            self._compiled = guarded
        return self._compiled
