"""Saved images that remember how they were made: a PNG with the recipe inside, and beside it.

The recipe is the editing state's JSON plus the exact W+ that was rendered. It goes into the
PNG as a compressed text chunk named "styledeck" (image viewers ignore it; `read_image_recipe`
and Pillow's `Image.open(path).text` read it) and into a sidecar "<stem>.json" next to the PNG,
which survives tools that strip PNG metadata.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from engine.edit_state import EditState, from_json, to_json
from engine.errors import CorruptFileError, StyleDeckError
from engine.jobs import atomic_write

__all__ = ["RECIPE_FORMAT", "RECIPE_KEY", "RECIPE_VERSION", "read_image_recipe", "recipe_sidecar", "save_image"]

RECIPE_KEY = "styledeck"            # PNG text chunk keyword
RECIPE_FORMAT = "styledeck-image-recipe"
RECIPE_VERSION = 1


def recipe_sidecar(path: str | os.PathLike) -> Path:
    """The sidecar of an image: "portrait.png" -> "portrait.json" in the same folder."""
    return Path(path).with_suffix(".json")


def _recipe(result: Any, state: EditState) -> str:
    ws = np.ascontiguousarray(result.ws, dtype="<f4")  # little-endian float32 bytes, any host
    document = {
        "format": RECIPE_FORMAT,
        "version": RECIPE_VERSION,
        "state": to_json(state),
        "ws": {"dtype": "float32", "shape": list(ws.shape), "data": base64.b64encode(ws.tobytes()).decode("ascii")},
        "preview": bool(result.preview),
        "size": list(np.shape(result.image)[:2]),  # [H, W]
    }
    return json.dumps(document, indent=1)


def save_image(path: str | os.PathLike, result: Any, state: EditState) -> Path:
    """Write `result.image` as a PNG carrying the recipe (state + ws), and the same recipe as "<stem>.json".

    Both writes are atomic; returns the PNG's path. `result` is a RenderResult.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise StyleDeckError(f"Images are saved as PNG; choose a name ending in .png instead of {path.name}.")
    image = np.asarray(result.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise StyleDeckError(f"Cannot save an image of shape {list(image.shape)} ({image.dtype}) as PNG.")
    text = _recipe(result, state)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECIPE_KEY, text, zip=True)  # compressed: a 1024 px network's ws is ~50 kB of base64
    with atomic_write(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", pnginfo=info)
    with atomic_write(recipe_sidecar(path)) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def _png_recipe(path: Path) -> str | None:
    """The recipe text in a PNG's "styledeck" chunk; None when the file has none or is no PNG."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return None
            return im.text.get(RECIPE_KEY)  # .text reads every text chunk, before or after the pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _parse(text: str, where: str) -> tuple[EditState, np.ndarray]:
    def corrupt(field: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"The recipe of {where} is damaged: field {field!r} {problem}.")

    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CorruptFileError(f"The recipe of {where} is not valid JSON ({exc}).") from exc
    if not isinstance(document, dict) or document.get("format") != RECIPE_FORMAT:
        raise corrupt("format", f"should be {RECIPE_FORMAT!r}")
    if document.get("version") != RECIPE_VERSION:
        raise corrupt("version", f"is {document.get('version')!r}; this StyleDeck reads version {RECIPE_VERSION}")
    for field in ("state", "ws"):
        if field not in document:
            raise corrupt(field, "is missing")
    state = from_json(document["state"], where=f"the recipe of {where}")
    entry = document["ws"]
    try:
        shape = tuple(int(n) for n in entry["shape"])
        data = base64.b64decode(entry["data"], validate=True)
        ws = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)  # a writable copy
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt("ws", f"is not a float32 array ({exc})") from exc
    return state, ws


def read_image_recipe(path: str | os.PathLike) -> tuple[EditState, np.ndarray]:
    """(state, ws) saved with an image by `save_image`: from the PNG chunk, else from "<stem>.json".

    `path` may also name the sidecar itself. No recipe anywhere -> CorruptFileError.
    """
    path = Path(path)
    if not path.exists():
        raise StyleDeckError(f"There is no image at {path}.")
    if path.suffix.lower() == ".json":
        return _parse(path.read_text(encoding="utf-8"), path.name)
    text = _png_recipe(path)
    if text is not None:
        return _parse(text, path.name)
    sidecar = recipe_sidecar(path)
    if sidecar.is_file():
        try:
            return _parse(sidecar.read_text(encoding="utf-8"), sidecar.name)
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{sidecar.name} is not a StyleDeck recipe: it is not text.") from exc
    raise CorruptFileError(f"{path.name} holds no StyleDeck recipe: it has no {RECIPE_KEY!r} text chunk and "
                           f"there is no {sidecar.name} beside it.")
