"""Pivotal tuning (PTI) and its compact form: a low-rank weight delta against the base network.

Pivotal tuning (Roich et al., 2021) keeps a latent found by projection — the pivot, ws
[1, num_ws, w_dim] — fixed and fine-tunes the synthesis weights a few hundred steps until the
generator reproduces the target almost exactly. A whole tuned network per photo costs as much as
the network (over 100 MB at 1024 px), so `pivotal_tune_lowrank` trains the change itself in low
rank (LoRA-style): per synthesis tensor of >= 2 dims a rank-r product, per small tensor (biases,
noise strengths) a whole delta. The file stores the product as `U diag(S) Vᵀ` in float16, so it
holds what was trained. (Truncating the SVD of a fully tuned delta instead was tried and dropped:
on the bundled 64 px network, 300 steps at lr 3e-3, its rank-8 form gave 17.9 dB against 19.1 dB
untuned and 23.9 dB fully tuned — worse than no tuning; the delta trained in rank 8 kept the gain.)
The file is keyed by the base network's SHA-256, so it is only ever applied to the
network it was made from. `pivotal_tune` (all synthesis weights) remains, to report the compact
form against full tuning when asked (`PTIOptions.compare`).

File layout (`save_delta`): one `.safetensors` with tensors `<param>.U` [out, r], `<param>.S`
[r], `<param>.V` [in, r] (low-rank) or `<param>.dense` (whole delta), an optional `pivot_ws`,
and header metadata `styledeck` = JSON {"format": "styledeck-weight-delta", "version": 1,
"base_sha256": ..., "rank": r, "entries": {param: {"shape": [...], "kind": "lowrank"|"dense"}},
"info": {...}}.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from safetensors.torch import save_file
from torch import nn

from engine.errors import CorruptFileError, StyleDeckError
from engine.images import to_images
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write, translate_oom

log = logging.getLogger(__name__)

__all__ = ["DeltaEntry", "DeltaReport", "PTIOptions", "PTIResult", "TunedPhoto", "WeightDelta", "apply_delta",
           "delta_report", "load_delta", "network_sha256", "pivotal_tune", "pivotal_tune_lowrank", "psnr",
           "render_ws", "save_delta", "tune_projection"]

DELTA_FORMAT = "styledeck-weight-delta"
DELTA_VERSION = 1
METADATA_KEY = "styledeck"

# (img, target) -> scalar loss, both [1, C, H, W] in [-1, 1]; e.g. an LPIPS module from the projector
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class PTIOptions:
    """Pivotal-tuning settings; the defaults are the PTI paper's."""
    steps: int = 350
    lr: float = 3e-4                             # Adam, as in PTI
    loss: Literal["pixel", "lpips"] = "pixel"    # "lpips" needs a loss_fn from the caller
    pixel_weight: float = 1.0                    # weight of the MSE term beside LPIPS (PTI's L2 lambda)
    l2_lock_weight: float = 0.0                  # mean squared weight change penalty: keeps G near the base
    rank: int = 8                                # rank of the trained delta per weight tensor
    preview_every: int = 10                      # a preview image in the progress event every this many steps
    compare: bool = False                        # tune_projection: also tune fully, to report against (2x time)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise StyleDeckError(f"Pivotal tuning needs at least one step; got {self.steps}.")
        if self.rank < 1:
            raise StyleDeckError(f"The delta's rank must be at least 1; got {self.rank}.")
        if not self.lr > 0:
            raise StyleDeckError(f"The pivotal-tuning learning rate must be positive; got {self.lr}.")

    @property
    def total_steps(self) -> int:
        """Steps `tune_projection` runs: the low-rank tuning, and the full one too when comparing."""
        return self.steps * (2 if self.compare else 1)


@dataclass
class PTIResult:
    """The tuned generator (a deep copy; the input is untouched) and the loss of every step."""
    G_tuned: nn.Module
    losses: list[float]
    image: np.ndarray                            # uint8 [H, W, 3], the tuned network's rendering of the pivot


@dataclass
class DeltaEntry:
    """The change of one tensor: whole (`dense`) or as U diag(S) Vᵀ of its [out, rest] reshaping."""
    shape: tuple[int, ...]
    dense: torch.Tensor | None = None            # shape `shape`
    U: torch.Tensor | None = None                # [out, r]
    S: torch.Tensor | None = None                # [r]
    V: torch.Tensor | None = None                # [rest, r]

    @property
    def kind(self) -> str:
        return "dense" if self.dense is not None else "lowrank"

    def tensor(self) -> torch.Tensor:
        """The delta itself, float64 of `shape`."""
        if self.dense is not None:
            return self.dense.double().reshape(self.shape)
        U, S, V = (t.double() for t in (self.U, self.S, self.V))
        return ((U * S) @ V.T).reshape(self.shape)  # [out, rest] -> shape


@dataclass
class WeightDelta:
    """What a tuned network adds to its base, keyed by the base's SHA-256 (`network_sha256`)."""
    base_sha256: str
    rank: int                                    # of the low-rank entries (small tensors are stored whole)
    entries: dict[str, DeltaEntry]
    pivot_ws: torch.Tensor | None = None         # [1, num_ws, w_dim], the latent the network was tuned around
    info: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as stored in the file."""
        out: dict[str, torch.Tensor] = {}
        for name, e in self.entries.items():
            parts = {"dense": e.dense} if e.dense is not None else {"U": e.U, "S": e.S, "V": e.V}
            out.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in parts.items()})
        if self.pivot_ws is not None:
            out["pivot_ws"] = self.pivot_ws.detach().to(torch.float32).cpu().contiguous()
        return out

    def metadata(self) -> dict[str, Any]:
        return {"format": DELTA_FORMAT, "version": DELTA_VERSION, "base_sha256": self.base_sha256,
                "rank": self.rank, "info": self.info,
                "entries": {n: {"shape": list(e.shape), "kind": e.kind} for n, e in self.entries.items()}}

    def nbytes(self) -> int:
        """Size of the file `save_delta` writes, in bytes."""
        return len(save_bytes(self.tensors(), metadata={METADATA_KEY: json.dumps(self.metadata())}))


# --- helpers -------------------------------------------------------------------------------------

def network_sha256(G: nn.Module) -> str:
    """SHA-256 of the state dict: names, dtypes, shapes and raw bytes, in sorted name order (deterministic)."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def render_ws(G: nn.Module, ws: torch.Tensor) -> np.ndarray:
    """uint8 [H, W, 3] of G's synthesis at ws [1, num_ws, w_dim], with constant noise (reproducible)."""
    device = next(G.parameters()).device
    with torch.no_grad():
        img = G.synthesis(ws.to(device, torch.float32), noise_mode="const")  # [1, C, H, W]
    return to_images(img)[0]


def _target_img(G: nn.Module, target_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H, W, C] -> float [1, C, H, W] in [-1, 1], checked against G's resolution and channels."""
    target = np.asarray(target_uint8)
    want = (G.img_resolution, G.img_resolution, G.img_channels)
    if target.dtype != np.uint8 or target.shape != want:
        raise StyleDeckError(f"The target must be a uint8 image shaped {list(want)} (the network's resolution "
                             f"and channels); got {target.dtype} {list(target.shape)}. Crop or resize it first.")
    img = torch.from_numpy(target.copy()).to(device, torch.float32).permute(2, 0, 1)[None]  # [1, C, H, W]
    return img / 127.5 - 1


def _check_ws(G: nn.Module, ws: torch.Tensor) -> torch.Tensor:
    ws = torch.as_tensor(ws)
    if ws.shape != (1, G.num_ws, G.w_dim):
        raise StyleDeckError(f"The pivot must be ws shaped [1, {G.num_ws}, {G.w_dim}]; got {list(ws.shape)}.")
    return ws.detach().to(torch.float32)


# --- tuning --------------------------------------------------------------------------------------

def pivotal_tune(G: nn.Module, pivot_ws: torch.Tensor, target_uint8: np.ndarray, opts: PTIOptions = PTIOptions(),
                 *, loss_fn: LossFn | None = None, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> PTIResult:
    """Fine-tune a copy of G's synthesis weights so that G.synthesis(pivot_ws) reproduces the target.

    Args:
        G: a StyleGAN2/3 generator; left untouched (the tuning happens on a deep copy).
        pivot_ws: [1, num_ws, w_dim], e.g. the projector's result.
        target_uint8: uint8 [H, W, C] at the network's resolution.
        opts: steps, learning rate and loss.
        loss_fn: (img, target) -> scalar, both [1, C, H, W] in [-1, 1]; required when opts.loss is "lpips".
    Returns:
        PTIResult with the tuned copy (in eval mode, no gradients) and the loss of each step.
    Raises:
        Cancelled when `cancel` is set (checked before every step); StyleDeckError on bad inputs.
    """
    ws, target = _prepare(G, pivot_ws, target_uint8, opts, loss_fn)
    G_tuned = copy.deepcopy(G).eval()
    # Only the synthesis can change the image of a fixed ws; the mapping stays the base's.
    G_tuned.requires_grad_(False)
    params = [p for p in G_tuned.synthesis.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params] if opts.l2_lock_weight > 0 else []  # a copy only when used

    def change() -> torch.Tensor:  # squared distance from the base weights, for the L2 lock
        return sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))

    losses = _tune(lambda: G_tuned.synthesis(ws, noise_mode="const"), params, change, target, opts, loss_fn,
                   progress, cancel)
    G_tuned.requires_grad_(False)
    return PTIResult(G_tuned, losses, render_ws(G_tuned, ws))


def _prepare(G: nn.Module, pivot_ws: torch.Tensor, target_uint8: np.ndarray, opts: PTIOptions,
             loss_fn: LossFn | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked (ws, target img) on G's device."""
    if opts.loss not in ("pixel", "lpips"):
        raise StyleDeckError(f"PTI loss must be 'pixel' or 'lpips'; got {opts.loss!r}.")
    if opts.loss == "lpips" and loss_fn is None:
        raise StyleDeckError("PTI with the LPIPS loss needs an LPIPS function; pass loss_fn or use loss='pixel'.")
    device = next(G.parameters()).device
    return _check_ws(G, pivot_ws).to(device), _target_img(G, target_uint8, device)


def _tune(render: Callable[[], torch.Tensor], params: list[torch.Tensor], change: Callable[[], torch.Tensor],
          target: torch.Tensor, opts: PTIOptions, loss_fn: LossFn | None, progress: ProgressCallback | None,
          cancel: CancelToken | None) -> list[float]:
    """Adam on `params` for opts.steps steps of loss(render(), target) (+ the L2 lock); the loss of each step."""
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    count = sum(p.numel() for p in params)
    losses: list[float] = []
    with translate_oom("tuning the generator (PTI)", "Try a smaller network or run on the CPU."):
        for step in range(opts.steps):
            if cancel is not None:
                cancel.raise_if_cancelled()
            img = render()  # [1, C, H, W]
            loss = _loss(img, target, opts, loss_fn)
            if opts.l2_lock_weight > 0:
                loss = loss + opts.l2_lock_weight * change() / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                last = step + 1 == opts.steps
                preview = to_images(img)[0] if last or (step + 1) % max(opts.preview_every, 1) == 0 else None
                progress(Progress(step + 1, opts.steps, "pivotal tuning", preview, {"loss": losses[-1]}))
    log.info("pivotal tuning: %d steps, loss %.4g -> %.4g", len(losses), losses[0] if losses else math.nan,
             losses[-1] if losses else math.nan)
    return losses


def pivotal_tune_lowrank(G: nn.Module, pivot_ws: torch.Tensor, target_uint8: np.ndarray,
                         opts: PTIOptions = PTIOptions(), *, loss_fn: LossFn | None = None,
                         progress: ProgressCallback | None = None,
                         cancel: CancelToken | None = None) -> tuple[PTIResult, WeightDelta]:
    """PTI that trains the delta's factors directly (LoRA-style): the compact form loses nothing but float16.

    Each synthesis tensor of >= 2 dims gets delta = A Bᵀ of rank opts.rank ([out, r] @ [r, rest]; A starts
    at zero, so the first image is the base's), smaller tensors a whole delta. Returns the tuned copy
    (base + the stored float16 delta: what the file gives) and the delta, ready for `save_delta`.
    Same arguments as `pivotal_tune`.
    """
    ws, target = _prepare(G, pivot_ws, target_uint8, opts, loss_fn)
    base = {n: p.detach() for n, p in G.synthesis.named_parameters() if p.is_floating_point()}
    gen = torch.Generator().manual_seed(0)
    factors: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, p in base.items():
        rest = p[0].numel() if p.ndim >= 2 else 0
        if p.ndim >= 2 and opts.rank < min(p.shape[0], rest):
            B = torch.randn([rest, opts.rank], generator=gen) / math.sqrt(opts.rank)  # [rest, r]
            factors[name] = (torch.zeros([p.shape[0], opts.rank], device=p.device, requires_grad=True),
                             B.to(p.device).requires_grad_(True))
        else:
            factors[name] = (torch.zeros_like(p, requires_grad=True),)  # a whole delta: small, or rank >= its own

    def deltas() -> dict[str, torch.Tensor]:
        return {n: (f[0] @ f[1].T).reshape(base[n].shape) if len(f) == 2 else f[0] for n, f in factors.items()}

    def render() -> torch.Tensor:
        weights = {n: base[n] + d for n, d in deltas().items()}
        return torch.func.functional_call(G.synthesis, weights, (ws,), {"noise_mode": "const"})

    def change() -> torch.Tensor:
        return sum((d ** 2).sum() for d in deltas().values())

    params = [t for f in factors.values() for t in f]
    losses = _tune(render, params, change, target, opts, loss_fn, progress, cancel)
    entries = {}
    with torch.no_grad():
        for name, f in factors.items():
            key, shape = f"synthesis.{name}", tuple(base[name].shape)
            if len(f) == 1:
                entries[key] = DeltaEntry(shape, dense=f[0].detach().cpu().to(torch.float16))
                continue
            # A Bᵀ has rank <= r, so its rank-r SVD is exact: the stored form is what was trained.
            U, S, Vh = torch.linalg.svd(f[0].detach().cpu() @ f[1].detach().cpu().T, full_matrices=False)
            r = opts.rank
            entries[key] = DeltaEntry(shape, U=U[:, :r].to(torch.float16).contiguous(),
                                      S=S[:r].to(torch.float16), V=Vh[:r].T.to(torch.float16).contiguous())
    info = {"pti": "lowrank", "steps": opts.steps, "lr": opts.lr, "loss": opts.loss}
    delta = WeightDelta(network_sha256(G), opts.rank, entries, ws.detach().cpu(), info)
    G_tuned = apply_delta(G, delta).eval().requires_grad_(False)
    return PTIResult(G_tuned, losses, render_ws(G_tuned, ws)), delta


def _loss(img: torch.Tensor, target: torch.Tensor, opts: PTIOptions, loss_fn: LossFn | None) -> torch.Tensor:
    mse = torch.mean((img - target) ** 2)
    if opts.loss == "pixel":
        return mse
    return loss_fn(img, target).reshape(()) + opts.pixel_weight * mse


# --- the compact delta ---------------------------------------------------------------------------

def apply_delta(base_G: nn.Module, delta: WeightDelta) -> nn.Module:
    """A new network: base_G plus the delta (base_G untouched). Refuses a base whose hash differs."""
    sha = network_sha256(base_G)
    if sha != delta.base_sha256:
        raise StyleDeckError(f"This tuned photo was made from another network (SHA-256 {delta.base_sha256[:12]}…), "
                             f"not from the one loaded ({sha[:12]}…). Load the network it was tuned from.")
    G = copy.deepcopy(base_G)
    state = G.state_dict()
    with torch.no_grad():
        for name, entry in delta.entries.items():
            if name not in state or tuple(state[name].shape) != entry.shape:
                raise CorruptFileError(f"The delta changes {name} {list(entry.shape)}, which the network does not "
                                       "have in that shape; the file is damaged.")
            t = state[name]
            # Summed in float64 (on the CPU: not every device has it) and rounded once to the weight's dtype.
            t.copy_((t.detach().cpu().double() + entry.tensor()).to(t.dtype))
    return G


def save_delta(path: str | os.PathLike, delta: WeightDelta) -> Path:
    """Write the delta as one .safetensors with JSON metadata, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(delta.tensors(), str(tmp), metadata={METADATA_KEY: json.dumps(delta.metadata())})
    return path


def load_delta(path: str | os.PathLike) -> WeightDelta:
    """Read a file written by `save_delta`; CorruptFileError if it is not one or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise StyleDeckError(f"{path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path.name} is not a readable .safetensors file ({exc}).") from exc
    if not isinstance(meta, dict) or meta.get("format") != DELTA_FORMAT:
        raise CorruptFileError(f"{path.name} is not a StyleDeck weight delta (no '{DELTA_FORMAT}' metadata).")
    if meta.get("version") != DELTA_VERSION:
        raise CorruptFileError(f"{path.name} is a weight delta of version {meta.get('version')}; this StyleDeck "
                               f"reads version {DELTA_VERSION}. Update StyleDeck.")
    try:
        entries = {name: _entry(name, spec, tensors) for name, spec in meta["entries"].items()}
        rank = int(meta["rank"])
        info = dict(meta.get("info") or {})
        return WeightDelta(str(meta["base_sha256"]), rank, entries, tensors.get("pivot_ws"), info)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path.name} is a damaged weight delta: {exc}.") from exc


def _entry(name: str, spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> DeltaEntry:
    shape = tuple(int(s) for s in spec["shape"])
    if spec["kind"] == "dense":
        dense = tensors[f"{name}.dense"]
        if tuple(dense.shape) != shape:
            raise ValueError(f"{name}.dense is {list(dense.shape)}, not {list(shape)}")
        return DeltaEntry(shape, dense=dense)
    U, S, V = (tensors[f"{name}.{k}"] for k in "USV")
    r = S.shape[0]
    if len(shape) < 2 or U.shape != (shape[0], r) or V.shape != (math.prod(shape[1:]), r):
        raise ValueError(f"the factors of {name} do not fit its shape {list(shape)}")
    return DeltaEntry(shape, U=U, S=S, V=V)


# --- how good is the compact form ----------------------------------------------------------------

@dataclass(frozen=True)
class DeltaReport:
    """Reconstruction of the target by the untuned and the compact network (and the fully tuned one when it
    was run), and the sizes."""
    rank: int
    psnr_base: float                             # dB, untuned base network at the pivot
    psnr_compact: float                          # dB, base + stored delta
    delta_bytes: int                             # the .safetensors file save_delta writes
    network_bytes: int                           # the network's tensors (what storing a tuned copy whole costs)
    psnr_full: float | None = None               # dB, fully tuned network; None: full tuning was not run
    psnr_compact_vs_full: float | None = None    # dB, compact image against the fully tuned image

    def summary(self) -> str:
        full = ("full tuning not run" if self.psnr_full is None else
                f"full tuning {self.psnr_full:.2f} dB")
        compact = f"compact {self.psnr_compact:.2f} dB"
        if self.psnr_compact_vs_full is not None:
            compact += f" ({self.psnr_compact_vs_full:.2f} dB to full)"
        parts = [compact, full] if self.psnr_full is None else [full, compact]
        return (f"rank {self.rank}: PSNR untuned {self.psnr_base:.2f} dB, {', '.join(parts)}; "
                f"{self.delta_bytes / 2**20:.2f} MiB vs {self.network_bytes / 2**20:.2f} MiB for the network "
                f"({self.network_bytes / max(self.delta_bytes, 1):.1f}x smaller)")


def delta_report(base_G: nn.Module, delta: WeightDelta, pivot_ws: torch.Tensor, target_uint8: np.ndarray,
                 full_G: nn.Module | None = None) -> DeltaReport:
    """PSNR against the target of the untuned network, of base + delta and, given full_G (a fully tuned
    copy), of full tuning; and the sizes of the delta file and of the network."""
    ws = _check_ws(base_G, pivot_ws)
    compact_image = render_ws(apply_delta(base_G, delta), ws)
    network_bytes = sum(t.numel() * t.element_size() for t in base_G.state_dict().values())
    full: dict[str, float] = {}
    if full_G is not None:
        full_image = render_ws(full_G, ws)
        full = {"psnr_full": psnr(full_image, target_uint8), "psnr_compact_vs_full": psnr(compact_image, full_image)}
    return DeltaReport(delta.rank, psnr(render_ws(base_G, ws), target_uint8), psnr(compact_image, target_uint8),
                       delta.nbytes(), network_bytes, **full)


# --- projection + tuning, as the CLI and the app run it ------------------------------------------

@dataclass
class TunedPhoto:
    """Low-rank PTI of a projected photo: its delta (what is stored), its image and the report."""
    tuning: PTIResult                            # G_tuned = base + the stored delta
    delta: WeightDelta
    report: DeltaReport
    image: np.ndarray                            # uint8 [H, W, C]: base + stored delta rendered at the pivot
    full: PTIResult | None = None                # full tuning, when opts.compare asked for it


def tune_projection(G: nn.Module, pivot_ws: torch.Tensor | np.ndarray, target_uint8: np.ndarray,
                    opts: PTIOptions = PTIOptions(), *, loss_fn: LossFn | None = None,
                    progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> TunedPhoto:
    """Low-rank pivotal tuning around a projection's ws (`pivotal_tune_lowrank`) and its report; with
    opts.compare also full tuning (`pivotal_tune`, same settings) for the report to compare against.

    Progress counts both runs together (opts.total_steps). Same arguments as `pivotal_tune`; G is left
    untouched. Raises Cancelled / StyleDeckError as it does.
    """
    ws = _check_ws(G, torch.as_tensor(pivot_ws))

    def stage(offset: int, message: str) -> ProgressCallback | None:
        if progress is None:
            return None
        return lambda e: progress(Progress(offset + e.step, opts.total_steps, message, e.preview, e.metrics))

    tuning, delta = pivotal_tune_lowrank(G, ws, target_uint8, opts, loss_fn=loss_fn,
                                         progress=stage(0, "pivotal tuning"), cancel=cancel)
    full = None
    if opts.compare:
        full = pivotal_tune(G, ws, target_uint8, opts, loss_fn=loss_fn,
                            progress=stage(opts.steps, "full tuning, to compare"), cancel=cancel)
    report = delta_report(G, delta, ws, target_uint8, None if full is None else full.G_tuned)
    return TunedPhoto(tuning, delta, report, tuning.image, full)
