"""The window's desktop-facing parts: Open Recent, About, DICOMDIR and multi-item drops, Help ▸ Shortcuts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from cxrviewer.gui.backend import Backend, ModelChoice  # noqa: E402
from cxrviewer.gui.recent import MAX_RECENT  # noqa: E402
from test_dicomdir import make_media  # noqa: E402
from gui_helpers import show_window  # noqa: E402


class NoModel(Backend):
    def discover(self):
        return []


class BundledModel(NoModel):
    def discover(self):
        card = {"version": "1.0", "classes": ["Normal", "Pneumonia"],
                "card": {"description": "test", "licence": "CC BY 4.0 (weights trained on Kermany 2018)"}}
        return [ModelChoice("m", "Lung test model", ["Normal", "Pneumonia"], "bundled", "/x/m.safetensors",
                            "mobilenet_lung", card)]

    def default_key(self, choices):
        return None  # listed, not loaded: the About box only needs the card


def make_window(qtbot, persist=True, backend=None):
    return show_window(qtbot, backend or NoModel(), persist)


def settle(qtbot, win):
    qtbot.waitUntil(win.is_settled, timeout=15000)
    qtbot.wait(10)


def png(path, h=40, w=30):
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(((x + y) * 255 // (h + w)).astype(np.uint8)).save(path)
    return path


def drop(win, paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    win.dropEvent(QDropEvent(QPointF(40, 40), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def recent_actions(win):
    win.recent.rebuild()
    return [a for a in win.recent_menu.actions() if a.data()]


# ------------------------------------------------------------------------------------------ recent
def test_open_recent_lists_last_ten_persists_and_reopens(qtbot, tmp_path):
    films = [png(tmp_path / f"f{i:02d}.png") for i in range(12)]
    win = make_window(qtbot)
    for f in films:
        win.open_paths([str(f)])
        settle(qtbot, win)
    acts = recent_actions(win)
    assert len(acts) == MAX_RECENT
    assert [Path(a.data()).name for a in acts[:2]] == ["f11.png", "f10.png"]  # newest first
    assert all(a.isEnabled() for a in acts)
    win.close()

    win2 = make_window(qtbot)  # a new session reads the same settings
    assert [Path(p).name for p in win2.recent.paths()][:2] == ["f11.png", "f10.png"]
    target = next(a for a in recent_actions(win2) if Path(a.data()).name == "f05.png")
    target.trigger()
    settle(qtbot, win2)
    assert Path(win2.current_path).name == "f05.png" and win2.film is not None
    assert Path(win2.recent.paths()[0]).name == "f05.png"  # reopened: back on top


def test_a_missing_recent_file_is_greyed_and_removed_with_a_message(qtbot, tmp_path):
    a, b = png(tmp_path / "kept.png"), png(tmp_path / "gone.png")
    win = make_window(qtbot)
    win.open_paths([str(a), str(b)])
    settle(qtbot, win)
    b.unlink()
    acts = {Path(x.data()).name: x for x in recent_actions(win)}
    assert acts["kept.png"].isEnabled() and not acts["gone.png"].isEnabled()
    assert "(missing)" in acts["gone.png"].text()
    win.recent.trigger(str(b))  # chosen anyway (e.g. it vanished while the menu was open)
    assert str(b) not in win.recent.paths()
    assert "gone.png" in win.banner.text() and "removed from Open Recent" in win.banner.text()
    win.recent.clear()
    assert recent_actions(win) == [] and win.recent.paths() == []


def test_screenshot_style_windows_do_not_write_recent_files(qtbot, tmp_path):
    win = make_window(qtbot, persist=False)
    win.open_paths([str(png(tmp_path / "x.png"))])
    settle(qtbot, win)
    win.close()
    assert make_window(qtbot).recent.paths() == []


# --------------------------------------------------------------------------------------- DICOMDIR
def test_dropping_a_dicomdir_opens_its_studies_as_a_worklist(qtbot, tmp_path):
    dicomdir, _ = make_media(tmp_path / "cd")
    win = make_window(qtbot)
    drop(win, [dicomdir])
    settle(qtbot, win)
    assert win.worklist.count() == 4
    assert all("/cd/" in p for p in win.worklist.paths())
    assert win.film is not None and win.film.shape == (25, 20)  # the first listed image
    assert win.worklist_dock.isVisible() and not win.film_error
    assert str(dicomdir) in win.recent.paths()


def test_a_bad_dicomdir_gives_a_clear_message_and_the_window_keeps_working(qtbot, tmp_path):
    bad = tmp_path / "usb" / "DICOMDIR"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 200)
    win = make_window(qtbot)
    win.open_paths([str(bad)])
    settle(qtbot, win)
    assert "Cannot open DICOMDIR" in win.banner.text() and "Traceback" not in win.banner.text()
    assert win.worklist.count() == 0
    good = png(tmp_path / "ok.png")
    win.open_paths([str(good)])
    settle(qtbot, win)
    assert win.film is not None


def test_dropping_files_and_folders_together_makes_one_worklist(qtbot, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    png(folder / "s1.png")
    png(folder / "s2.png")
    single = png(tmp_path / "single.png", 33, 30)
    other = png(tmp_path / "other.png", 35, 30)
    win = make_window(qtbot)
    drop(win, [single, folder, other])
    settle(qtbot, win)
    names = [Path(p).name for p in win.worklist.paths()]
    assert sorted(names) == ["other.png", "s1.png", "s2.png", "single.png"]  # the worklist sorts by name
    assert Path(win.current_path).name == "single.png" and win.film.shape == (33, 30)  # the first dropped
    assert len(win.recent.paths()) == 3 and str(folder) in win.recent.paths()  # the folder is one entry


# -------------------------------------------------------------------------------------- help menu
def test_about_shows_versions_device_and_licences(qtbot):
    import sys

    win = make_window(qtbot, backend=BundledModel())
    settle(qtbot, win)
    win.show_about()
    text = win._about_dialog.text.toPlainText()
    assert "CXR Viewer 0." in text and "Python" in text and "PySide6" in text and "Qt" in text
    assert "Device" in text
    expected_torch = sys.modules["torch"].__version__ if "torch" in sys.modules else "loaded on first use"
    assert expected_torch in text
    assert "Lung test model" in text and "CC BY 4.0 (weights trained on Kermany 2018)" in text
    assert "DX_chest_NIH_nofinding.dcm" in text and "MIT" in text  # from resources/samples/README.md
    assert "Decision support only" in text


def test_help_menu_has_shortcuts_and_about(qtbot):
    win = make_window(qtbot)
    help_menu = next(a.menu() for a in win.menuBar().actions() if a.text().replace("&", "") == "Help")
    texts = [a.text() for a in help_menu.actions()]
    assert any("Keyboard shortcuts" in t for t in texts) and any("About" in t for t in texts)
    win.show_shortcuts()
    from PySide6.QtWidgets import QTableWidget

    table = win._shortcuts_dialog.findChild(QTableWidget)
    assert win._shortcuts_dialog.isVisible() and table.rowCount() == len(win.shortcut_rows)
    rows = {(r[1], r[2]) for r in win.shortcut_rows}
    assert ("Open films", "Ctrl+O") in rows and ("Keyboard shortcuts", "F1, ?") in rows
