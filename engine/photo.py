"""A target photo for projection: any readable file -> uint8 [R, R, C] at the network's size.

Decoding tries OpenCV first (JPEG turned upright by EXIF, 16-bit PNG scaled to 8 bits, alpha
kept) and Pillow second (GIF, TIFF and the other formats OpenCV lacks). The pixels are then
prepared exactly as training images are (`engine.training.dataset.prepare_image`): alpha
composited on white, grayscale repeated to three channels, a centred square crop or white
padding, INTER_AREA when shrinking and LANCZOS4 when growing.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from engine.errors import CorruptFileError
from engine.training.dataset import prepare_image

__all__ = ["decode_photo", "load_photo"]


def _decode_cv2(data: bytes) -> np.ndarray | None:
    """OpenCV decode -> uint8 [H, W, 1|3|4] RGB(A), or None when OpenCV cannot read it."""
    jpeg = data[:2] == b"\xff\xd8"
    if jpeg and data.rfind(b"\xff\xd9") <= data.rfind(b"\xff\xda"):
        return None                              # cut-off JPEG: OpenCV would fill it with grey
    flags = cv2.IMREAD_COLOR if jpeg else cv2.IMREAD_UNCHANGED   # IMREAD_COLOR applies EXIF
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)   # 65535 -> 255
    elif img.dtype != np.uint8:
        return None
    if img.ndim == 2:
        img = img[:, :, None]                    # [H, W] -> [H, W, 1]
    if img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.shape[2] != 1:
        return None
    return img


def _decode_pil(data: bytes) -> np.ndarray | None:
    """Pillow decode (first frame) -> uint8 [H, W, 1|3|4], or None."""
    from PIL import Image, ImageOps
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("L", "I;16", "I", "F", "1"):
                arr = np.asarray(im.convert("L"))[:, :, None]
            else:
                arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except Exception:                            # Pillow raises many types for broken files
        return None
    return arr if arr.size else None


def decode_photo(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes of an image file -> uint8 [H, W, 1|3|4] RGB(A); CorruptFileError naming `name` otherwise."""
    if not data:
        raise CorruptFileError(f"{name} is empty (0 bytes); choose an image file (PNG, JPEG, WebP, ...).")
    image = _decode_cv2(data)
    if image is None:
        image = _decode_pil(data)
    if image is None:
        raise CorruptFileError(f"{name} is not a readable image (corrupt, truncated or an unknown format); "
                               "choose a PNG, JPEG, WebP, BMP, TIFF or GIF file.")
    return image


def load_photo(path: str | os.PathLike, resolution: int, *, fit: Literal["crop", "pad"] = "crop",
               channels: int = 3) -> np.ndarray:
    """Read a photo and prepare it for a network of side `resolution`: uint8 [R, R, channels].

    Raises:
        CorruptFileError: the file is missing, empty, unreadable or not an image.
    """
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"Cannot read the photo {path}: {exc.strerror or exc}.") from exc
    image = decode_photo(data, str(path))
    prepared = prepare_image(image, resolution, fit=fit, channels=channels)   # [C, R, R]
    return np.ascontiguousarray(prepared.transpose(1, 2, 0))                 # [R, R, C]
