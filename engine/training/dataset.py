"""Training images from a folder or a zip, prepared once to squares of the network's size.

A dataset is a folder (searched recursively) or a zip in the layout NVIDIA's `dataset_tool.py`
writes (`00000/img00000000.png`, ..., and `dataset.json` at the root; a zip whose entries all sit
in one top-level folder is read from inside that folder). Files are taken in sorted order of their
'/'-separated relative paths, as NVIDIA's `ImageFolderDataset` does, so a folder and its zip give
the same items in the same order.

Each image is decoded with OpenCV and prepared the same way:
- JPEG, PNG, WebP and BMP are read (extension case does not matter); JPEGs are turned upright
  by their EXIF orientation; 16-bit PNGs are scaled to 8 bits.
- Transparency is composited on white (`BACKGROUND`): a transparent sticker becomes an object
  on a white page, where NVIDIA's tool would keep whatever colour hides under alpha = 0.
- Grayscale becomes three equal channels (`channels=3`); colour becomes luma for `channels=1`.
- `fit="crop"` cuts the centred square of side min(H, W); `fit="pad"` centres the image on a
  square of side max(H, W) filled with the same white, so nothing of the image is lost.
- The square is resized to `resolution` with `cv2.INTER_AREA` when it shrinks (an exact box
  average, no aliasing) and `cv2.INTER_LANCZOS4` when it grows; the result is uint8 [C, H, W].

A file that cannot be used (not an image, truncated, undecodable, unlisted in `dataset.json`)
is skipped and named in `report` with the reason; a dataset with no usable image raises
`DatasetError` from the constructor, before any training starts.

The prepared images can be cached as one uint8 `.npy` [N, C, R, R] (memory-mapped when read, so
a large dataset costs no RAM) with a small `.json` beside it (names, skipped files, key). The key
hashes the source path, every file's relative path, size and mtime (a zip: its members' sizes and
CRCs) and the options that change pixels (resolution, fit, channels), so touching a file, adding
one or changing the options builds a new cache; the stale one of the same source is deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import cv2
import numpy as np
import torch

from engine.errors import StyleDeckError
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write

__all__ = ["BACKGROUND", "IMAGE_EXTENSIONS", "DatasetError", "DatasetOptions", "DatasetReport",
           "ImageDataset", "default_cache_dir", "prepare_image"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
BACKGROUND = 255                    # white: what transparent pixels and padding become
MAX_FILE_BYTES = 1 << 29            # 512 MiB: larger "images" are refused unread (zip bombs)
_LABELS_FILE = "dataset.json"
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_CACHE_VERSION = 1                  # bump when the preparation of pixels changes


class DatasetError(StyleDeckError):
    """The dataset cannot be used: missing, unreadable, no usable image, or bad labels."""


@dataclass(frozen=True)
class DatasetOptions:
    """What to read and how to prepare it; `resolution` is the network's image size."""
    path: str                                   # folder (recursive) or .zip
    resolution: int                             # side of the square images, pixels
    fit: Literal["crop", "pad"] = "crop"        # centred square crop, or pad with white
    xflip: bool = False                         # also serve each image mirrored (2x the items)
    use_labels: bool = False                    # read class labels from dataset.json
    cache: bool = True                          # keep prepared images on disk for the next run
    channels: int = 3                           # 3 (RGB) or 1 (grayscale networks)


@dataclass(frozen=True)
class DatasetReport:
    """How many images are used, and each skipped file (relative path, reason)."""
    used: int
    skipped: tuple[tuple[str, str], ...] = ()

    def summary(self, limit: int = 3) -> str:
        """One line for logs and the CLI, e.g. '120 images, 2 skipped: a.png (truncated), ...'."""
        text = f"{self.used} image{'s' if self.used != 1 else ''}"
        if self.skipped:
            shown = ", ".join(f"{path} ({reason})" for path, reason in self.skipped[:limit])
            more = ", ..." if len(self.skipped) > limit else ""
            text += f", {len(self.skipped)} skipped: {shown}{more}"
        return text


class UnusableImage(Exception):
    """One file cannot be used; str(exc) is the reason put in the report."""


def default_cache_dir() -> Path:
    """$STYLEDECK_CACHE/datasets, else ~/.cache/styledeck/datasets."""
    env = os.environ.get("STYLEDECK_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "styledeck"
    return base / "datasets"


# ---------------------------------------------------------------------------------------------
# Preparing one image

def decode_image(data: bytes, name: str) -> np.ndarray:
    """Bytes of one file -> uint8 [H, W, C], C in {1, 3, 4}, RGB(A) order; raises UnusableImage."""
    suffix = Path(name).suffix.lower()
    if data[:2] == b"\xff\xd8":              # JPEG by content (OpenCV ignores the extension too)
        # Entropy-coded data never holds FF D9, so a complete JPEG has its end marker after its
        # last start-of-scan; older OpenCV builds return a grey-filled image for a cut-off file.
        if data.rfind(b"\xff\xd9") <= data.rfind(b"\xff\xda"):
            raise UnusableImage("truncated JPEG (no end-of-image marker)")
        flags = cv2.IMREAD_COLOR            # applies the EXIF orientation; JPEG has no alpha
    else:
        flags = cv2.IMREAD_UNCHANGED        # keeps alpha and 16 bits (and ignores EXIF)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise UnusableImage(f"cannot decode: {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise UnusableImage(f"not a readable {suffix[1:].upper()} image (corrupt or truncated)")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)   # 65535 -> 255, rounded
    elif img.dtype != np.uint8:
        raise UnusableImage(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]                                           # [H, W] -> [H, W, 1]
    if img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.shape[2] != 1:
        raise UnusableImage(f"unsupported number of channels ({img.shape[2]})")
    return img


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W, 1|3|4] RGB(A) -> [H, W, channels], alpha composited on white."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        alpha = img[:, :, 3:].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * alpha + BACKGROUND * (1.0 - alpha)
        img = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif channels == 1 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]          # ITU-R 601 luma
    return img


def _to_square(img: np.ndarray, fit: str) -> np.ndarray:
    """[H, W, C] -> [S, S, C]: centred crop (S = min side) or white padding (S = max side)."""
    h, w = img.shape[:2]
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top:top + s, left:left + s]
    s = max(h, w)
    out = np.full((s, s, img.shape[2]), BACKGROUND, np.uint8)
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def prepare_image(image: np.ndarray, resolution: int, *, fit: Literal["crop", "pad"] = "crop",
                  channels: int = 3) -> np.ndarray:
    """uint8 [H, W], [H, W, 1|3|4] RGB(A) -> uint8 [channels, resolution, resolution], as the dataset does."""
    if image.dtype != np.uint8:
        raise ValueError(f"prepare_image takes uint8 pixels, not {image.dtype}")
    img = _to_square(_to_channels(image, channels), fit)
    side = img.shape[0]
    if side != resolution:
        # INTER_AREA is an exact box filter when shrinking; Lanczos keeps edges when growing.
        interp = cv2.INTER_AREA if side > resolution else cv2.INTER_LANCZOS4
        img = cv2.resize(np.ascontiguousarray(img), (resolution, resolution), interpolation=interp)
        img = img.reshape(resolution, resolution, -1)                   # cv2 drops a single channel
    return np.ascontiguousarray(img.transpose(2, 0, 1))                 # [H, W, C] -> [C, H, W]


# ---------------------------------------------------------------------------------------------
# Sources: a folder or a zip, listed as (relative path, size, stamp)

def _ignored(part: str) -> bool:
    return part.startswith(".") or part.lower() in _IGNORED_NAMES


class _Source:
    """Files of a dataset: `entries` [(rel, size, stamp)], `problems` [(rel, reason)], `read(rel)`."""
    kind: str
    entries: list[tuple[str, int, int]]
    problems: list[tuple[str, str]]

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FolderSource(_Source):
    kind = "folder"

    def __init__(self, root: Path):
        self.root, self.entries, self.problems = root, [], []

        def unlistable(exc: OSError) -> None:
            where = Path(exc.filename) if exc.filename else root
            if where == root:
                raise DatasetError(f"Cannot read the folder {root}: {exc.strerror or exc}.")
            self.problems.append((where.relative_to(root).as_posix() + "/",
                                  f"cannot list folder: {exc.strerror or exc}"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
            dirnames[:] = [d for d in dirnames if not _ignored(d)]
            for name in filenames:
                if _ignored(name):
                    continue
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                try:
                    st = full.stat()
                except OSError as exc:
                    self.problems.append((rel, f"cannot read: {exc.strerror or exc}"))
                    continue
                self.entries.append((rel, st.st_size, st.st_mtime_ns))

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _ZipSource(_Source):
    kind = "zip"

    def __init__(self, path: Path):
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"Cannot read {path} as a zip file ({exc}). Give a folder of "
                               "images or a zip made by dataset_tool.py.") from exc
        self.problems, self._lock = [], threading.Lock()    # one reader at a time on the file
        infos = [i for i in self.zip.infolist()
                 if not i.is_dir() and not any(_ignored(p) for p in i.filename.split("/"))]
        names = [i.filename for i in infos]
        # A zipped folder ("faces/...") is read from inside it, unless dataset.json sits at the top.
        self._prefix = ""
        tops = {n.split("/", 1)[0] for n in names}
        if _LABELS_FILE not in names and len(tops) == 1 and all("/" in n for n in names):
            self._prefix = tops.pop() + "/"
        self._infos = {i.filename[len(self._prefix):]: i for i in infos}
        self.entries = [(rel, i.file_size, i.CRC) for rel, i in self._infos.items()]

    def read(self, rel: str) -> bytes:
        with self._lock:
            try:
                return self.zip.read(self._infos[rel])
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
                raise UnusableImage(f"damaged zip entry ({exc})") from None

    def close(self) -> None:
        self.zip.close()


def _open_source(path: Path) -> _Source:
    if not path.exists():
        raise DatasetError(f"The dataset {path} does not exist. Give a folder of images or a zip.")
    if path.is_dir():
        return _FolderSource(path)
    if zipfile.is_zipfile(path):
        return _ZipSource(path)
    raise DatasetError(f"The dataset {path} is neither a folder nor a zip file. Give a folder of "
                       "images or a zip made by dataset_tool.py.")


# ---------------------------------------------------------------------------------------------
# Labels: NVIDIA's dataset.json, {"labels": [["00000/img00000000.png", 6], ...]}

def _read_labels(source: _Source, where: Path) -> dict[str, Any]:
    """relpath -> int class or list of floats; raises DatasetError when missing or malformed."""
    if not any(rel == _LABELS_FILE for rel, _, _ in source.entries):
        raise DatasetError(f"Labels were asked for, but {where} has no {_LABELS_FILE} at its top "
                           "level. Add one as NVIDIA's dataset_tool.py writes it, or train without labels.")
    try:
        raw = json.loads(source.read(_LABELS_FILE).decode("utf-8")).get("labels")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, UnusableImage) as exc:
        raise DatasetError(f"{_LABELS_FILE} in {where} is not readable JSON of the form "
                           '{"labels": [[path, label], ...]} (' + str(exc) + ").") from None
    if raw is None:
        raise DatasetError(f"{_LABELS_FILE} in {where} holds no labels (\"labels\": null).")
    labels: dict[str, Any] = {}
    for item in raw if isinstance(raw, list) else [raw]:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        value = item[1] if ok else None
        is_class = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        is_vector = (isinstance(value, list) and len(value) > 0
                     and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        if not (is_class or is_vector):
            raise DatasetError(f"{_LABELS_FILE} in {where}: {item!r} is not [path, class index >= 0] "
                               "or [path, [numbers]].")
        labels[item[0].replace("\\", "/")] = value
    kinds = {isinstance(v, int) for v in labels.values()}
    lengths = {len(v) for v in labels.values() if isinstance(v, list)}
    if len(kinds) > 1 or len(lengths) > 1:
        raise DatasetError(f"{_LABELS_FILE} in {where} mixes label kinds or vector lengths; use "
                           "class indices for all images, or vectors of one length.")
    if not labels:
        raise DatasetError(f"{_LABELS_FILE} in {where} lists no labels.")
    return labels


def _label_matrix(labels: dict[str, Any], names: list[str]) -> np.ndarray:
    """float32 [N, label_dim]: one-hot over max class + 1 of dataset.json, or the vectors as given."""
    values = [labels[n] for n in names]
    if isinstance(values[0], list):
        return np.asarray(values, np.float32)
    # Over the whole file (not only the images kept), so a skipped file never shrinks c_dim.
    onehot = np.zeros((len(names), max(labels.values()) + 1), np.float32)
    onehot[np.arange(len(names)), values] = 1
    return onehot


# ---------------------------------------------------------------------------------------------
# The dataset

class ImageDataset(torch.utils.data.Dataset):
    """Prepared square images of a folder or zip; item i -> (uint8 [C, R, R], float32 [label_dim]).

    With `xflip`, items n..2n-1 are items 0..n-1 mirrored left-right (NVIDIA's semantics).
    """

    def __init__(self, opts: DatasetOptions, *, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None, cache_dir: str | os.PathLike | None = None):
        if opts.fit not in ("crop", "pad"):
            raise DatasetError(f"fit must be 'crop' or 'pad', not {opts.fit!r}.")
        if opts.channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, not {opts.channels}.")
        if not isinstance(opts.resolution, numbers.Integral) or opts.resolution < 4:
            raise DatasetError(f"resolution must be a whole number of pixels >= 4, not {opts.resolution!r}.")
        self.opts = opts
        self.resolution, self.num_channels = int(opts.resolution), opts.channels
        path = Path(opts.path).expanduser()
        self.name = path.stem if path.is_file() else path.resolve().name

        source = _open_source(path)
        try:
            names, skipped = self._candidates(source)
            if not names:       # nothing that could be an image: fail before any decoding
                raise _no_usable(path, skipped)
            labels = _read_labels(source, path) if opts.use_labels else None
            if labels is not None:
                skipped += [(n, f"no label in {_LABELS_FILE}") for n in names if n not in labels]
                names = [n for n in names if n in labels]
                if not names:
                    raise _no_usable(path, skipped)
            key = self._cache_key(source, path, names)
            images, used, bad = self._load_or_prepare(source, path, names, skipped, key,
                                                      cache_dir, progress, cancel)
        finally:
            source.close()

        skipped += bad
        self._images = images                                           # [>= n, C, R, R] uint8
        self._names = used
        self._cache_file = Path(images.filename) if isinstance(images, np.memmap) else None
        self._labels = (np.zeros((len(used), 0), np.float32) if labels is None
                        else _label_matrix(labels, used))              # [n, label_dim]
        self.label_dim = self._labels.shape[1]
        self.report = DatasetReport(used=len(used), skipped=tuple(sorted(skipped)))
        if self.report.skipped:
            log.warning("Dataset %s: %s", self.name, self.report.summary())

    # -- what a training loop calls

    def __len__(self) -> int:
        return self.report.used * (2 if self.opts.xflip else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.report.used
        i = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        image = self._images[i % n]                                     # [C, R, R]
        if i >= n:
            image = image[:, :, ::-1]                                   # mirror: reverse W
        return torch.from_numpy(np.array(image)), torch.from_numpy(self._labels[i % n].copy())

    @property
    def has_labels(self) -> bool:
        return self.label_dim > 0

    def get_label(self, index: int) -> np.ndarray:
        """float32 [label_dim] of item `index` (no image read), for sampling conditioning c."""
        return self._labels[int(index) % self.report.used].copy()

    @property
    def names(self) -> tuple[str, ...]:
        """Relative paths of the used images, in item order (without the mirrored half)."""
        return tuple(self._names)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers (spawn) get the cache file's name and map it again, not a copy.
        state = self.__dict__.copy()
        if self._cache_file is not None:
            state["_images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._images is None:
            self._images = np.load(self._cache_file, mmap_mode="r")

    # -- scanning and preparing

    def _candidates(self, source: _Source) -> tuple[list[str], list[tuple[str, str]]]:
        """Sorted image paths, and the files that are skipped without reading them."""
        skipped = list(source.problems)
        names = []
        for rel, size, _ in source.entries:
            suffix = Path(rel).suffix.lower()
            if rel == _LABELS_FILE:
                continue
            if suffix not in IMAGE_EXTENSIONS:
                skipped.append((rel, f"not an image file ({suffix or 'no extension'}); "
                                     "StyleDeck reads JPEG, PNG, WebP and BMP"))
            elif size > MAX_FILE_BYTES:
                skipped.append((rel, f"too large ({size / 2**20:.0f} MiB)"))
            elif size == 0:
                skipped.append((rel, "empty file"))
            else:
                names.append(rel)
        return sorted(names), skipped

    def _cache_key(self, source: _Source, path: Path, names: list[str]) -> str:
        stats = {rel: (size, stamp) for rel, size, stamp in source.entries}
        blob = json.dumps({"version": _CACHE_VERSION, "source": str(path.resolve()),
                           "kind": source.kind, "files": [[n, *stats[n]] for n in names],
                           "resolution": self.resolution, "fit": self.opts.fit,
                           "channels": self.num_channels})
        return hashlib.sha256(blob.encode()).hexdigest()

    def _load_or_prepare(self, source: _Source, path: Path, names: list[str],
                         skipped: list[tuple[str, str]], key: str, cache_dir: str | os.PathLike | None,
                         progress: ProgressCallback | None, cancel: CancelToken | None
                         ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """(images [>= n, C, R, R], used names, skipped by decoding), from the cache when it matches."""
        shape = (len(names), self.num_channels, self.resolution, self.resolution)
        if not self.opts.cache:
            return self._prepare_in_memory(source, path, names, skipped, progress, cancel)

        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        origin = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        # One cache per source and pixel options: crop and pad coexist, a changed file replaces.
        stem = f"{_safe(self.name)}-{origin}-{self.resolution}-{self.opts.fit}-{self.num_channels}"
        npy, meta = folder / f"{stem}-{key[:16]}.npy", folder / f"{stem}-{key[:16]}.json"
        hit = _read_cache(npy, meta, key, shape)
        if hit is not None:
            if cancel is not None:
                cancel.raise_if_cancelled()
            if progress is not None:
                message = f"Read {len(hit[1])} prepared images from the cache"
                progress(Progress(len(names), len(names), message))
            log.info("Dataset %s: %d prepared images read from %s", self.name, len(hit[1]), npy)
            return hit
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(npy) as tmp:
                # Written in place, row by row: RAM stays flat however large the dataset is.
                images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                try:
                    used, bad = self._prepare(source, names, images, progress, cancel)
                    if not used:            # raised inside: atomic_write leaves no cache behind
                        raise _no_usable(path, skipped + bad)
                    images.flush()
                finally:
                    del images              # unmap before the rename (Windows refuses otherwise)
            with atomic_write(meta) as tmp:
                tmp.write_text(json.dumps({"key": key, "shape": list(shape), "names": used,
                                           "skipped": bad}))
        except OSError as exc:              # a read-only or full disk costs speed, not the run
            log.warning("Cannot write the dataset cache in %s (%s); preparing without it.", folder, exc)
            return self._prepare_in_memory(source, path, names, skipped, progress, cancel)
        for old in folder.glob(f"{stem}-*"):
            if old not in (npy, meta):
                try:
                    old.unlink()
                except OSError:
                    pass                    # still mapped by a live dataset (Windows)
        return np.load(npy, mmap_mode="r"), used, bad

    def _prepare_in_memory(self, source: _Source, path: Path, names: list[str],
                           skipped: list[tuple[str, str]], progress: ProgressCallback | None,
                           cancel: CancelToken | None) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        images = np.empty((len(names), self.num_channels, self.resolution, self.resolution), np.uint8)
        used, bad = self._prepare(source, names, images, progress, cancel)
        if not used:
            raise _no_usable(path, skipped + bad)
        return images[:len(used)], used, bad

    def _prepare(self, source: _Source, names: list[str], out: np.ndarray,
                 progress: ProgressCallback | None, cancel: CancelToken | None
                 ) -> tuple[list[str], list[tuple[str, str]]]:
        """Decode and prepare `names` into the first rows of `out`; returns (used, skipped)."""
        res, fit, channels = self.resolution, self.opts.fit, self.num_channels

        def one(rel: str) -> np.ndarray | str:
            try:
                return prepare_image(decode_image(source.read(rel), rel), res, fit=fit, channels=channels)
            except UnusableImage as exc:
                return str(exc)
            except OSError as exc:
                return f"cannot read: {exc.strerror or exc}"
            except (cv2.error, ValueError, MemoryError) as exc:
                return f"cannot prepare: {exc}"

        used: list[str] = []
        bad: list[tuple[str, str]] = []
        workers = max(1, min(8, os.cpu_count() or 1))     # cv2 decodes and resizes without the GIL
        chunk = 2 * workers                                # bounds the work done after a cancel
        with _quiet_opencv(), ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(names), chunk):
                batch = names[start:start + chunk]
                for k, (rel, result) in enumerate(zip(batch, pool.map(one, batch))):
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    if isinstance(result, str):
                        bad.append((rel, result))
                    else:
                        out[len(used)] = result
                        used.append(rel)
                    if progress is not None:
                        progress(Progress(start + k + 1, len(names), "Preparing images"))
        return used, bad


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own stderr lines for bad files while scanning; the report names them."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    level = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_api.setLogLevel(level)


def _read_cache(npy: Path, meta: Path, key: str, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]] | None:
    """The cached (images, used, skipped) when both files exist and match `key`, else None."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        images = np.load(npy, mmap_mode="r")
        used, bad = list(info["names"]), [tuple(s) for s in info["skipped"]]
        if info["key"] != key or images.shape != shape or images.dtype != np.uint8 or not used:
            return None
        return images, used, bad
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("Ignoring the unreadable dataset cache %s (%s).", npy, exc)
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "dataset"


def _no_usable(path: Path, skipped: list[tuple[str, str]]) -> DatasetError:
    if not skipped:
        return DatasetError(f"{path} has no usable image: it holds no files. "
                            "Add JPEG, PNG, WebP or BMP images.")
    examples = "; ".join(f"{p} ({r})" for p, r in sorted(skipped)[:3])
    return DatasetError(f"{path} has no usable image: {len(skipped)} file"
                        f"{'s' if len(skipped) != 1 else ''} skipped, e.g. {examples}.")
