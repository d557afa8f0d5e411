"""Python's cyclic garbage collection, moved onto the GUI thread.

The collector runs in whichever thread happens to allocate when a threshold trips. When that is a
job thread and the garbage holds Qt objects (a closed window, its menus and actions, in reference
cycles), their C++ destructors run on the job thread: they take Qt's internal locks and then wait for
the GIL, while the GUI thread, holding the GIL, waits for those locks. Seen as a hang: a projection
job's first torch.optim.Adam imported torch._dynamo, the import tripped the collector, and it began
destroying an earlier window's QActions while the GUI thread was deleting that window's menu.

So while installed, automatic collection is off and a timer on the GUI thread collects each
generation whose threshold has been passed, as the automatic collector would have.
"""
from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QTimer

CHECK_INTERVAL_MS = 500  # collection a little late is harmless; a busy GUI thread is not


class MainThreadGC(QObject):
    """Collects garbage on the thread it lives on (the GUI thread) instead of wherever it trips."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = CHECK_INTERVAL_MS):
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        gc.disable()
        self.collections = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self._timer.start()

    def check(self) -> int:
        """Collect the oldest generation whose count passed its threshold; returns what was freed."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        generation = max((g for g in range(3) if thresholds[g] and counts[g] > thresholds[g]), default=-1)
        if generation < 0:
            return 0
        self.collections += 1
        return gc.collect(generation)

    def stop(self) -> None:
        """Hand collection back to Python (tests; the app keeps this until it exits)."""
        self._timer.stop()
        if self._was_enabled:
            gc.enable()


def install() -> MainThreadGC:
    """The application's collector (made on first call, on the GUI thread; needs a QCoreApplication)."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("install() needs a QApplication first")
    existing = app.findChild(MainThreadGC)
    return existing if existing is not None else MainThreadGC(app)
