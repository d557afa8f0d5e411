"""What every long job shares: progress events, a cancel token, and atomic file writes.

A job is an engine function shaped `job(inputs, opts, *, progress=None, cancel=None) -> Result`.
The CLI drives it with a terminal progress bar, the app with a worker thread, tests with plain
calls; all three see the same `Progress` values and stop it through the same `CancelToken`.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch

from engine.errors import Cancelled, DeviceOutOfMemoryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One progress event: `step` of `total` done, what is happening, and optional extras.

    `preview` is a uint8 image [H, W, 3] the job will not touch again (numpy, never a tensor);
    `metrics` maps a name (e.g. "loss") to a float for plots.
    """
    step: int
    total: int
    message: str
    preview: Any = None
    metrics: Mapping[str, float] | None = None

    @property
    def fraction(self) -> float:
        """Share of the job done, in [0, 1]; 0 where the total is not known."""
        return min(max(self.step / self.total, 0.0), 1.0) if self.total > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


class _EventLike(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...


class CancelToken:
    """Cooperative stop: the job polls it between steps; the front end calls `cancel()`.

    Wraps a `threading.Event` (worker threads) or a `multiprocessing.Event` (the fine-tuning
    child process), so one token type works on both sides of a process boundary.
    """

    def __init__(self, event: _EventLike | None = None):
        self.event = event if event is not None else threading.Event()

    def cancel(self) -> None:
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` once `cancel()` was called; a job calls this between steps."""
        if self.event.is_set():
            raise Cancelled("Stopped at the user's request.")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it becomes `path` only if the block succeeds.

    The temporary file lives in the same folder (so `os.replace` is atomic) and keeps the same
    suffix (so writers that pick a format from the name, like imageio, still do). On any
    exception, Cancelled and KeyboardInterrupt included, it is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode an ordinary write would.
        os.chmod(tmp_path, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def translate_oom(doing: str, advice: str) -> Iterator[None]:
    """CUDA out-of-memory inside the block becomes a DeviceOutOfMemoryError that says what to try.

    What the failed work reserved is given back first, so the model and image from before stay usable.
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        log.warning("out of device memory while %s: %s", doing, exc)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise DeviceOutOfMemoryError(f"The GPU ran out of memory while {doing}. {advice}") from exc
