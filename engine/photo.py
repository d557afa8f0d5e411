"""A target photo for projection: any readable file -> uint8 [R, R, C] at the network's size.

Decoding tries OpenCV first (JPEG turned upright by EXIF, 16-bit PNG scaled to 8 bits, alpha
kept) and Pillow second (GIF, TIFF and the other formats OpenCV lacks). The pixels are then
prepared exactly as training images are (`engine.training.dataset.prepare_image`): alpha
composited on white, grayscale repeated to three channels, a centred square crop or white
padding, INTER_AREA when shrinking and LANCZOS4 when growing. With `align`, an FFHQ-style face
crop (engine.face_align) replaces the square crop; where no detector is installed or no face is
found, the user's fit is used and `PreparedPhoto.note` says so.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from engine.errors import CorruptFileError
from engine.face_align import FaceAlignUnavailable, NoFaceFound, align_face
from engine.training.dataset import UnusableImage, decode_image, prepare_image

__all__ = ["PHOTO_SUFFIXES", "PreparedPhoto", "decode_photo", "load_photo", "prepare_photo"]

log = logging.getLogger(__name__)

# What decode_photo reads: a folder of photos is scanned for these, and the open dialog offers them.
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class PreparedPhoto:
    """image uint8 [R, R, C]; aligned: the FFHQ face crop was used; note: why not, when it was asked for."""
    image: np.ndarray
    aligned: bool = False
    note: str = ""


def _decode_cv2(data: bytes) -> np.ndarray | None:
    """The training dataset's OpenCV decoder -> uint8 [H, W, 1|3|4] RGB(A); None where it cannot read the file."""
    try:
        return decode_image(data, "photo")
    except UnusableImage:
        return None                              # Pillow may still read it


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


def _read(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"Cannot read the photo {path}: {exc.strerror or exc}.") from exc
    return decode_photo(data, str(path))


def prepare_photo(path: str | os.PathLike, resolution: int, *, fit: Literal["crop", "pad"] = "crop",
                  channels: int = 3, align: bool = False) -> PreparedPhoto:
    """Read a photo and prepare it for a network of side `resolution`, FFHQ-aligned when asked and possible.

    Raises:
        CorruptFileError: the file is missing, empty, unreadable or not an image.
    """
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
    path = Path(path)
    image = _read(path)
    note = ""
    if align:
        try:
            face = align_face(image, resolution)
        except (FaceAlignUnavailable, NoFaceFound) as exc:
            instead = "centre crop" if fit == "crop" else "padding"
            note = f"Face alignment skipped for {path.name}: {exc} Using the {instead} instead."
            log.info("%s", note)                     # the caller shows the note
        else:
            image = face.image                       # [R, R, 3]: prepare_image only converts channels now
    prepared = prepare_image(image, resolution, fit=fit, channels=channels)   # [C, R, R]
    return PreparedPhoto(np.ascontiguousarray(prepared.transpose(1, 2, 0)), align and not note, note)  # [R, R, C]


def load_photo(path: str | os.PathLike, resolution: int, *, fit: Literal["crop", "pad"] = "crop",
               channels: int = 3) -> np.ndarray:
    """Read a photo and prepare it for a network of side `resolution`: uint8 [R, R, channels].

    Raises:
        CorruptFileError: the file is missing, empty, unreadable or not an image.
    """
    return prepare_photo(path, resolution, fit=fit, channels=channels).image
