"""Images: network output to uint8 arrays, grids, and PNG files.

`img` is float [N, C, H, W] in about [-1, 1] (a tensor); `image` is uint8 [H, W, C] numpy, the
form that reaches the app and the disk. C is 3 (RGB), 1 (grayscale) or 4 (RGBA).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np
import torch

from engine.errors import StyleDeckError
from engine.jobs import atomic_write


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """img [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C], exactly as NVIDIA's scripts convert.

    (x * 127.5 + 128).clamp(0, 255) then truncation to uint8, so -1 maps to 0 (0.5 clamped up)
    and 1 to 255; identical arithmetic gives identical PNGs to gen_images.py.
    """
    if img.ndim != 4:
        raise StyleDeckError(f"Expected images [N, C, H, W]; got shape {list(img.shape)}.")
    img = img.detach().to(torch.float32)
    image = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # [N, H, W, C]
    return image.cpu().numpy()


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] with C in {1, 3, 4} -> [..., H, W, 3]: gray repeated, alpha dropped."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:
        return np.ascontiguousarray(image[..., :3])
    raise StyleDeckError(f"Cannot show an image with {channels} channels; expected 1, 3 or 4.")


def to_images(img: torch.Tensor) -> list[np.ndarray]:
    """img [N, C, H, W] -> N independent uint8 RGB images [H, W, 3] (what the app shows)."""
    return [np.ascontiguousarray(image) for image in to_rgb(to_uint8(img))]


def image_grid(images: Sequence[np.ndarray] | np.ndarray, rows: int | None = None, cols: int | None = None,
               fill: int = 0) -> np.ndarray:
    """Tile N uint8 images [H, W, C] row by row into [rows*H, cols*W, C]; empty cells get `fill`.

    With neither rows nor cols, the grid is as square as it can be (cols = ceil(sqrt(N))).
    """
    images = [np.asarray(im) for im in images]
    if not images:
        raise StyleDeckError("Cannot make a grid of no images.")
    h, w, c = images[0].shape
    if any(im.shape != (h, w, c) for im in images):
        raise StyleDeckError(f"Grid images differ in size: {sorted({im.shape for im in images})}.")
    n = len(images)
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(n))
    if cols is None:
        cols = math.ceil(n / rows)
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise StyleDeckError(f"A {rows}x{cols} grid has no room for {n} images.")
    grid = np.full((rows, cols, h, w, c), fill, dtype=images[0].dtype)
    for i, im in enumerate(images):
        grid[i // cols, i % cols] = im
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)  # [rows*H, cols*W, C]


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 [H, W, C] (C 1, 3 or 4) or [H, W] as a PNG, atomically: a reader never sees half a file."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise StyleDeckError(f"PNG images must be uint8; got {image.dtype}.")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]  # grayscale PNG ('L')
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise StyleDeckError(f"Cannot save an image of shape {list(image.shape)} as PNG.")
    with atomic_write(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path
