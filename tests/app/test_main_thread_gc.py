"""Cyclic garbage is collected on the GUI thread, never on a job thread (app/main_thread_gc.py)."""
from __future__ import annotations

import gc
import threading
import weakref

from PySide6.QtWidgets import QWidget

from app.main_thread_gc import MainThreadGC, install


def test_the_app_collector_is_installed_once_and_turns_automatic_collection_off(qapp):
    collector = install()
    assert install() is collector and not gc.isenabled()


def test_a_job_thread_leaves_qt_garbage_to_the_gui_thread(qtbot):
    collector = install()
    destroyed_on = []

    class Cyclic(QWidget):
        def __init__(self):
            super().__init__()
            self.me = self                          # a cycle: only the collector frees it
            weakref.finalize(self, lambda: destroyed_on.append(threading.current_thread().name))

    Cyclic()
    kept: list = []
    job = threading.Thread(target=lambda: kept.extend([object()] for _ in range(200_000)), name="job")
    job.start()                                     # allocates (and keeps) far past every threshold
    job.join()
    assert destroyed_on == []                       # the job thread collected nothing
    qtbot.waitUntil(lambda: bool(destroyed_on), timeout=5_000)
    assert destroyed_on == ["MainThread"] and collector.collections >= 1


def test_stop_hands_collection_back(qapp):
    gc.enable()
    collector = MainThreadGC()
    assert not gc.isenabled()
    collector.stop()
    assert gc.isenabled()
    gc.disable()                                    # the package's collector is still installed
