"""Encoders for animations: mp4 (H.264 through imageio-ffmpeg), gif and webp (Pillow), or a folder of PNGs.

`encode_frames` pulls uint8 [H, W, 3] frames from an iterator and writes them to a temporary file
(or folder) beside the output, renamed into place only when every frame is in: a cancelled or
failed export leaves nothing behind, and an older file of that name stays until the new one is whole.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

import cv2
import numpy as np

from engine.errors import StyleDeckError
from engine.jobs import atomic_write

__all__ = ["FORMATS", "EncodeOptions", "VideoFormat", "encode_frames", "output_format", "parse_size", "resize_frame"]

log = logging.getLogger(__name__)

VideoFormat = Literal["mp4", "gif", "webp", "png"]
FORMATS: tuple[str, ...] = ("mp4", "gif", "webp", "png")
_SUFFIXES = {".mp4": "mp4", ".gif": "gif", ".webp": "webp"}


@dataclass(frozen=True)
class EncodeOptions:
    """How frames are written; the format comes from the output's suffix unless `format` is given."""
    fps: float = 30.0
    format: VideoFormat | None = None       # None: from the suffix (.mp4, .gif, .webp; anything else: PNG folder)
    size: tuple[int, int] | None = None     # (width, height) of the written frames; None: as rendered
    quality: float = 8.0                    # 0 (smallest) .. 10 (best): mp4 CRF 51..0, webp quality 0..100
    bitrate: str | None = None              # mp4: a fixed bitrate like "16M" (NVIDIA's) instead of `quality`
    loop: int = 0                           # gif / webp: times to play, 0 = for ever
    colors: int = 256                       # gif: palette size per frame (2..256)
    dither: bool = True                     # gif: Floyd-Steinberg dithering against the palette

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise StyleDeckError(f"Frames per second must be a positive number; got {self.fps}.")
        if self.format is not None and self.format not in FORMATS:
            raise StyleDeckError(f"Unknown video format {self.format!r}; use one of {', '.join(FORMATS)}.")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise StyleDeckError(f"The output size must be two positive numbers (width, height); got {self.size}.")
        if not 0 <= self.quality <= 10:
            raise StyleDeckError(f"Quality goes from 0 to 10; got {self.quality}.")
        if not 2 <= self.colors <= 256:
            raise StyleDeckError(f"A GIF palette has 2 to 256 colours; got {self.colors}.")
        if self.loop < 0:
            raise StyleDeckError(f"The loop count is 0 (for ever) or more; got {self.loop}.")


def output_format(path: str | os.PathLike, given: str | None = None) -> VideoFormat:
    """The format for `path`: `given`, else from the suffix; a path without a known suffix is a PNG folder."""
    if given is not None:
        if given not in FORMATS:
            raise StyleDeckError(f"Unknown video format {given!r}; use one of {', '.join(FORMATS)}.")
        return given  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]  # type: ignore[return-value]
    if suffix in ("", ".png", ".frames"):
        return "png"
    raise StyleDeckError(f"Cannot tell the video format from {Path(path).name}: use .mp4, .gif or .webp, or a "
                         "folder name for PNG frames.")


def parse_size(text: str) -> tuple[int, int] | int:
    """'640x360' -> (640, 360); '512' -> 512 (the longer side)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise StyleDeckError(f"Cannot read the size {text!r}: write WIDTHxHEIGHT (640x360) or one number for the "
                             "longer side (512).")
    return (values[0], values[1]) if len(values) == 2 else values[0]


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [height, width, 3]: area averaging when shrinking, Lanczos when growing
    (the rule photos follow in engine/training/dataset.py)."""
    width, height = size
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LANCZOS4
    return cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=interp)


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in 4:2:0 needs even sides: an odd side grows by one copied edge row or column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def encode_frames(frames: Iterable[np.ndarray], output: str | os.PathLike, opts: EncodeOptions, *,
                  fmt: VideoFormat | None = None, num_frames: int | None = None,
                  on_size: Callable[[tuple[int, int]], None] | None = None) -> Path:
    """Write every frame of `frames` to `output` in `fmt` (default: from the suffix); returns the path.

    `on_size((width, height))` is told the size written once the first frame is known.
    Raises StyleDeckError when nothing came, or the format cannot be written here.
    """
    output = Path(output)
    fmt = output_format(output, fmt or opts.format)
    if not output.parent.exists():
        raise StyleDeckError(f"The folder {output.parent} does not exist; create it or choose another output.")
    if fmt == "png" and output.exists() and not output.is_dir():
        raise StyleDeckError(f"{output} is a file; PNG frames go into a folder: choose a folder name.")
    if fmt != "png" and output.is_dir():
        raise StyleDeckError(f"{output} is a folder; choose a file name ending in .{fmt}.")
    if fmt == "webp":
        _check_webp()

    def sized(source: Iterable[np.ndarray]):
        told = False
        for frame in source:
            frame = np.asarray(frame)
            if opts.size is not None:
                frame = resize_frame(frame, opts.size)
            if fmt == "mp4":
                frame = _even(frame)
            if not told and on_size is not None:
                on_size((int(frame.shape[1]), int(frame.shape[0])))
                told = True
            yield frame

    writer = {"mp4": _write_mp4, "gif": _write_gif, "webp": _write_webp, "png": _write_png}[fmt]
    count = writer(sized(frames), output, opts)
    if num_frames is not None and count != num_frames:  # a source that ran dry is a bug, not a user error
        log.warning("expected %d frames, wrote %d", num_frames, count)
    return output


def _write_mp4(frames: Iterable[np.ndarray], output: Path, opts: EncodeOptions) -> int:
    import imageio
    count = 0
    quality = None if opts.bitrate is not None else opts.quality
    with atomic_write(output) as tmp:
        # macro_block_size=2: keep the size (imageio would otherwise scale it to a multiple of 16);
        # _even has made both sides even already.
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=opts.fps, codec="libx264", quality=quality,
                                    bitrate=opts.bitrate, pixelformat="yuv420p", macro_block_size=2,
                                    ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
                count += 1
        finally:
            # Not `with`: imageio's writer skips close() when the block raises, and ffmpeg, still running,
            # would then write the temporary file again after atomic_write has removed it.
            writer.close()
        if count == 0:
            raise StyleDeckError("There were no frames to write.")
    return count


def _frame_ms(opts: EncodeOptions, step: int) -> int:
    """Milliseconds per frame; GIF stores hundredths of a second, so its frames last a multiple of 10 ms."""
    ms = 1000.0 / opts.fps
    stored = max(step, int(round(ms / step)) * step)
    if abs(stored - ms) > 0.5:
        log.warning("%.4g fps is stored as %d ms per frame (%.4g fps) in this format", opts.fps, stored, 1000 / stored)
    return stored


def _pil_frames(frames: Iterable[np.ndarray]) -> list:
    from PIL import Image
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    if not images:
        raise StyleDeckError("There were no frames to write.")
    return images


def _write_gif(frames: Iterable[np.ndarray], output: Path, opts: EncodeOptions) -> int:
    from PIL import Image
    dither = Image.Dither.FLOYDSTEINBERG if opts.dither else Image.Dither.NONE
    # Each frame gets its own palette (median cut over its pixels): the colours stay right as the
    # picture changes. Pillow keeps all frames until it writes (it diffs neighbours), so memory grows
    # with the animation; it also merges a frame identical to the one before into a longer frame.
    images = [im.quantize(colors=opts.colors, method=Image.Quantize.MEDIANCUT, dither=dither)
              for im in _pil_frames(frames)]
    with atomic_write(output) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=_frame_ms(opts, 10),
                       loop=opts.loop, disposal=1)
    return len(images)


def _check_webp() -> None:
    from PIL import features
    if not features.check("webp"):
        raise StyleDeckError("This installation cannot write WebP: its Pillow was built without libwebp. Export an "
                             "mp4 or gif instead, or install a Pillow wheel with WebP support (pip install -U pillow).")


def _write_webp(frames: Iterable[np.ndarray], output: Path, opts: EncodeOptions) -> int:
    images = _pil_frames(frames)
    with atomic_write(output) as tmp:
        images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=_frame_ms(opts, 1),
                       loop=opts.loop, quality=int(round(opts.quality * 10)), method=4)
    return len(images)


def _write_png(frames: Iterable[np.ndarray], output: Path, opts: EncodeOptions) -> int:
    import imageio.v3 as iio
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        count = 0
        for frame in frames:
            iio.imwrite(tmp / f"frame{count:05d}.png", frame)
            count += 1
        if count == 0:
            raise StyleDeckError("There were no frames to write.")
        os.chmod(tmp, 0o755)                                             # mkdtemp makes it private
        if output.exists():                                              # swap: the old folder goes last
            old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old."))
            os.replace(output, old / output.name)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count
