"""Latest-wins rendering: a one-slot mailbox, a worker thread that owns the Renderer, and the
GUI-side controller that numbers requests and drops stale results.

The GUI thread never waits on torch: it drops a request into the mailbox and returns. Fifty
slider steps during one slow render cost that render plus one more, with no debounce delay.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from engine import Source, StyleDeckError

if TYPE_CHECKING:
    from engine import EditState

log = logging.getLogger(__name__)

RendererFactory = Callable[[], Any]  # () -> engine.Renderer, called on the render thread


@dataclass(frozen=True)
class GridRequest:
    """The style-mixing grid: row seeds take the styles of column seeds on `layers`."""
    rows: tuple[Source, ...]
    cols: tuple[Source, ...]
    layers: tuple[int, ...]
    psi: float = 1.0
    cutoff: int | None = None
    noise_mode: str = "const"
    transform: tuple[float, float, float] = (0.0, 0.0, 0.0)  # StyleGAN3 input: degrees, tx, ty


@dataclass(frozen=True)
class RenderJob:
    """One request in the mailbox: a state (or a grid) and whether a cheap preview will do."""
    generation: int
    request: EditState | GridRequest
    preview: bool = False


class Mailbox:
    """A lock and one slot: put() replaces whatever waits, take() empties the slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: Any = None

    def put(self, job: Any) -> bool:
        """Store `job`, dropping any waiting one; True when the slot was empty (wake the worker)."""
        with self._lock:
            was_empty = self._job is None
            self._job = job
            return was_empty

    def take(self) -> Any:
        """The waiting job (None when there is none); the slot is empty afterwards."""
        with self._lock:
            job, self._job = self._job, None
            return job


class RenderWorker(QObject):
    """Lives on its own QThread; the Renderer is created and used there only."""

    rendered = Signal(int, object)   # generation, RenderResult
    failed = Signal(int, str)        # generation, message for the status bar
    _wake = Signal()

    def __init__(self, make_renderer: RendererFactory | None = None):
        super().__init__()
        self._make = make_renderer
        self._renderer: Any = None
        self._mailbox = Mailbox()
        self._swap_lock = threading.Lock()
        self.renders = 0  # renders run (written on the render thread only)
        self._wake.connect(self._drain)  # receiver lives on the render thread: a queued call

    def set_renderer(self, make_renderer: RendererFactory) -> None:
        """Use a new renderer from the next job on (GUI thread; the old one is dropped there)."""
        with self._swap_lock:
            self._make, self._renderer = make_renderer, None

    def submit(self, job: RenderJob) -> None:
        """GUI thread: returns at once; the newest job wins."""
        if self._mailbox.put(job):
            self._wake.emit()

    @Slot()
    def _drain(self) -> None:
        while (job := self._mailbox.take()) is not None:
            try:
                renderer = self._current_renderer()
                if renderer is None:  # no network yet: nothing to draw (answers, so the request ends)
                    self.failed.emit(job.generation, "Open a network first: there is nothing to render with.")
                    continue
                result = self._run(renderer, job)
                self.renders += 1
                self.rendered.emit(job.generation, result)
            except StyleDeckError as exc:
                self.failed.emit(job.generation, str(exc))
            except Exception as exc:  # worker boundary: log, report, keep serving
                log.exception("render failed")
                self.failed.emit(job.generation, f"Rendering failed ({type(exc).__name__}: {exc}); "
                                                 "the log has the details.")

    def _current_renderer(self) -> Any:
        with self._swap_lock:
            if self._renderer is None and self._make is not None:
                self._renderer = self._make()
            return self._renderer

    @staticmethod
    def _run(renderer: Any, job: RenderJob) -> Any:
        request = job.request
        if isinstance(request, GridRequest):
            return renderer.render_grid(request.rows, request.cols, request.layers, request.psi,
                                        request.cutoff, request.noise_mode, transform=request.transform)
        return renderer.render(request, preview=job.preview)


class RenderController(QObject):
    """GUI thread: numbers requests, hands them to the worker, shows the newest result.

    Results older than the one on screen are dropped; a result for a request that has been
    superseded is still shown when it is newer than the screen (it is the best there is).
    """

    shown = Signal(object)         # the RenderResult now on screen
    failed = Signal(str)           # a render error, for the status bar
    stats_changed = Signal(float, float)  # render ms, frames shown per second

    def __init__(self, show: Callable[[np.ndarray], None] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._show = show
        self._generation = 0
        self._shown_generation = 0
        self._model_generation = 0     # first generation of the current renderer
        self._requested_generation = 0  # newest request
        self._answered_generation = 0   # newest request answered (shown, dropped or failed)
        self.render_count = 0          # results received from the worker (tests count renders)
        self.requests = 0              # requests made
        self.last_result: Any = None
        self.last_request: EditState | GridRequest | None = None
        self._last_shown_at: float | None = None
        self.fps = 0.0
        self.preview_active = False
        self._session: Any = None
        self._make_grid: Callable[[EditState], GridRequest] | None = None
        self._thread = QThread()
        self._thread.setObjectName("styledeck-render")
        self.worker = RenderWorker()
        self.worker.moveToThread(self._thread)
        self.worker.rendered.connect(self._on_rendered)
        self.worker.failed.connect(self._on_failed)
        self._thread.start()
        app = QCoreApplication.instance()
        if app is not None:  # a QThread destroyed while running aborts the program: stop it in time
            app.aboutToQuit.connect(self.close)

    # --- following a session -------------------------------------------------------------------
    def attach(self, session: Any) -> None:
        """Render every state `session` shows: previews while a drag runs, the full image at its end."""
        self._session = session
        session.changed.connect(self._on_state_changed)
        session.drag_changed.connect(self._on_drag_changed)

    def set_grid(self, make_grid: Callable[[EditState], GridRequest] | None) -> None:
        """Grid mode on (a function from state to GridRequest) or off (None); re-renders."""
        self._make_grid = make_grid
        self.refresh()

    @property
    def grid_mode(self) -> bool:
        return self._make_grid is not None

    def refresh(self, preview: bool = False) -> int | None:
        """Render the session's current state again (or its grid)."""
        state = self._session.state if self._session is not None else None
        if state is None:
            return None
        request = self._make_grid(state) if self._make_grid is not None else state
        return self.request(request, preview=preview and not isinstance(request, GridRequest))

    @Slot(object)
    def _on_state_changed(self, state: Any) -> None:
        self.refresh(preview=self._session.dragging)

    @Slot(bool)
    def _on_drag_changed(self, dragging: bool) -> None:
        if not dragging and self.preview_active:
            self.refresh(preview=False)  # the drag ended on a preview: show the exact image

    # --- requests ------------------------------------------------------------------------------
    @property
    def last_ws(self) -> np.ndarray | None:
        """The W+ of the image on screen, [num_ws, w_dim] (None before the first)."""
        return None if self.last_result is None else self.last_result.ws

    @property
    def generation(self) -> int:
        return self._generation

    def set_renderer(self, make_renderer: RendererFactory) -> None:
        """A new model: results of the old renderer still in flight are dropped."""
        self._generation += 1
        self._model_generation = self._generation
        self.worker.set_renderer(make_renderer)

    def request(self, request: EditState | GridRequest, preview: bool = False) -> int:
        """Ask for an image of `request`; returns its generation. Never blocks."""
        self._generation += 1
        self._requested_generation = self._generation
        self.requests += 1
        self.last_request = request
        self.preview_active = preview
        self.worker.submit(RenderJob(self._generation, request, preview))
        return self._generation

    @property
    def idle(self) -> bool:
        """True when the newest request has been answered (shown, or failed)."""
        return self._answered_generation >= self._requested_generation

    # --- results -------------------------------------------------------------------------------
    @Slot(int, object)
    def _on_rendered(self, generation: int, result: Any) -> None:
        self.render_count += 1
        self._answered_generation = max(self._answered_generation, generation)
        if generation <= self._shown_generation or generation < self._model_generation:
            return  # stale: something newer is on screen already, or an old model's image
        self._shown_generation = generation
        self.last_result = result
        if self._show is not None:
            self._show(result.image)
        now = time.perf_counter()
        if self._last_shown_at is not None:
            interval = max(now - self._last_shown_at, 1e-6)
            # smooth over a few frames; a pause longer than 1 s starts fresh
            self.fps = 1.0 / interval if (interval > 1.0 or self.fps == 0) else 0.7 * self.fps + 0.3 / interval
        self._last_shown_at = now
        self.stats_changed.emit(float(result.render_ms), self.fps)
        self.shown.emit(result)

    @Slot(int, str)
    def _on_failed(self, generation: int, message: str) -> None:
        self._shown_generation = max(self._shown_generation, generation)
        self._answered_generation = max(self._answered_generation, generation)
        log.warning("render failed: %s", message)
        self.failed.emit(message)

    def close(self) -> None:
        """Stop the render thread (waits for a render in progress to finish)."""
        if self._thread.isRunning():
            self._thread.quit()
            self._thread.wait()


def make_grid_request(state: EditState, rows: Sequence[int | Source], cols: Sequence[int | Source],
                      layers: Sequence[int]) -> GridRequest:
    """A grid of seeds (or sources) with the state's truncation and noise."""
    def as_source(s: int | Source) -> Source:
        return s if isinstance(s, Source) else Source.from_seed(int(s))
    return GridRequest(tuple(map(as_source, rows)), tuple(map(as_source, cols)), tuple(int(i) for i in layers),
                       state.psi, state.cutoff, state.noise_mode, tuple(state.transform))


