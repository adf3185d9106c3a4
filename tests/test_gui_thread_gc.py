"""Cyclic garbage is freed on the GUI thread, never on a worker (a worker freeing a Qt object crashes)."""

import gc
import threading

from cxrviewer.gui import gui_thread_gc


class _Cycle:
    """Garbage in a reference cycle that notes the thread it was freed on."""

    def __init__(self, freed_on: list):
        self.me = self
        self.freed_on = freed_on

    def __del__(self):
        self.freed_on.append(threading.current_thread().name)


def _allocate_on_a_worker() -> list:
    """What a film-loading worker does to the collector: allocate containers that outlive it (a film's
    tags, say), well past gen-0's threshold. Returned, so they stay alive."""
    kept: list = []

    def work():
        kept.extend([i] for i in range(5 * gc.get_threshold()[0]))

    t = threading.Thread(target=work, name="film-loader")
    t.start()
    t.join()
    return kept


def test_without_the_collector_a_worker_frees_the_garbage():
    """The hazard itself, so the next test means something: automatic collection runs on the worker."""
    assert gc.isenabled()
    gc.collect()
    freed_on: list = []
    _Cycle(freed_on)
    kept = _allocate_on_a_worker()
    assert freed_on == ["film-loader"]
    del kept


def test_with_the_collector_the_gui_thread_frees_it(qtbot):
    from cxrviewer.gui.jobs import JobRunner

    gc.collect()
    runner = JobRunner()  # what every window makes; it installs the collector
    collector = gui_thread_gc.active()
    assert collector is not None and not gc.isenabled()
    freed_on: list = []
    _Cycle(freed_on)
    kept = _allocate_on_a_worker()
    assert freed_on == []  # the worker passed the threshold and collected nothing
    qtbot.waitUntil(lambda: bool(freed_on), timeout=2000)  # the GUI thread's timer did, moments later
    assert freed_on == [threading.main_thread().name]
    assert collector.collections[0] >= 1
    assert gc.get_count()[0] <= gc.get_threshold()[0] + 100
    del runner, kept


def test_uninstall_collects_and_restores_automatic_collection(qtbot):
    from cxrviewer.gui.jobs import JobRunner

    JobRunner()
    JobRunner()  # a second window: still one collector
    assert gui_thread_gc.active() is not None and not gc.isenabled()
    freed_on: list = []
    _Cycle(freed_on)
    gui_thread_gc.uninstall()
    assert freed_on == [threading.main_thread().name]
    assert gc.isenabled() and gui_thread_gc.active() is None
