"""Fine-tuning in a child process, so the editor stays responsive while it trains.

The app calls `start_finetune(opts)`; a child started with the "spawn" method (its own CUDA
context and GIL, nothing of Qt inherited) runs `train(opts, progress=, cancel=, pause=)` and
turns everything that happens into events on a queue, which the app drains with `poll()` from a
QTimer:

    Started(pid, opts)                      the child is up (after its imports)
    Progressed(progress)                    at most ~10 per second; the last one is always sent
    SnapshotWritten(path, grid_path, kimg)  a new network-snapshot-*.safetensors in opts.outdir
    Finished(result) | Stopped(snapshot) | Failed(message, details)   exactly one, last

Pause, resume and stop go through `multiprocessing` Events: `pause()` sets the one train() waits
on; `stop()` sets the one its CancelToken reads, so the child finishes the step it is in, writes
nothing partial (snapshots are atomic) and sends Stopped. A child that dies without a last event
(killed, out of memory) shows as `alive == False` and a Failed("worker exited with code N") from
`poll()`.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # before our atexit hook: hooks run last-registered first (see _stop_all_at_exit)
import os
import pickle
import queue
import re
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.errors import Cancelled, StyleDeckError
from engine.jobs import CancelToken, Progress
from engine.training.loop import DATASET_MESSAGE

log = logging.getLogger(__name__)

__all__ = ["Failed", "FinetuneEvent", "FinetuneProcess", "Finished", "Progressed", "SnapshotWritten", "Started",
           "Stopped", "start_finetune"]

PROGRESS_INTERVAL_S = 0.1       # at most ~10 Progressed events per second
BACKGROUND_NICE = 10            # the worker's CPU priority below the app's (POSIX nice increment)
_SNAPSHOT_NAME = re.compile(r"^network-snapshot-(\d{9,})\.safetensors$")  # engine/training/snapshot.py's names
_GRID_WAIT_S = 2.0              # how long a new snapshot waits for its sample grid before it is reported


# ---------------------------------------------------------------------------------------------
# Events: frozen and picklable, they cross the process boundary

@dataclass(frozen=True)
class Started:
    pid: int
    opts: Any


@dataclass(frozen=True)
class Progressed:
    progress: Progress


@dataclass(frozen=True)
class SnapshotWritten:
    path: Path
    grid_path: Path | None
    kimg: float


@dataclass(frozen=True)
class Finished:
    result: Any


@dataclass(frozen=True)
class Stopped:
    snapshot: Path | None       # the newest snapshot this run wrote, if any


@dataclass(frozen=True)
class Failed:
    message: str                # what to show the user
    details: str = ""           # the traceback, for an unexpected error


FinetuneEvent = Started | Progressed | SnapshotWritten | Finished | Stopped | Failed
_LAST_EVENTS = (Finished, Stopped, Failed)
TrainFunction = Callable[..., Any]  # train(opts, *, progress=None, cancel=None, pause=None) -> result


# ---------------------------------------------------------------------------------------------
# The child's side

class _Reporter:
    """Sends the child's events: throttles progress, and reports snapshots as they appear in outdir."""

    def __init__(self, events: Any, outdir: str | os.PathLike | None, interval: float = PROGRESS_INTERVAL_S):
        self._events = events
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: Progress | None = None
        self._last_sent = float("-inf")
        self._outdir = Path(outdir) if outdir else None
        self._known = set(self._snapshot_names())     # snapshots from before this run are not news
        self._waiting: dict[str, float] = {}           # new snapshot -> when first seen (grid not yet there)
        self.latest_snapshot: Path | None = None
        self._closed = threading.Event()
        # Sends a held-back progress event once it is due, even if train() calls no more
        # (a long step, a pause), and notices snapshots between calls.
        self._flusher = threading.Thread(target=self._flush_loop, name="finetune-events", daemon=True)
        self._flusher.start()

    def put(self, event: FinetuneEvent) -> None:
        self._events.put(event)

    def progress(self, progress: Progress) -> None:
        """train()'s progress callback: at most one event per interval; the others are held back, the
        newest replacing the older, and sent when due. A final or preview-carrying event, and the
        once-per-run dataset report, go at once."""
        with self._lock:
            self._check_snapshots()
            now = time.monotonic()
            final = progress.total > 0 and progress.step >= progress.total
            once = progress.message.startswith(DATASET_MESSAGE)
            if final or once or progress.preview is not None or now - self._last_sent >= self._interval:
                self._send(progress, now)
            else:
                if progress.metrics is None and self._pending is not None and self._pending.metrics is not None:
                    # a plain status message must not swallow a held-back tick's metrics (a plot point)
                    progress = dataclasses.replace(progress, metrics=self._pending.metrics)
                self._pending = progress

    def _send(self, progress: Progress, now: float) -> None:
        self._events.put(Progressed(progress))
        self._pending = None
        self._last_sent = now

    def _flush_loop(self) -> None:
        while not self._closed.wait(self._interval):
            with self._lock:
                self._check_snapshots()
                if self._pending is not None and time.monotonic() - self._last_sent >= self._interval:
                    self._send(self._pending, time.monotonic())

    def close(self) -> None:
        """Stop the flusher; send what is held back and every snapshot not yet reported."""
        self._closed.set()
        self._flusher.join()
        with self._lock:
            if self._pending is not None:
                self._send(self._pending, time.monotonic())
            self._check_snapshots(final=True)

    def _snapshot_names(self) -> list[str]:
        if self._outdir is None or not self._outdir.is_dir():
            return []
        return sorted(p.name for p in self._outdir.iterdir() if _SNAPSHOT_NAME.match(p.name))

    def _check_snapshots(self, final: bool = False) -> None:
        now = time.monotonic()
        for name in self._snapshot_names():
            if name in self._known:
                continue
            digits = _SNAPSHOT_NAME.match(name).group(1)
            grid = self._outdir / f"fakes{digits}.png"
            first_seen = self._waiting.setdefault(name, now)
            if not grid.is_file() and not final and now - first_seen < _GRID_WAIT_S:
                continue  # the loop may write the grid just after the network file
            self._known.add(name)
            self._waiting.pop(name, None)
            path = self._outdir / name
            self.latest_snapshot = path
            self._events.put(SnapshotWritten(path, grid if grid.is_file() else None, int(digits) / 1000))


def _default_train() -> TrainFunction:
    from engine.training.loop import train  # resolved in the child, so a failing import becomes Failed
    return train


def _watch_parent(stop: Any) -> None:
    """Stop training when the parent process goes away (the app crashed or was killed)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        stop.set()


def _checked(event: FinetuneEvent) -> FinetuneEvent:
    """`event`, or a Failed saying why it cannot cross the process boundary (a result that will not pickle)."""
    try:
        pickle.dumps(event)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
        return Failed(f"Fine-tuning ended, but its {type(event).__name__} event could not be sent: {exc}")
    return event


def _yield_cpu_to_the_app() -> None:
    """Run the worker at a lower CPU priority, so that the window's renders win the cores while it
    trains (on CPU both use every core; with equal priority each render waited on training's threads)."""
    if hasattr(os, "nice"):       # POSIX; elsewhere the worker keeps the app's priority
        try:
            os.nice(BACKGROUND_NICE)
        except OSError:           # not permitted: train at the same priority rather than not at all
            pass


def _run(target: TrainFunction | None, opts: Any, events: Any, stop: Any, pause: Any) -> None:
    """The child: every outcome of train() becomes one last event on `events`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the parent's to handle
    _yield_cpu_to_the_app()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(stop,), name="finetune-parent-watch", daemon=True).start()
    reporter = _Reporter(events, getattr(opts, "outdir", None))
    last: FinetuneEvent
    try:
        train = target if target is not None else _default_train()
        reporter.put(Started(os.getpid(), opts))
        result = train(opts, progress=reporter.progress, cancel=CancelToken(stop), pause=pause)
        last = Finished(result)
    except Cancelled as exc:
        # train() puts the snapshot it wrote on stopping on the exception; else the newest we saw
        last = Stopped(getattr(exc, "snapshot", None))
    except StyleDeckError as exc:
        last = Failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - the worker boundary: report, with the traceback
        if type(exc).__name__ == "OutOfMemoryError":   # torch.cuda.OutOfMemoryError, without importing torch
            last = Failed("The GPU ran out of memory while training; try a smaller batch size.",
                          traceback.format_exc())
        else:
            last = Failed(f"Fine-tuning failed unexpectedly ({type(exc).__name__}: {exc}).", traceback.format_exc())
    reporter.close()
    if isinstance(last, Stopped) and last.snapshot is None:
        last = Stopped(reporter.latest_snapshot)
    events.put(_checked(last))
    events.close()
    events.join_thread()  # everything is in the pipe before the child exits


# ---------------------------------------------------------------------------------------------
# The parent's side

_live: set[FinetuneProcess] = set()   # children not yet ended or joined, for the exit hook


def _stop_all_at_exit() -> None:
    # multiprocessing joins non-daemon children at exit; ask them to stop first, so that
    # quitting the app ends a run after its current step instead of waiting for all of it.
    for proc in list(_live):
        proc.stop()


class FinetuneProcess:
    """The parent's handle on a fine-tuning child; `start_finetune` makes one."""

    def __init__(self, process: multiprocessing.process.BaseProcess, events: Any, stop: Any, pause: Any):
        self.process = process
        self._events, self._stop, self._pause = events, stop, pause
        self._buffer: list[FinetuneEvent] = []
        self._ended = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    @property
    def ended(self) -> bool:
        """Whether poll() has returned the last event (Finished, Stopped or Failed)."""
        return self._ended

    def pause(self) -> None:
        """Hold training after the current step; snapshots and progress stop until resume()."""
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        """Ask the child to stop after its current step; it then sends Stopped (or Finished if it was done)."""
        self._stop.set()
        self._pause.clear()  # a paused loop must wake up to see the stop

    def kill(self) -> None:
        """End the child at once (SIGKILL); the last snapshot on disk stays intact."""
        if self.process.is_alive():
            self.process.kill()

    def _drain(self, timeout: float = 0.0) -> None:
        """Move every event waiting on the queue into the buffer; wait up to `timeout` for the first."""
        block = timeout > 0
        while True:
            try:
                event = self._events.get(block=block, timeout=timeout) if block else self._events.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError):  # the queue's pipe broke with the child
                return
            block = False
            self._buffer.append(event)

    def poll(self) -> list[FinetuneEvent]:
        """The events since the last call, oldest first; never blocks for long."""
        self._drain()
        if not self._ended and not any(isinstance(e, _LAST_EVENTS) for e in self._buffer) \
                and not self.process.is_alive():
            self._drain(timeout=0.2)  # what the child wrote just before it exited
            if not any(isinstance(e, _LAST_EVENTS) for e in self._buffer):
                self._buffer.append(Failed(_exit_message(self.process.exitcode)))
        events, self._buffer = self._buffer, []
        if any(isinstance(e, _LAST_EVENTS) for e in events):
            self._ended = True
            _live.discard(self)
        return events

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the child to exit (keeping its events for poll()); True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.process.is_alive():
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            self._drain()  # a child with events left in its pipe cannot exit until they are read
            self.process.join(left)
        self.process.join()
        _live.discard(self)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop the child, wait up to `timeout` s for it to end its step, then kill it if it has not."""
        self.stop()
        if not self.join(timeout):
            log.warning("fine-tuning worker %s did not stop within %.0f s; killing it", self.pid, timeout)
            self.kill()
            self.process.join()


def _exit_message(code: int | None) -> str:
    why = ""
    if code is not None and code < 0:
        try:
            why = f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return (f"worker exited with code {code}{why} before fine-tuning ended; the snapshots written so far "
            "are intact.")


def start_finetune(opts: Any, *, target: TrainFunction | None = None) -> FinetuneProcess:
    """Start `train(opts, ...)` in a spawned child process and return its handle.

    Args:
        opts: the TrainOptions (or, with `target`, whatever it takes); must pickle. Snapshots
            appearing in `opts.outdir` become SnapshotWritten events.
        target: a top-level function with train()'s signature, run instead of
            engine.training.loop.train (tests use small stand-ins).
    """
    ctx = multiprocessing.get_context("spawn")
    events, stop, pause = ctx.Queue(), ctx.Event(), ctx.Event()
    process = ctx.Process(target=_run, args=(target, opts, events, stop, pause), name="styledeck-finetune")
    process.start()
    # The parent only reads. Closing its copy of the queue's write end leaves the child the only
    # writer, so a child killed in the middle of a message gives EOF instead of a read that waits
    # for the rest forever. (A private attribute: multiprocessing offers no public way.)
    writer = getattr(events, "_writer", None)
    if writer is not None:
        writer.close()
    handle = FinetuneProcess(process, events, stop, pause)
    _live.add(handle)
    return handle


atexit.register(_stop_all_at_exit)
