"""Python's cycle collector, run only on the GUI thread while the window is up.

Why: CPython runs an automatic collection on whichever thread happens to allocate when a generation's
threshold is passed. In the viewer that is often a worker (a film loading in pydicom, a LIME batch). If
the garbage then includes the Python wrapper of a Qt object (a finished job's signal bridge, a closed
dialog, a lambda connected to a widget), the collector destroys that Qt object on the worker thread, and
Qt objects may only be destroyed on the thread they live on: the process crashes, rarely and
unreproducibly (a clean-clone test run once died this way, "Garbage-collecting" on a film-loading
thread). The remedy Qt applications use (pyqtgraph's ``GarbageCollector``): turn automatic collection off
and run the same generational collections from a timer on the GUI thread, with the interpreter's own
thresholds, so cyclic garbage is still freed, a fraction of a second later, and always on the right
thread. Reference-counted objects (nearly all tensors and arrays) are freed at once as before.
"""

from __future__ import annotations

import gc
from typing import Optional

from PySide6.QtCore import QCoreApplication, QObject, QTimer

INTERVAL_MS = 100


class GuiThreadCollector(QObject):
    """Owns the timer; ``start`` switches automatic collection off, ``stop`` collects and restores it."""

    def __init__(self, parent: Optional[QObject] = None, interval_ms: int = INTERVAL_MS):
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self.collections = [0, 0, 0]  # per generation, for tests and diagnostics

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        """Back to automatic collection, after one full collection here, on the GUI thread: whatever Qt
        garbage the window left must not be left for a worker to find."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def check(self) -> None:
        """What the interpreter would have done at its next allocation, done here: a younger generation
        is collected when its count passes its threshold, and an older one only along with it."""
        counts = gc.get_count()
        for gen in range(3):
            if counts[gen] <= self.thresholds[gen]:
                break
            gc.collect(gen)
            self.collections[gen] += 1


_active: Optional[GuiThreadCollector] = None


def install() -> Optional[GuiThreadCollector]:
    """Collect on the GUI thread from now on (idempotent). Call on the GUI thread; the collector belongs to
    the application and lives as long as it does. Without an application there is no event loop to run
    the timer, so automatic collection is left on (None)."""
    global _active
    if _active is None:
        app = QCoreApplication.instance()
        if app is None:
            return None
        _active = GuiThreadCollector(app)
        _active.start()
    return _active


def uninstall() -> None:
    """Undo :func:`install` (tests do, between tests, so non-GUI tests run with automatic collection)."""
    global _active
    if _active is not None:
        collector, _active = _active, None
        collector.stop()
        collector.setParent(None)
        collector.deleteLater()


def active() -> Optional[GuiThreadCollector]:
    return _active
