"""Run an engine job `job(*args, progress=, cancel=, **kwargs)` on a QThread with Qt signals.

The job's progress callback becomes a queued `progressed` signal (at most ~20 per second, plus
the last step); the run ends in exactly one of `finished(result)`, `cancelled()` or `failed(msg)`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal

from engine import CancelToken, Cancelled, Progress, StyleDeckError

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.05  # ~20 Hz: more would flood the GUI thread's event queue

# Threads still running, kept alive here: a QThread destroyed while it runs aborts the program,
# and a runner (or its window) may go away before its job ends.
_LIVE: set[QThread] = set()


def _forget(thread: _JobThread) -> None:
    """Drop our reference once `thread` has fully ended (its `finished` arrives queued, while the thread
    may still be winding down: destroying a QThread then makes its destructor wait for it with the
    GIL held, which deadlocks if the thread's last steps need the GIL). wait() releases the GIL.

    The thread also lets go of its job's arguments (a network, a photo) and of this connection,
    whose closure refers to the thread itself: a cycle through Qt that no collector can see."""
    thread.wait()
    thread.release_job()
    thread.finished.disconnect()
    _LIVE.discard(thread)


class _JobThread(QThread):
    """Calls the job; its signals are emitted from the job thread and arrive queued on the GUI."""

    progressed = Signal(object)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, job: Callable[..., Any], args: tuple, kwargs: dict, cancel: CancelToken):
        super().__init__()
        self._job, self._args, self._kwargs, self._cancel = job, args, kwargs, cancel
        self._last_progress = 0.0

    def release_job(self) -> None:
        """Forget the job and its arguments (on the GUI thread, once the thread has ended)."""
        self._job, self._args, self._kwargs = None, (), {}

    def _progress(self, event: Progress) -> None:
        now = time.monotonic()
        last = isinstance(event, Progress) and bool(event.total) and event.step >= event.total
        if last or now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.progressed.emit(event)

    def run(self) -> None:
        try:
            result = self._job(*self._args, progress=self._progress, cancel=self._cancel, **self._kwargs)
        except Cancelled:
            self.cancelled.emit()
        except StyleDeckError as exc:
            log.debug("job failed", exc_info=True)
            self.failed.emit(str(exc))
        except Exception as exc:  # worker boundary: a bug, not a user error; keep the traceback in the log
            log.exception("job failed unexpectedly")
            self.failed.emit(f"Unexpected failure ({type(exc).__name__}: {exc}); the log has the details.")
        else:
            if self._cancel.cancelled:
                self.cancelled.emit()  # finished despite a late cancel: the user asked to drop it
            else:
                self.succeeded.emit(result)


class JobRunner(QObject):
    """One job at a time on a worker thread.

    runner = JobRunner(load_network, path, device="cpu"); runner.finished.connect(...); runner.start()
    or JobRunner() and runner.start(job, *args, **kwargs). The job must accept progress= and cancel=.
    """

    progressed = Signal(object)  # engine.Progress
    finished = Signal(object)    # the job's return value
    failed = Signal(str)         # a message for the user
    cancelled = Signal()

    def __init__(self, job: Callable[..., Any] | None = None, *args: Any, parent: QObject | None = None,
                 **kwargs: Any):
        super().__init__(parent)
        self._job, self._args, self._kwargs = job, args, kwargs
        self._thread: _JobThread | None = None
        self._cancel = CancelToken()
        self._running = False

    @property
    def running(self) -> bool:
        """True from start() until its outcome signal (finished, failed or cancelled) has been delivered."""
        return self._running

    def start(self, job: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> None:
        """Start the job given here, or the one given to the constructor; one at a time (a cancelled
        job may still be winding down: its outcome is then ignored)."""
        if self._running and not self._cancel.cancelled:
            raise RuntimeError("JobRunner is already running a job; cancel() it first")
        if job is None:  # the constructor's job; a job given here is not kept after it ends
            job, args, kwargs = self._job, self._args, self._kwargs
        if job is None:
            raise ValueError("JobRunner.start needs a job")
        self._cancel = CancelToken()
        thread = _JobThread(job, args, kwargs, self._cancel)
        thread.progressed.connect(self._progressed)
        thread.succeeded.connect(self._succeeded)
        thread.failed.connect(self._failed)
        thread.cancelled.connect(self._cancelled)
        thread.finished.connect(lambda t=thread: _forget(t))
        _LIVE.add(thread)
        self._thread = thread
        self._running = True
        thread.start()

    # Outcomes arrive queued on the runner's thread; one from a superseded job is ignored.
    def _current(self) -> bool:
        return self.sender() is self._thread

    def _progressed(self, event: Any) -> None:
        if self._current():
            self.progressed.emit(event)

    def _succeeded(self, result: Any) -> None:
        if self._current():
            self._running = False
            self.finished.emit(result)

    def _failed(self, message: str) -> None:
        if self._current():
            self._running = False
            self.failed.emit(message)

    def _cancelled(self) -> None:
        if self._current():
            self._running = False
            self.cancelled.emit()

    def cancel(self) -> None:
        """Ask the job to stop at its next check; `cancelled` follows."""
        self._cancel.cancel()

    def wait(self, msecs: int = -1) -> bool:
        """Block until the job thread ends (tests and shutdown); True when it has."""
        if self._thread is None:
            return True
        return self._thread.wait() if msecs < 0 else self._thread.wait(msecs)
