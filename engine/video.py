"""Animations: per-frame W+ latents and (StyleGAN3) input transforms, rendered in batches and encoded.

An `AnimationSpec` says what moves: latents interpolated through keyframes (seeds, projected photos,
current mixes; linear, spherical or cubic through W, with easing, open or as a closed loop; one
sequence per cell of a grid) and a camera `Motion` (rotation about the image centre, translation
along a line, circle or figure-eight, or both) through StyleGAN3's input transform. Frames come out
of `render_frames` as uint8 [H, W, 3]; `export_animation` streams them into an encoder
(engine/video_encode.py) that writes a temporary file and renames it only at the end.

`keyframe_spec` builds NVIDIA's gen_video.py animation (seeds, --grid, --num-keyframes,
--w-frames, --shuffle-seed): a loop through the keyframes with a periodic cubic spline.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from engine.errors import StyleDeckError
from engine.images import image_grid, to_rgb, to_uint8
from engine.jobs import CancelToken, Progress, ProgressCallback, translate_oom
from engine.edit_state import EditState
from engine.latents import Source, check_noise_mode, compose_ws
from engine.networks.stylegan3 import input_transform, input_transforms
from engine.renderer import Renderer
from engine.video_encode import EncodeOptions, encode_frames, output_format, resize_frame

__all__ = ["AnimationSpec", "ExportResult", "Motion", "current_keyframe", "export_animation", "frame_latents",
           "frame_transforms", "keyframe_spec", "preview_animation", "render_frames"]

log = logging.getLogger(__name__)

Interpolation = Literal["linear", "spherical", "cubic"]
Easing = Literal["linear", "smooth"]
PathKind = Literal["none", "line", "circle", "figure8"]
INTERPOLATIONS: tuple[str, ...] = ("linear", "spherical", "cubic")
EASINGS: tuple[str, ...] = ("linear", "smooth")
PATHS: tuple[str, ...] = ("none", "line", "circle", "figure8")
DEFAULT_BATCH = 8          # frames per synthesis call: the GPU stays busy, CPU memory stays small


@dataclass(frozen=True)
class Motion:
    """Camera motion through StyleGAN3's input transform; the identity (the default) moves nothing.

    Positive angles turn the image counter-clockwise as displayed; translations are in image widths,
    +x right and +y down (engine.networks.stylegan3.input_transform). The path is centred on `origin`.
    """
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (degrees, tx, ty) at the start: the editor's transform
    rotate: float = 0.0               # degrees turned from the first frame to the last (360 * turns for full turns)
    path: PathKind = "none"           # translation: none, line, circle or figure8
    shift: tuple[float, float] = (0.0, 0.0)  # line: offset reached at the end (a loop comes back)
    radius: float = 0.1               # circle / figure8: size in image widths
    cycles: int = 1                   # circle / figure8: times round the path

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise StyleDeckError(f"Unknown translation path {self.path!r}; use one of {', '.join(PATHS)}.")
        if self.cycles < 1:
            raise StyleDeckError(f"A path goes round at least once; got {self.cycles} cycles.")
        values = (*self.origin, self.rotate, *self.shift, self.radius)
        if not all(math.isfinite(v) for v in values):
            raise StyleDeckError(f"Motion values must be finite numbers; got {values}.")

    @classmethod
    def turns(cls, turns: float, **kwargs) -> Motion:
        """`turns` full turns (360 degrees each) over the animation."""
        return cls(rotate=360.0 * turns, **kwargs)

    @classmethod
    def angle_range(cls, start: float, end: float, **kwargs) -> Motion:
        """From `start` to `end` degrees (the origin's angle is `start`)."""
        origin = kwargs.pop("origin", (0.0, 0.0, 0.0))
        return cls(origin=(float(start), origin[1], origin[2]), rotate=float(end) - float(start), **kwargs)

    @property
    def moves(self) -> bool:
        return self.rotate != 0.0 or self.path != "none"


@dataclass(frozen=True)
class AnimationSpec:
    """What an animation shows: keyframes per grid cell, how they are joined, the motion, the latent settings."""
    keyframes: tuple[tuple[Source, ...], ...]   # [cells][K] sources, cells row by row; every cell has K >= 1
    num_frames: int = 120
    grid: tuple[int, int] = (1, 1)              # (columns, rows), as NVIDIA's --grid WxH
    interpolation: Interpolation = "linear"     # linear, spherical (about w_avg) or cubic (spline, as gen_video.py)
    easing: Easing = "linear"                   # smooth: ease in and out of every keyframe (and the motion)
    loop: bool = True                           # closed loop: the frame after the last is the first
    motion: Motion = field(default_factory=Motion)
    psi: float = 1.0                            # truncation
    cutoff: int | None = None                   # truncate only ws layers < cutoff
    noise_mode: str = "const"

    def __post_init__(self) -> None:
        cells = tuple(tuple(cell) for cell in self.keyframes)
        object.__setattr__(self, "keyframes", cells)
        cols, rows = self.grid
        if cols < 1 or rows < 1:
            raise StyleDeckError(f"A grid needs at least 1x1 cells; got {cols}x{rows}.")
        if len(cells) != cols * rows:
            raise StyleDeckError(f"A {cols}x{rows} grid needs {cols * rows} keyframe sequences; got {len(cells)}.")
        lengths = {len(cell) for cell in cells}
        if len(lengths) != 1 or 0 in lengths:
            raise StyleDeckError(f"Every grid cell needs the same number (>= 1) of keyframes; got {sorted(lengths)}.")
        if not all(isinstance(s, Source) for cell in cells for s in cell):
            raise StyleDeckError("Keyframes must be engine.Source values (seeds or stored latents).")
        if self.num_frames < 1:
            raise StyleDeckError(f"An animation has at least 1 frame; got {self.num_frames}.")
        if self.interpolation not in INTERPOLATIONS:
            raise StyleDeckError(f"Unknown interpolation {self.interpolation!r}; "
                                 f"use one of {', '.join(INTERPOLATIONS)}.")
        if self.easing not in EASINGS:
            raise StyleDeckError(f"Unknown easing {self.easing!r}; use one of {', '.join(EASINGS)}.")
        check_noise_mode(self.noise_mode)

    @property
    def num_keyframes(self) -> int:
        return len(self.keyframes[0])


@dataclass(frozen=True)
class ExportResult:
    """A finished export: where it went and what it took."""
    path: Path
    format: str                  # mp4, gif, webp or png
    num_frames: int
    size: tuple[int, int]        # (width, height) of the written frames
    fps: float
    render_s: float              # wall time spent rendering (latents to uint8 frames)
    encode_s: float              # wall time spent encoding and writing


# ---------------------------------------------------------------------------------------------
# Time: frame index -> position along the keyframes and the motion

def ease(u: np.ndarray, easing: Easing) -> np.ndarray:
    """Map u in [0, 1] to eased u: 'smooth' is the cosine ease-in-out (zero speed at both ends)."""
    if easing == "smooth":
        return 0.5 - 0.5 * np.cos(np.pi * u)
    return u


def _timeline(n: int, loop: bool) -> np.ndarray:
    """t in [0, 1] per frame: [0, 1) for a loop (frame n would be frame 0), [0, 1] inclusive otherwise."""
    if loop or n == 1:
        return np.arange(n, dtype=np.float64) / n
    return np.arange(n, dtype=np.float64) / (n - 1)


def _segments(spec: AnimationSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the keyframe segment index k [N] and the eased position u in it [N]."""
    k_count = spec.num_keyframes
    segments = k_count if spec.loop else max(k_count - 1, 1)
    s = _timeline(spec.num_frames, spec.loop) * segments                 # [N], in [0, segments]
    k = np.minimum(np.floor(s), segments - 1).astype(np.int64)
    u = ease(s - k, spec.easing)
    return k, u


def frame_transforms(spec: AnimationSpec) -> np.ndarray:
    """(degrees, tx, ty) per frame, float64 [N, 3]."""
    m = spec.motion
    t = ease(_timeline(spec.num_frames, spec.loop), spec.easing)         # [N]
    out = np.tile(np.asarray(m.origin, dtype=np.float64), (spec.num_frames, 1))
    out[:, 0] += m.rotate * t
    theta = 2 * np.pi * m.cycles * t
    if m.path == "line":
        along = 1 - np.abs(1 - 2 * t) if spec.loop else t                # a loop goes there and back
        out[:, 1] += m.shift[0] * along
        out[:, 2] += m.shift[1] * along
    elif m.path == "circle":                                             # round the origin, from +x
        out[:, 1] += m.radius * np.cos(theta)
        out[:, 2] += m.radius * np.sin(theta)
    elif m.path == "figure8":                                            # Gerono's lemniscate through the origin
        out[:, 1] += m.radius * np.sin(theta)
        out[:, 2] += m.radius * np.sin(theta) * np.cos(theta)
    return out


# ---------------------------------------------------------------------------------------------
# Latents: keyframes -> per-frame W+

def _spline_second_derivatives(y: torch.Tensor, periodic: bool) -> torch.Tensor:
    """Second derivatives M [K, ...] of the cubic spline through y [K, ...] at unit spacing.

    Periodic: the closed C2 spline (what NVIDIA's tiled interp1d(kind='cubic') approaches);
    open: the natural spline (M = 0 at both ends). Solves M[i-1] + 4 M[i] + M[i+1] = 6 (y[i-1] - 2 y[i] + y[i+1]).
    """
    k = y.shape[0]
    if k == 1 or (k < 3 and not periodic):                            # a point or a line: no curvature
        return torch.zeros_like(y)
    a = np.zeros((k, k))
    rhs = torch.zeros_like(y)
    rows = range(k) if periodic else range(1, k - 1)
    for i in rows:
        a[i, (i - 1) % k] += 1
        a[i, i] += 4
        a[i, (i + 1) % k] += 1
        rhs[i] = 6 * (y[(i - 1) % k] - 2 * y[i] + y[(i + 1) % k])
    if not periodic:
        a[0, 0] = a[-1, -1] = 1                                          # natural ends: M = 0
    inv = torch.from_numpy(np.linalg.inv(a)).to(y)                        # [K, K], K is small
    return torch.einsum("ij,j...->i...", inv, rhs)


def _slerp(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of a, b [B, L, D] about `center` [D]: the direction turns on the great
    circle and the distance from the centre (w_avg, where truncation pulls to) changes linearly."""
    a, b = a - center, b - center
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)  # [B, L, 1]
    da, db = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = torch.acos((da * db).sum(-1, keepdim=True).clamp(-1.0, 1.0))  # [B, L, 1]
    so = torch.sin(omega)
    u = u[:, None, None]
    # Nearly parallel directions: sin(omega) -> 0; linear interpolation is the limit there.
    safe = so > 1e-6
    wa = torch.where(safe, torch.sin((1 - u) * omega) / so.clamp_min(1e-6), 1 - u)
    wb = torch.where(safe, torch.sin(u * omega) / so.clamp_min(1e-6), u)
    direction = wa * da + wb * db
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return center + direction * ((1 - u) * na + u * nb)


class _Latents:
    """Keyframe ws of every cell on the device and the per-frame interpolation over them."""

    def __init__(self, renderer: Renderer, spec: AnimationSpec):
        self.spec = spec
        cache = renderer.cache
        # [cells, K, num_ws, w_dim]: truncation applied per keyframe (affine, so it commutes with
        # linear and spline interpolation; NVIDIA's gen_video.py also truncates before interpolating).
        self.keys = torch.stack([torch.stack([cache.ws(s, spec.psi, spec.cutoff) for s in cell])
                                 for cell in spec.keyframes])
        self.center = renderer.G.mapping.w_avg.to(self.keys)
        self.second = None
        if spec.interpolation == "cubic":
            self.second = torch.stack([_spline_second_derivatives(cell, spec.loop) for cell in self.keys])
        self.k, self.u = _segments(spec)

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """ws of frames [start, stop) for every cell: [frames, cells, num_ws, w_dim]."""
        count = self.keys.shape[1]
        k = torch.from_numpy(self.k[start:stop])
        k1 = (k + 1) % count                                             # wraps in a loop; open: clamp below
        if not self.spec.loop:
            k1 = torch.clamp(k + 1, max=count - 1)
        u = torch.from_numpy(self.u[start:stop]).to(self.keys)           # [B]
        a = self.keys[:, k].transpose(0, 1)                              # [B, cells, L, D]
        b = self.keys[:, k1].transpose(0, 1)
        uu = u[:, None, None, None]
        if self.spec.interpolation == "spherical":
            cells = a.shape[1]
            flat = _slerp(a.flatten(0, 1), b.flatten(0, 1), u.repeat_interleave(cells), self.center)
            return flat.reshape(a.shape)
        out = a + (b - a) * uu
        if self.second is not None:                                      # cubic spline: curvature terms
            ma = self.second[:, k].transpose(0, 1)
            mb = self.second[:, k1].transpose(0, 1)
            out = out + (((1 - uu) ** 3 - (1 - uu)) * ma + (uu ** 3 - uu) * mb) / 6
        return out


def frame_latents(renderer: Renderer, spec: AnimationSpec) -> np.ndarray:
    """W+ of every frame and cell, float32 [N, cells, num_ws, w_dim] (for inspection and tests)."""
    with torch.no_grad():
        return _Latents(renderer, spec).frames(0, spec.num_frames).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Rendering

def _check_motion(renderer: Renderer, spec: AnimationSpec) -> None:
    if renderer.family != "stylegan3" and (spec.motion.moves or any(spec.motion.origin)):
        raise StyleDeckError("Rotation and translation need a StyleGAN3 network (they move its Fourier input); "
                             "this is a StyleGAN2 network, which has no input transform. Interpolation between "
                             "latents works with either: leave out the rotation and translation.")


def _synthesis(renderer: Renderer, ws: torch.Tensor, transforms: np.ndarray | None, noise_mode: str) -> torch.Tensor:
    """img [B, C, H, W] for ws [B, num_ws, w_dim] on the renderer's path (on CUDA: half precision, CUDA
    graphs); StyleGAN3 with `transforms` [B, 3] gets one each."""
    if transforms is None:
        return renderer.synthesize(ws, noise_mode)
    return renderer.synthesize(ws, noise_mode, transform=input_transforms(transforms).to(ws.device))


def render_frames(renderer: Renderer, spec: AnimationSpec, *, batch: int = DEFAULT_BATCH,
                  cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
    """Frames of `spec` in order, uint8 [H, W, 3] each (a grid tiled row by row), rendered `batch` at a time.

    StyleGAN3's input transform buffer is restored when the generator is done, so the renderer's own
    renders are unchanged afterwards. Raises StyleDeckError for motion on a StyleGAN2 network.
    """
    _check_motion(renderer, spec)
    if batch < 1:
        raise StyleDeckError(f"The batch size must be at least 1; got {batch}.")
    cols, rows = spec.grid
    cells = cols * rows
    transforms = frame_transforms(spec) if renderer.family == "stylegan3" else None
    buffer = renderer.G.synthesis.input.transform if transforms is not None else None
    saved = buffer.clone() if buffer is not None else None
    frames_per_call = max(1, batch // cells)
    try:
        with torch.no_grad():
            latents = _Latents(renderer, spec)
            if transforms is not None and not spec.motion.moves:             # one transform: plain batches
                rotate, tx, ty = spec.motion.origin
                buffer.copy_(torch.from_numpy(input_transform(rotate, (tx, ty))).to(buffer))
                transforms = None
        for start in range(0, spec.num_frames, frames_per_call):
            if cancel is not None:
                cancel.raise_if_cancelled()
            stop = min(start + frames_per_call, spec.num_frames)
            # no_grad only around the work: a generator's context would leak into the caller between yields
            with torch.no_grad(), translate_oom("rendering the animation", "Try a smaller batch or output size."):
                ws = latents.frames(start, stop).flatten(0, 1)           # [B * cells, L, D]
                tr = None if transforms is None else np.repeat(transforms[start:stop], cells, axis=0)
                images = to_rgb(to_uint8(_synthesis(renderer, ws, tr, spec.noise_mode)))  # [B * cells, H, W, 3]
            for f in range(stop - start):
                cell_images = images[f * cells:(f + 1) * cells]
                frame = cell_images[0] if cells == 1 else image_grid(cell_images, rows=rows, cols=cols)
                yield np.array(frame, copy=True)                         # owned by the receiver
    finally:
        if buffer is not None:
            with torch.no_grad():
                buffer.copy_(saved)


def preview_animation(renderer: Renderer, spec: AnimationSpec, *, frames: int = 24, max_side: int = 128,
                      progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[np.ndarray]:
    """A cheap look at `spec`: `frames` frames spread over it (the same path, fewer steps), at most `max_side` px."""
    short = replace(spec, num_frames=max(1, min(frames, spec.num_frames)))
    out = []
    for i, frame in enumerate(render_frames(renderer, short, cancel=cancel)):
        h, w = frame.shape[:2]
        scale = max_side / max(h, w)
        if scale < 1:
            frame = resize_frame(frame, (max(1, round(w * scale)), max(1, round(h * scale))))
        out.append(frame)
        if progress is not None:
            progress(Progress(i + 1, short.num_frames, "rendering the preview"))
    return out


def export_animation(renderer: Renderer, spec: AnimationSpec, output: str | Path, opts: EncodeOptions = EncodeOptions(),
                     *, batch: int = DEFAULT_BATCH, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> ExportResult:
    """Render `spec` and write it to `output` (.mp4, .gif, .webp, or a folder of PNG frames).

    The file (or folder) appears whole at the end or not at all: a cancelled or failed export leaves
    nothing behind. Render and encode times are measured apart.

    Raises:
        StyleDeckError: bad settings (e.g. motion on StyleGAN2, an unknown format); Cancelled when stopped.
    """
    output = Path(output)
    fmt = output_format(output, opts.format)
    _check_motion(renderer, spec)                                        # before any file exists
    timing = {"render": 0.0}
    size: list[tuple[int, int]] = []

    def frames() -> Iterator[np.ndarray]:
        source = render_frames(renderer, spec, batch=batch, cancel=cancel)
        try:
            for i in range(spec.num_frames):
                start = time.perf_counter()
                frame = next(source)
                timing["render"] += time.perf_counter() - start
                yield frame
                if progress is not None:
                    progress(Progress(i + 1, spec.num_frames, f"frame {i + 1} of {spec.num_frames}"))
                if cancel is not None:
                    cancel.raise_if_cancelled()
        finally:
            source.close()                                               # restores StyleGAN3's transform now

    start = time.perf_counter()
    stream = frames()
    try:
        written = encode_frames(stream, output, opts, fmt=fmt, num_frames=spec.num_frames, on_size=size.append)
    finally:
        stream.close()
    total = time.perf_counter() - start
    return ExportResult(path=written, format=fmt, num_frames=spec.num_frames, size=size[0] if size else (0, 0),
                        fps=opts.fps, render_s=timing["render"], encode_s=max(total - timing["render"], 0.0))


def current_keyframe(renderer: Renderer, state: EditState, label: str = "current image") -> Source:
    """The editor's image as a keyframe: its mix as a stored W+, before truncation (the animation's psi
    truncates it once, as every keyframe; truncation is affine, so this equals truncating the mix)."""
    with torch.no_grad():
        ws = compose_ws(state.sources, state.mix, renderer.cache, 1.0, None)   # [1, num_ws, w_dim]
    return Source.from_latent(ws, label=label)


# ---------------------------------------------------------------------------------------------
# NVIDIA's gen_video.py

def keyframe_spec(seeds: Sequence[int], *, grid: tuple[int, int] = (1, 1), num_keyframes: int | None = None,
                  w_frames: int = 120, shuffle_seed: int | None = None, class_idx: int | None = None,
                  **spec_kwargs) -> AnimationSpec:
    """gen_video.py's animation: each grid cell loops through num_keyframes seeds, w_frames frames apart,
    on a periodic cubic spline through W.

    As there: without num_keyframes every cell takes len(seeds) / cells consecutive seeds (which must
    divide); with it, the seeds repeat to fill cells * num_keyframes; shuffle_seed shuffles that list
    with np.random.RandomState(shuffle_seed); cell (row, col) takes the seeds from (row * cols + col) * K.
    """
    cols, rows = grid
    cells = cols * rows
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise StyleDeckError("The animation needs at least one seed.")
    if cols < 1 or rows < 1:
        raise StyleDeckError(f"A grid needs at least 1x1 cells; got {cols}x{rows}.")
    if num_keyframes is None:
        if len(seeds) % cells:
            raise StyleDeckError(f"{len(seeds)} seeds do not fill a {cols}x{rows} grid evenly; give a multiple "
                                 f"of {cells} seeds, or --num-keyframes.")
        num_keyframes = len(seeds) // cells
    if num_keyframes < 1 or w_frames < 1:
        raise StyleDeckError(f"--num-keyframes and --w-frames must be at least 1; got {num_keyframes} and {w_frames}.")
    all_seeds = np.array([seeds[i % len(seeds)] for i in range(cells * num_keyframes)], dtype=np.int64)
    if shuffle_seed is not None:
        np.random.RandomState(shuffle_seed).shuffle(all_seeds)
    per_cell = all_seeds.reshape(cells, num_keyframes)
    keyframes = tuple(tuple(Source.from_seed(int(s), class_idx) for s in cell) for cell in per_cell)
    spec_kwargs.setdefault("interpolation", "cubic")
    spec_kwargs.setdefault("loop", True)
    return AnimationSpec(keyframes=keyframes, grid=(cols, rows), num_frames=num_keyframes * w_frames, **spec_kwargs)
