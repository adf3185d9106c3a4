"""The main window as the GUI tests open it, and the wait for its background work, in one place."""

from __future__ import annotations


def show_window(qtbot, backend=None, persist=False, heatmap_on_first_run=True, size=(1000, 700)):
    """A shown, exposed MainWindow. ``heatmap_on_first_run`` False starts with the heatmap off, for tests
    that choose themselves when maps are computed."""
    from cxrviewer.gui.main_window import MainWindow

    win = MainWindow(backend=backend, persist_settings=persist)
    if not heatmap_on_first_run:
        win.heatmap_if_model = None
    qtbot.addWidget(win)
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    return win


def settle(qtbot, win, timeout=60000, pause=20):
    """Wait until every background job (model, prediction, maps) has finished and the window shows it."""
    qtbot.waitUntil(win.is_settled, timeout=timeout)
    qtbot.wait(pause)
