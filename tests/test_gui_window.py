"""The review window, driven as a reader would: open films, drag, press keys, drop folders.

Assertions are on what is displayed (the view's rendered pixels and a grab of the widget), not on
internal flags. A fake backend stands in for the model (fast, deterministic, optionally slow on purpose);
films go through the real loader.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent, QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from cxrviewer import DISCLAIMER  # noqa: E402
from cxrviewer.explain.types import Explanation  # noqa: E402
from cxrviewer.gui.backend import Backend, ModelChoice, PredictionResult  # noqa: E402
from cxrviewer.gui.image_view import qimage_to_array  # noqa: E402
from cxrviewer.preprocess import Geometry, preview_shape  # noqa: E402

import dicom_factory as dfac  # noqa: E402
from gui_helpers import settle as gui_settle, show_window  # noqa: E402


# ------------------------------------------------------------------------------------------ helpers
class FakeBackend(Backend):
    """A model that answers by the film's mean brightness; ``delays`` slows chosen films down."""

    CLASSES = ["Normal", "Pneumonia"]

    def __init__(self, with_model=True, delays=None):
        super().__init__()
        self.with_model = with_model
        self.delays = delays or {}
        self.predicted = []
        self.explained = []  # (method, LimeSettings or None) per explain call
        self.lock = threading.Lock()

    def discover(self):
        if not self.with_model:
            return []
        card = {"version": "2.1", "arch": "mobilenet_lung", "classes": self.CLASSES,
                "card": {"description": "A test model.", "data": "Synthetic films", "limits": "Not for clinical use",
                         "population": {"min_age_years": 18}},
                "temperature": 0.9412348619516187,
                "training": {"metrics": {"accuracy": 0.91, "macro_f1": 0.9}, "epochs": 3}}
        return [ModelChoice("fake", "Fake model", list(self.CLASSES), "bundled", "/x/fake.safetensors",
                            "mobilenet_lung", card)]

    def default_key(self, choices):
        return choices[0].key if choices else None

    def load_predictor(self, ctx, choice, device_pref):
        return object(), "CPU (test)"

    def warm(self, ctx, predictor):
        return ""  # no fast copy to build for a fake

    def predict(self, ctx, predictor, film, film_key, model_key):
        time.sleep(self.delays.get(Path(film_key).name, 0.0))
        p = float(np.clip(film.pixels.mean() / 255.0, 0.01, 0.99))
        with self.lock:
            self.predicted.append(Path(film_key).name)
        att = np.zeros((7, 7), np.float32)
        att[1, 5] = 1.0
        return PredictionResult(film_key, model_key, list(self.CLASSES), [1 - p, p],
                                self.CLASSES[int(p > 0.5)], attention=att)

    def explain(self, ctx, predictor, film, prediction, method, target_class, out_side=1024, cache_key=None,
                settings=None):
        """Real Explanations of the fake's attention (LIME: its 7×7 cells as superpixels, weighted by it),
        on a 256-pixel preview grid; LIME is slow on purpose, cancels cooperatively and reports a coarse map."""
        with self.lock:
            self.explained.append((method, settings))
        h, w = film.shape
        preview = preview_shape(film.shape, 256)
        geo = Geometry((h, w), 224, 224 / h, 224 / w)  # squashed into the model input
        cls = prediction.classes.index(target_class)
        if method != "lime":
            return Explanation(method, cls, target_class, prediction.attention, geo), preview
        segments = (np.arange(224)[:, None] // 32 * 7 + np.arange(224)[None, :] // 32).astype(np.int32)
        weights = np.asarray(prediction.attention, np.float32).ravel() * 2 - 1

        def lime(wts, coarse=False):
            return Explanation("lime", cls, target_class, wts[segments], geo, segments=segments,
                               segment_weights=wts, coarse=coarse)

        ctx.report(("coarse", cache_key, lime(weights * 0.5, coarse=True), preview))
        for i in range(40):
            ctx.check()
            ctx.report(("progress", i / 40))
            time.sleep(0.02)
        return lime(weights), preview


def png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def gradient(h=64, w=48, dtype=np.uint8, top=255):
    y, x = np.mgrid[0:h, 0:w]
    return ((x + y) * top // (h + w - 2)).astype(dtype)


def make_window(qtbot, backend=None, persist=False, first_run_heatmap=False):
    # these tests start from the heatmap off; the first-run default has its own test
    return show_window(qtbot, backend or FakeBackend(with_model=False), persist, heatmap_on_first_run=first_run_heatmap)


def settle(qtbot, win, timeout=10000):
    gui_settle(qtbot, win, timeout, pause=10)


def open_and_wait(qtbot, win, *paths):
    win.open_paths([str(p) for p in paths])
    settle(qtbot, win)


def mouse(widget, kind, pos, button, buttons):
    ev = QMouseEvent(kind, QPointF(pos), QPointF(widget.mapToGlobal(pos)), button, buttons, Qt.NoModifier)
    from PySide6.QtWidgets import QApplication

    QApplication.sendEvent(widget, ev)


def right_drag(view, dx, dy, steps=4):
    c = QPoint(view.width() // 2, view.height() // 2)
    mouse(view, QEvent.MouseButtonPress, c, Qt.RightButton, Qt.RightButton)
    for i in range(1, steps + 1):
        mouse(view, QEvent.MouseMove, c + QPoint(dx * i // steps, dy * i // steps), Qt.NoButton, Qt.RightButton)
    mouse(view, QEvent.MouseButtonRelease, c + QPoint(dx, dy), Qt.RightButton, Qt.NoButton)


def centre_pixel(view):
    """The grey level drawn at the middle of the view (grab of the real widget)."""
    img = qimage_to_array(view.grab().toImage())
    h, w = img.shape[:2]
    return int(img[h // 2, w // 2, 0])


# ------------------------------------------------------------------------------------------- tests
def test_empty_state_disclaimer_and_no_model(qtbot):
    win = make_window(qtbot)
    settle(qtbot, win)
    assert win.stack.currentWidget() is win.empty
    assert DISCLAIMER in win.disclaimer.text() and win.disclaimer.isVisible()
    assert win.probs.state == "nomodel"
    assert win.selector.currentText() == "No model installed"


def test_png_8bit_renders_pixels_and_window_level_changes_them(qtbot, tmp_path):
    arr = gradient()
    win = make_window(qtbot)
    open_and_wait(qtbot, win, png(tmp_path / "g8.png", arr))
    view = win.view
    assert win.stack.currentWidget() is view
    np.testing.assert_array_equal(view.gray, arr)  # 8-bit PNG: identity window
    assert "g8.png" in win.windowTitle()
    mid = centre_pixel(view)
    assert abs(mid - int(arr[32, 24])) <= 6
    std0, mean0 = view.gray.std(), view.gray.mean()
    right_drag(view, 200, 0)  # wider window: less contrast
    assert view.gray.std() < std0 - 5
    assert view.window.width > 256
    view.reset()
    right_drag(view, 0, 120)  # higher level: darker
    assert view.gray.mean() < mean0 - 10
    assert centre_pixel(view) < mid
    assert "C " in win.window_label.text() and "W " in win.window_label.text()


def test_png_16bit_uses_its_full_range(qtbot, tmp_path):
    arr = gradient(dtype=np.uint16, top=40000)
    win = make_window(qtbot)
    open_and_wait(qtbot, win, png(tmp_path / "g16.png", arr))
    assert win.film.pixels.max() == pytest.approx(40000, rel=0.01)
    g = win.view.gray
    assert g.min() <= 1 and g.max() >= 254
    assert np.all(np.diff(g[0].astype(int)) >= 0)  # monotone along the gradient


def test_monochrome1_is_shown_inverted_and_invert_toggles(qtbot, tmp_path):
    pix = dfac.ramp(40, 32, 0, 4095)
    p2 = dfac.write(dfac.make_dataset(pix.copy(), photometric="MONOCHROME2"), tmp_path / "m2.dcm")
    p1 = dfac.write(dfac.make_dataset(pix.copy(), photometric="MONOCHROME1"), tmp_path / "m1.dcm")
    win = make_window(qtbot)
    open_and_wait(qtbot, win, p2)
    g2 = win.view.gray.copy()
    grab2 = centre_pixel(win.view)
    open_and_wait(qtbot, win, p1)
    assert win.current_path == str(p1) or win.film.path.name == "m1.dcm"
    g1 = win.view.gray.copy()
    np.testing.assert_allclose(g1.astype(int), 255 - g2.astype(int), atol=1)
    assert abs(centre_pixel(win.view) - (255 - grab2)) <= 8
    QTest.keyClick(win, Qt.Key_I)
    np.testing.assert_allclose(win.view.gray.astype(int), g2.astype(int), atol=1)
    assert "inverted" in win.window_label.text()
    # the header says what a reader needs, without identifiers
    assert "PA" in win.header.text() and "CR" in win.header.text()
    assert "Doe" not in win.windowTitle() + win.header.text()


def test_tag_panel_hides_identifiers_until_asked(qtbot, tmp_path):
    p = dfac.write(dfac.make_dataset(), tmp_path / "phi.dcm")
    win = make_window(qtbot)
    open_and_wait(qtbot, win, p)
    values = " ".join(r.value for r in win.tags.visible_rows())
    assert "Doe^Jane" not in values and "PID-0001" not in values
    assert "MONOCHROME2" in values
    win.tags.show_phi.setChecked(True)
    values = " ".join(r.value for r in win.tags.visible_rows())
    assert "Doe^Jane" in values
    win.tags.filter.setText("ViewPosition")
    assert [r.keyword for r in win.tags.visible_rows()] == ["ViewPosition"]


def test_view_keys_zoom_rotate_flip_presets_reset(qtbot, tmp_path):
    arr = gradient(80, 40)
    win = make_window(qtbot)
    open_and_wait(qtbot, win, png(tmp_path / "k.png", arr))
    view = win.view
    fit_zoom = view.state.zoom
    QTest.keyClick(win, Qt.Key_1)
    assert view.state.zoom == 1.0
    QTest.keyClick(win, Qt.Key_F)
    assert view.state.zoom == pytest.approx(fit_zoom)
    QTest.keyClick(win, Qt.Key_BracketRight)
    assert view.state.rotation == 90
    QTest.keyClick(win, Qt.Key_H)
    assert view.state.flip_h != view.state.flip_v
    QTest.keyClick(win, Qt.Key_L)
    lung = view.window
    QTest.keyClick(win, Qt.Key_B)
    assert view.window.center > lung.center  # bone sits on the brighter half
    QTest.keyClick(win, Qt.Key_R)
    assert view.state.rotation == 0 and not view.state.flip_h and not view.state.flip_v
    np.testing.assert_array_equal(view.gray, arr)
    # the wheel zooms around the cursor
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    pos = QPointF(view.width() * 0.3, view.height() * 0.4)
    before = view.widget_to_film(pos.x(), pos.y())
    ev = QWheelEvent(pos, view.mapToGlobal(pos), QPoint(), QPoint(0, 240), Qt.NoButton, Qt.NoModifier,
                     Qt.NoScrollPhase, False)
    QApplication.sendEvent(view, ev)
    assert view.state.zoom > fit_zoom
    assert view.widget_to_film(pos.x(), pos.y()) == pytest.approx(before, abs=1e-6)


def test_status_bar_reports_pixel_value_in_modality_units(qtbot, tmp_path):
    pix = dfac.ramp(40, 32, 0, 4095)
    p = dfac.write(dfac.make_dataset(pix, RescaleSlope=2, RescaleIntercept=-100, PixelSpacing=[0.2, 0.2]),
                   tmp_path / "ms.dcm")
    win = make_window(qtbot)
    open_and_wait(qtbot, win, p)
    view = win.view
    pos = QPoint(view.width() // 2, view.height() // 2)
    row, col, value = view.value_at(pos.x(), pos.y())
    assert value == pytest.approx(pix[row, col] * 2 - 100)
    mouse(view, QEvent.MouseMove, pos, Qt.NoButton, Qt.NoButton)
    text = win.pixel_label.text()
    assert f"value {value:.0f}" in text and "mm" in text


def test_dropping_a_folder_opens_a_worklist_and_keys_walk_it(qtbot, tmp_path):
    folder = tmp_path / "study"
    (folder / "sub").mkdir(parents=True)
    png(folder / "a.png", gradient(30, 30))
    png(folder / "b.png", gradient(30, 40))
    png(folder / "sub" / "c.png", gradient(40, 30))
    (folder / "notes.txt").write_text("not a film")
    win = make_window(qtbot)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    ev = QDropEvent(QPointF(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    win.dropEvent(ev)
    settle(qtbot, win)
    assert win.worklist.count() == 3
    first = win.current_path
    assert Path(first).name == "a.png" and win.film is not None
    win.worklist.list.setFocus()
    QTest.keyClick(win.worklist.list, Qt.Key_J)
    settle(qtbot, win)
    assert Path(win.current_path).name == "b.png" and win.film.shape == (30, 40)
    QTest.keyClick(win.worklist.list, Qt.Key_Down)
    settle(qtbot, win)
    assert Path(win.current_path).name == "c.png"
    QTest.keyClick(win.worklist.list, Qt.Key_K)
    settle(qtbot, win)
    assert Path(win.current_path).name == "b.png"
    win.view.setFocus()
    QTest.keyClick(win, Qt.Key_PageUp)
    settle(qtbot, win)
    assert Path(win.current_path).name == "a.png"
    QTest.keyClick(win, Qt.Key_PageDown)
    settle(qtbot, win)
    assert Path(win.current_path).name == "b.png"


def _bad_inputs(tmp_path):
    good = gradient()
    (tmp_path / "empty.png").write_bytes(b"")
    buf = tmp_path / "full.png"
    Image.fromarray(good).save(buf)
    data = buf.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "letter.png").write_text("Dear colleague, this is not an image.")
    ds = dfac.make_dataset()
    del ds.PixelData
    nopix = dfac.write(ds, tmp_path / "nopixels.dcm")
    return [tmp_path / "empty.png", tmp_path / "truncated.png", tmp_path / "letter.png", nopix]


def test_a_film_that_fails_while_the_model_loads_leaves_no_film_to_analyse(qtbot, tmp_path):
    """The model finished loading after the film had failed: the reading panel said "Loading the model…"
    for good, as if something were still coming."""

    class SlowModel(FakeBackend):
        def load_predictor(self, ctx, choice, device_pref):
            time.sleep(0.5)
            return super().load_predictor(ctx, choice, device_pref)

    (tmp_path / "empty.png").write_bytes(b"")
    win = make_window(qtbot, SlowModel())
    open_and_wait(qtbot, win, tmp_path / "empty.png")
    assert win.film_error and win.predictor is not None
    assert (win.probs.state, win.probs.message) == ("idle", "No film to analyse")


def test_bad_films_give_one_clear_message_and_the_session_goes_on(qtbot, tmp_path):
    bad = _bad_inputs(tmp_path)
    good = png(tmp_path / "good.png", gradient())
    win = make_window(qtbot)
    for p in bad:
        open_and_wait(qtbot, win, p)
        msg = win.banner.text()
        assert msg.startswith(f"Cannot open {Path(p).name}:"), msg
        assert "Traceback" not in msg and len(msg.splitlines()) == 1
        assert win.film is None and win.film_error == msg
        assert Path(p).name in win.windowTitle()
        open_and_wait(qtbot, win, good)
        assert win.film is not None and win.view.gray is not None
        # the message was about the bad film: above the good one it would read as being about that film
        assert win.banner.text() == "" and win.errors[-1] == msg
    # in a worklist, the bad rows are marked and the good ones still open
    folder = tmp_path
    win.open_paths([str(folder)])
    settle(qtbot, win)
    for i in range(win.worklist.count()):
        win.worklist.list.setCurrentRow(i)
        settle(qtbot, win)
    labels = win.worklist.row_texts()
    assert sum("unreadable" in t for t in labels) == len(bad)
    win.worklist.select_path(good)
    settle(qtbot, win)
    assert win.film is not None and win.film.path.name == "good.png"


def test_a_second_film_never_shows_the_first_films_results(qtbot, tmp_path):
    a = png(tmp_path / "A.png", np.full((40, 40), 230, np.uint8))
    b = png(tmp_path / "B.png", np.full((40, 40), 20, np.uint8))
    backend = FakeBackend(delays={"A.png": 0.6})
    win = make_window(qtbot, backend)
    settle(qtbot, win)
    shown = []
    orig = win._show_prediction
    win._show_prediction = lambda r: (shown.append(Path(r.film_key).name), orig(r))
    win.open_paths([a])
    qtbot.waitUntil(lambda: "A.png" in backend.predicted or win.runner.active_count() > 0, timeout=3000)
    qtbot.wait(50)  # A's analysis is under way
    win.open_paths([b])
    settle(qtbot, win)
    qtbot.waitUntil(lambda: "A.png" in backend.predicted, timeout=5000)  # A's late result arrived...
    settle(qtbot, win)
    assert shown == ["B.png"]  # ...and was never shown
    assert win.prediction.film_key == b
    assert win.probs.top()[0] == "Normal"


def test_model_fills_panel_runs_over_worklist_and_sorts_by_suspicion(qtbot, tmp_path):
    folder = tmp_path / "wl"
    folder.mkdir()
    for name, level in (("x_dark.png", 20), ("y_bright.png", 240), ("z_mid.png", 150)):
        png(folder / name, np.full((30, 30), level, np.uint8))
    win = make_window(qtbot, FakeBackend())
    open_and_wait(qtbot, win, folder)
    qtbot.waitUntil(lambda: all(win.worklist.rows[p].top_class for p in win.worklist.rows), timeout=5000)
    assert win.probs.state == "ready" and len(win.probs.pairs) == 2
    assert "Fake model" in win.probs.model_label and "v2.1" in win.probs.model_label
    assert "Device: CPU (test)" in win.device_label.text()
    assert "Fake model" in win.model_label.text()
    labels = win.worklist.row_texts()
    assert any("Pneumonia" in t for t in labels) and all("%" in t for t in labels)
    win.worklist.set_sort("suspicion")
    order = [Path(p).name for p in win.worklist.paths()]
    assert order == ["y_bright.png", "z_mid.png", "x_dark.png"]
    # switching films uses the cached predictions: no new analysis
    n = len(win.backend.predicted)
    win.worklist.select_path(str(folder / "z_mid.png"))
    settle(qtbot, win)
    assert len(win.backend.predicted) == n and Path(win.prediction.film_key).name == "z_mid.png"


def test_heatmap_overlay_drawn_and_restyled_without_recompute(qtbot, tmp_path):
    p = png(tmp_path / "h.png", np.full((70, 70), 60, np.uint8))
    win = make_window(qtbot, FakeBackend())
    open_and_wait(qtbot, win, p)
    base = qimage_to_array(win.view.grab().toImage())
    win.heatmap.set_method("attention")
    settle(qtbot, win)
    assert win.view.overlay is not None
    with_heat = qimage_to_array(win.view.grab().toImage())
    assert np.abs(with_heat.astype(int) - base.astype(int)).sum() > 0
    ov = qimage_to_array(win.view.overlay)
    h, w = ov.shape[:2]
    # the hot attention cell (row 1, col 5 of 7) lands top-right on the film
    assert ov[h * 3 // 14, w * 11 // 14, 3] > ov[h * 11 // 14, w * 3 // 14, 3]
    assert win.heat[0][3] == win.prediction.top_class
    # clicking the second bar explains that class instead
    second = win.probs.pairs[1][0]
    QTest.mouseClick(win.probs, Qt.LeftButton, Qt.NoModifier, QPoint(40, 28 + 22 + 6 + 10))
    settle(qtbot, win)
    assert win.heat[0][3] == second and win.probs.selected == second
    # and from the keyboard: C walks down the bars and round to the top, Shift+C back up
    QTest.keyClick(win, Qt.Key_C)
    settle(qtbot, win)
    assert win.heat[0][3] == win.probs.pairs[0][0] == win.probs.selected  # two classes: round to the top
    QTest.keyClick(win, Qt.Key_C, Qt.ShiftModifier)
    settle(qtbot, win)
    assert win.heat[0][3] == second == win.probs.selected
    key = win.heat[0]
    win.heatmap.opacity.setValue(80)
    assert win.heat[0] == key and win.runner.is_idle()
    # side by side: the same film twice, the heatmap only on the right
    QTest.keyClick(win, Qt.Key_S)
    assert win.view.split and win.heatmap.side.isChecked()
    img = qimage_to_array(win.view.grab().toImage()).astype(int)
    h, w = img.shape[:2]
    left, right = img[:, : w // 2], img[:, w // 2 : w // 2 * 2]
    assert np.ptp(left[..., :3], axis=2).max() <= 2  # grey (the background is a blue-black): no heatmap colour
    assert np.ptp(right[..., :3], axis=2).max() > 30  # colour on the heatmap side
    win.heatmap.side.setChecked(False)
    assert not win.view.split
    QTest.keyClick(win, Qt.Key_O)  # overlay off
    settle(qtbot, win)
    assert win.view.overlay is None


def test_model_card_and_shortcut_sheet(qtbot):
    win = make_window(qtbot, FakeBackend())
    settle(qtbot, win)
    win.show_model_card()
    from cxrviewer.gui.model_panel import ModelCardDialog

    dlg = win.findChild(ModelCardDialog)
    text = dlg.browser.toPlainText()
    for s in ("Fake model", "Synthetic films", "Not for clinical use", "macro_f1", "Normal, Pneumonia",
              "18 and over (years)"):  # the population in the panel's own words, not "18 to any years"
        assert s in text
    assert "0.941" in text and "0.94123" not in text  # the temperature to three places, as the metrics
    win.show_shortcuts()
    from PySide6.QtWidgets import QTableWidget

    table = win._shortcuts_dialog.findChild(QTableWidget)
    assert table.rowCount() == len(win.shortcut_rows) > 30
    assert any(r[2] == "I" for r in win.shortcut_rows) and any("PgDown" in r[2] for r in win.shortcut_rows)


def test_the_model_card_says_when_no_temperature_was_fitted():
    """A model trained on a small folder keeps T = 1 (trainer.metrics.calibration_temperature): its card says
    so beside the temperature, so the reader knows its percentages are not calibrated."""
    import html

    from cxrviewer.gui.model_panel import card_html

    why = "the validation split has 7 films, fewer than the 20 a temperature needs"
    meta = {"arch": "mobilenet_lung", "classes": ["A", "B"], "temperature": 1.0,
            "training": {"metrics": {"temperature": 1.0, "temperature_not_fitted": why}}}
    text = html.unescape(card_html(ModelChoice("small", "Small", ["A", "B"], "user", "/x/small.safetensors",
                                               "mobilenet_lung", meta)))
    assert f"1.000 (none fitted: {why}; the percentages are the network's own, often overconfident)" in text
    assert "temperature_not_fitted" not in text  # said once, in words, not again as a raw key
    meta["training"]["metrics"].pop("temperature_not_fitted")
    assert "none fitted" not in card_html(ModelChoice("c", "C", ["A", "B"], "user", "/x/c.safetensors",
                                                      "mobilenet_lung", meta))


def test_an_uncalibrated_model_says_so_beside_its_percentages(qtbot, tmp_path):
    """A model trained on a small folder has no temperature: the reading panel says so on every film, where
    the reader looks, not only in the card."""

    class Uncalibrated(FakeBackend):
        def discover(self):
            choice = super().discover()[0]
            choice.metadata["training"]["metrics"]["temperature_not_fitted"] = "the validation split has 7 films"
            return [choice]

    film = png(tmp_path / "f.png", gradient(90, 60))
    for backend, said in ((FakeBackend(), False), (Uncalibrated(), True)):
        win = make_window(qtbot, backend)
        open_and_wait(qtbot, win, film)
        assert win.probs.state == "ready"
        assert ("This model's percentages are not calibrated" in win.probs.caution) == said, win.probs.caution
        bars = 28 + 2 * 28  # the model's name and two bars
        assert win.probs.height() > bars + 30 if said else win.probs.height() == bars  # room for the sentence


def test_tools_menu_opens_the_trainer_dialog(qtbot):
    pytest.importorskip("cxrviewer.gui.train_dialog")
    win = make_window(qtbot)
    win.open_train_dialog()
    assert win._train_dialog.isVisible()
    win._train_dialog.close()


def test_model_failure_is_a_message_not_a_crash(qtbot, tmp_path):
    class Broken(FakeBackend):
        def load_predictor(self, ctx, choice, device_pref):
            raise RuntimeError("tensor shapes do not match the architecture")

    win = make_window(qtbot, Broken())
    open_and_wait(qtbot, win, png(tmp_path / "f.png", gradient()))
    assert win.probs.state == "error"
    assert "tensor shapes do not match" in win.banner.text()
    assert win.film is not None


def test_settings_persist_in_the_test_folder(qtbot, tmp_path, monkeypatch):
    win = make_window(qtbot, FakeBackend(), persist=True)
    settle(qtbot, win)
    win.heatmap.set_method("gradcam")
    win.worklist.set_sort("suspicion")
    win.open_paths([png(tmp_path / "s.png", gradient())])
    settle(qtbot, win)
    win.close()
    import os

    ini = Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini"
    text = ini.read_text()
    assert "gradcam" in text and "suspicion" in text and "fake" in text and str(tmp_path) in text
    win2 = make_window(qtbot, FakeBackend(), persist=True)
    assert win2.heatmap.request.method == "gradcam" and win2.worklist.sort_key == "suspicion"


@pytest.mark.parametrize("written, shown", [("abc", 45), ("", 45), ("nan", 45), ("250", 100), ("-3", 0), ("60.4", 60)])
def test_a_hand_edited_opacity_setting_reads_as_a_sensible_value(qtbot, written, shown):
    import os

    ini = Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[heatmap]\nopacity={written}\n")
    win = make_window(qtbot, FakeBackend(), persist=True)
    assert win.heatmap.opacity.value() == shown


def test_lime_can_be_cancelled_and_never_lands_on_another_film(qtbot, tmp_path):
    a = png(tmp_path / "a.png", np.full((50, 50), 90, np.uint8))
    b = png(tmp_path / "b.png", np.full((50, 50), 40, np.uint8))
    win = make_window(qtbot, FakeBackend())
    open_and_wait(qtbot, win, a)
    win.heatmap.set_method("lime")
    qtbot.waitUntil(lambda: win.heatmap.cancel.isVisible() and "%" in win.heatmap.note.text(), timeout=3000)
    assert win.view.overlay is not None  # the coarse estimate is shown early
    t = time.monotonic()
    win.heatmap.cancel.click()
    settle(qtbot, win)
    assert time.monotonic() - t < 1.0 and "Cancelled" in win.heatmap.note.text()
    assert ("a.png" not in str(win.heat_cache))  # nothing cached from a cancelled run
    # restart it, then switch film half-way: the old film's map must never be drawn on the new one
    win.heatmap.set_method("none")
    win.heatmap.set_method("lime")
    qtbot.waitUntil(lambda: win.heatmap.cancel.isVisible(), timeout=3000)
    drawn = []
    orig = win._draw_overlay
    win._draw_overlay = lambda: (drawn.append(win.heat[0][0] if win.heat else None), orig())
    win.worklist.set_films([a, b])
    win.open_film(b)
    settle(qtbot, win)
    assert all(k in (None, b) for k in drawn), drawn
    assert win.heat is not None and win.heat[0][0] == b


def test_empty_state_opens_the_bundled_sample(qtbot, tmp_path, monkeypatch):
    res = tmp_path / "res"
    (res / "samples").mkdir(parents=True)
    png(res / "samples" / "sample-chest.png", gradient(60, 50))
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(res))
    win = make_window(qtbot)
    assert not win.empty.sample_btn.isHidden()
    win.empty.sample_btn.click()
    settle(qtbot, win)
    assert win.film is not None and win.film.path.name == "sample-chest.png" and win.worklist.count() == 1


def test_large_film_drag_renders_a_preview_then_full_resolution(qtbot):
    from cxrviewer.film.types import Film

    px = np.random.default_rng(0).integers(0, 4096, (2400, 2000)).astype(np.float32)
    film = Film(path=Path("big.dcm"), pixels=px, kind="dicom", bits_stored=12)
    win = make_window(qtbot)
    view = win.view
    view.set_film(film)
    c = QPoint(view.width() // 2, view.height() // 2)
    mouse(view, QEvent.MouseButtonPress, c, Qt.RightButton, Qt.RightButton)
    t = time.perf_counter()
    mouse(view, QEvent.MouseMove, c + QPoint(40, 10), Qt.NoButton, Qt.RightButton)
    dt = time.perf_counter() - t
    assert view.image.width() < 2000  # the preview while dragging
    mouse(view, QEvent.MouseButtonRelease, c + QPoint(40, 10), Qt.RightButton, Qt.NoButton)
    assert view.image.width() == 2000 and view.gray.shape == (2400, 2000)
    assert dt < 0.25, dt


def test_worklist_keeps_the_film_name_readable_beside_a_long_reading(qtbot):
    """A long class name used to take the whole width and leave the film name as "k…g": the reading now
    gets at most half of the list, the film name the rest, and the full reading is in the cell's tooltip.
    A cut reading keeps its number and the start of the class."""
    from PySide6.QtWidgets import QStyleOptionViewItem

    from cxrviewer.gui.worklist import Worklist

    wl = Worklist()
    qtbot.addWidget(wl)
    wl.resize(230, 400)
    wl.show()
    qtbot.waitExposed(wl)
    name = "kermany-bacterial-0042.png"
    wl.set_films([f"/films/{name}", "/films/b.png"], title="Folder")
    wl.set_prediction(f"/films/{name}", ["Normal", "Pneumonia-Bacterial", "Pneumonia-Viral"], [0.01, 0.59, 0.40],
                      "Pneumonia-Bacterial")
    qtbot.wait(20)
    view = wl.list
    width = view.viewport().width()
    assert view.columnWidth(0) >= 0.45 * width
    shown = view.fontMetrics().elidedText(name, Qt.ElideMiddle, view.columnWidth(0) - 12)
    assert len(shown.replace("…", "")) >= 10, shown
    item = next(view.item(i) for i in range(view.count()) if view.item(i).text(0) == name)
    # the column drops the prefix the classes share; the tooltip has the full name
    assert item.text(1) == "59% Bacterial" and item.toolTip(1) == "59% Pneumonia-Bacterial"
    # the reading is cut at its end, so the number and the start of the class stay (Bacterial vs Viral)
    option = QStyleOptionViewItem()
    view.itemDelegateForColumn(1).initStyleOption(option, view.indexFromItem(item, 1))
    assert option.textElideMode == Qt.ElideRight
    # a wide list shows the whole reading
    wl.resize(700, 400)
    qtbot.wait(20)
    assert view.columnWidth(1) >= view.fontMetrics().horizontalAdvance("59% Bacterial")


def test_another_model_clears_the_worklists_readings_and_outside_verdicts(qtbot):
    """Choosing another model blanks every row's reading until the new model has read it: a film the last
    model called "outside training data" may be one the new model was trained on."""
    from cxrviewer.gui.worklist import Worklist

    wl = Worklist()
    qtbot.addWidget(wl)
    classes = ["Normal", "Pneumonia"]
    wl.set_films(["/films/a.png", "/films/hand.png"], title="Folder")
    wl.set_prediction("/films/a.png", classes, [0.2, 0.8], "Pneumonia")
    wl.set_prediction("/films/hand.png", classes, [0.9, 0.1], "Normal", ood_verdict="outside")
    wl.set_sort("suspicion")
    assert wl.row_texts() == ["a.png   80% Pneumonia", "hand.png   outside training data"]
    wl.clear_predictions()
    assert wl.row_texts() == ["a.png", "hand.png"]
    assert all(r.ood_verdict == "" and r.suspicion is None and r.top_prob is None for r in wl.rows.values())
    wl.set_prediction("/films/hand.png", classes, [0.3, 0.7], "Pneumonia")
    assert wl.row_texts() == ["hand.png   70% Pneumonia", "a.png"]


def test_model_selector_shows_a_long_model_name_in_full_somewhere(qtbot):
    """The Reading panel elides "MobileNet-Lung, paediatric (Normal / Bacter…": the open list is wide
    enough for every full name, and hovering the closed selector names the current model in full, its
    classes, and any model files that could not be used."""
    long_name = "MobileNet-Lung, paediatric (Normal / Bacterial / Viral), trained on the hospital's films"

    class TwoModels(FakeBackend):
        def discover(self):
            (first,) = super().discover()
            first.display_name = long_name
            self.problems = [(Path("/models/broken.safetensors"), "not a checkpoint")]
            return [first, ModelChoice("other", "Other model", ["A", "B"], "user", "/x/other.safetensors",
                                       "resnet18", dict(first.metadata))]

    win = make_window(qtbot, TwoModels())
    settle(qtbot, win)
    sel = win.selector
    assert sel.currentText() == long_name
    assert sel.view().minimumWidth() >= sel.view().fontMetrics().horizontalAdvance(long_name)
    tip = sel.toolTip()
    assert long_name in tip and "Normal, Pneumonia" in tip
    assert "broken.safetensors: not a checkpoint" in tip
    sel.setCurrentIndex(sel.findData("other"))
    sel.activated.emit(sel.currentIndex())
    settle(qtbot, win)
    assert "Other model" in sel.toolTip() and long_name not in sel.toolTip()
    assert "broken.safetensors" in sel.toolTip()


def _two_cells(att):
    att = att.copy()
    att[1, 4] = 0.8  # beside the hot cell: two neighbouring superpixels are outlined, each on its own
    return att


@pytest.mark.parametrize("method,attention", [
    ("gradcam", lambda att: att),
    ("gradcam", lambda att: np.where(att > 0, 0.5, 0.35).astype(np.float32)),  # pale everywhere
    ("lime", _two_cells),
], ids=["gradcam", "gradcam-pale", "lime"])
def test_the_screen_shows_exactly_what_the_overlay_export_saves(qtbot, tmp_path, method, attention):
    """What the reader sees is what the PNG (and the report) save, LIME's outlines included; a map pale
    everywhere stays pale on screen instead of being stretched to look like strong evidence. The film is
    small enough that the screen's preview grid is the film's own, so the two compare pixel for pixel."""
    from cxrviewer.explain.overlay import OverlaySettings, composite

    class Shaped(FakeBackend):
        def predict(self, ctx, predictor, film, film_key, model_key):
            result = super().predict(ctx, predictor, film, film_key, model_key)
            result.attention = attention(result.attention)
            return result

    win = make_window(qtbot, Shaped())
    open_and_wait(qtbot, win, png(tmp_path / "f.png", gradient(90, 60)))
    win.heatmap.set_method(method)
    settle(qtbot, win)
    screen = qimage_to_array(win.view.overlay)
    assert screen.shape[:2] == win.view.gray.shape and screen[..., 3].any()
    if attention(np.eye(7, dtype=np.float32)).max() < 1:  # pale: drawn in the colour map's middle, not its top
        assert not np.all(screen[..., :3] == heatmap_top(win.heatmap.request.colormap), axis=-1).any()
    if method == "lime":  # the strongest superpixels are outlined on screen as in the export
        assert np.all(screen == (*OverlaySettings().outline_rgb, 255), axis=-1).any()
    win.export_overlay(str(tmp_path / "ov.png"))
    settle(qtbot, win)
    saved = np.asarray(Image.open(tmp_path / "ov.png").convert("RGB"))
    np.testing.assert_array_equal(composite(win.view.gray, screen), saved)


def test_exports_get_their_extension_and_refuse_another(qtbot, tmp_path, monkeypatch):
    """Save dialogs on some desktops return just the name typed: "overlay" is saved as overlay.png; a name
    ending in another extension (a PNG as "report.docx") is refused with a message, and nothing is written."""
    from PySide6.QtWidgets import QFileDialog

    from cxrviewer.gui import main_window as mw

    win = make_window(qtbot, FakeBackend())
    open_and_wait(qtbot, win, png(tmp_path / "f.png", gradient(90, 60)))
    win.heatmap.set_method("attention")
    settle(qtbot, win)
    chosen = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(chosen[-1]), ""))
    chosen.append(tmp_path / "overlay")
    win.export_overlay_dialog()
    settle(qtbot, win)
    assert (tmp_path / "overlay.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "overlay").exists()
    assert win.errors[-1] == "Saved overlay.png"
    chosen.append(tmp_path / "view.txt")
    win.save_view_dialog()
    assert not (tmp_path / "view.txt").exists()
    assert win.errors[-1] == "Export failed: cannot save view.txt: this export is PNG, so its name must end in .png"

    class Accept:
        def __init__(self, path, parent):
            self.include_ids = type("Box", (), {"isChecked": lambda self: False})()

        def exec(self):
            return mw.QDialog.Accepted

        def path(self):
            return str(chosen[-1])

    monkeypatch.setattr(mw, "ReportDialog", Accept)
    chosen.append(tmp_path / "report.docx")
    win.export_report_dialog()
    settle(qtbot, win)
    assert not (tmp_path / "report.docx").exists() and "must end in .pdf or .png" in win.errors[-1]
    chosen.append(tmp_path / "report")
    win.export_report_dialog()
    settle(qtbot, win)
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF") and win.errors[-1] == "Saved report.pdf"


def heatmap_top(colormap):
    from cxrviewer.explain.overlay import heatmap_rgba

    return heatmap_rgba(np.ones((1, 1), np.float32), colormap)[0, 0, :3]


def test_films_left_behind_keep_their_explanations_but_not_their_film_grids(qtbot, tmp_path):
    """Reading down a long worklist with a heatmap on: each film's explanation stays cached, so flipping
    back shows it at once and unchanged, but a film the reader has left does not keep its preview-grid
    map (megabytes each; hundreds of films would hold gigabytes)."""
    win = make_window(qtbot, FakeBackend())
    a, b = png(tmp_path / "a.png", gradient()), png(tmp_path / "b.png", gradient(top=128))
    open_and_wait(qtbot, win, a, b)
    win.heatmap.set_method("gradcam")
    settle(qtbot, win)
    first, shown = win.heat[1], qimage_to_array(win.view.overlay)
    assert first._film_cache  # drawn from its kept preview map
    win.worklist.step(+1)
    settle(qtbot, win)
    assert win.current_path == b and win.heat[1] is not first
    assert not first._film_cache  # a's explanation is still cached, its film-grid copy is not
    win.worklist.step(-1)
    settle(qtbot, win)
    assert win.heat[1] is first  # the cached explanation, not a new computation
    np.testing.assert_array_equal(qimage_to_array(win.view.overlay), shown)


def test_lime_settings_dialog_changes_recompute_and_persist(qtbot, tmp_path):
    """View > LIME settings…: the reader picks quickshift, 800 samples, no early stop and lime's regression
    alone; the LIME map on
    screen is recomputed with exactly those, kept in the settings file, and read back next session. The
    old map stays cached under the old settings, so restoring the defaults brings it back at once."""
    import os

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QDialogButtonBox

    from cxrviewer.explain.lime_explainer import LimeSettings
    from cxrviewer.gui.lime_dialog import LimeSettingsDialog

    backend = FakeBackend()
    win = make_window(qtbot, backend, persist=True)
    open_and_wait(qtbot, win, png(tmp_path / "a.png", gradient()))
    win.heatmap.set_method("lime")
    settle(qtbot, win)
    assert backend.explained[-1] == ("lime", LimeSettings())  # the defaults, as benchmarked
    first = win.heat

    def choose():
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, LimeSettingsDialog)
        assert dialog.segments.isEnabled() and dialog.segments.text() == "Model's choice"
        dialog.segmentation.setCurrentIndex(dialog.segmentation.findData("quickshift"))
        assert not dialog.segments.isEnabled()  # SLIC's count means nothing to quickshift
        dialog.samples.setValue(800)
        dialog.stop_early.setChecked(False)
        assert dialog.fit.currentData() == "surrogate"
        dialog.fit.setCurrentIndex(dialog.fit.findData("lime"))
        dialog.accept()

    QTimer.singleShot(0, choose)
    win.open_lime_settings()
    settle(qtbot, win)
    method, used = backend.explained[-1]
    assert method == "lime" and (used.segmentation, used.num_samples, used.settle_from, used.fit) == (
        "quickshift", 800, 0, "lime")
    assert win.heat is not first and win.heat[0] != first[0] and win.view.overlay is not None
    text = (Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini").read_text()
    assert "samples=800" in text and "segmentation=quickshift" in text and "fit=lime" in text
    calls = len(backend.explained)

    def restore():
        dialog = QApplication.activeModalWidget()
        dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.RestoreDefaults).click()
        assert dialog.samples.value() == 400 and dialog.stop_early.isChecked()
        assert dialog.fit.currentData() == "surrogate"
        dialog.accept()

    QTimer.singleShot(0, restore)
    win.open_lime_settings()
    settle(qtbot, win)
    assert len(backend.explained) == calls and win.heat[0] == first[0]  # from the cache, not recomputed
    win.heatmap.set_method("gradcam")
    settle(qtbot, win)
    win.heatmap.set_method("lime")  # back to the cached LIME map: its own note, not Grad-CAM's
    settle(qtbot, win)
    assert win.heat[0] == first[0] and win.heatmap.note.text().startswith("LIME for"), win.heatmap.note.text()
    win.close()
    win2 = make_window(qtbot, FakeBackend(), persist=True)
    assert win2.lime_settings == LimeSettings()


@pytest.mark.parametrize("written, samples, segmentation, early, fit", [
    ("samples=abc\nsegmentation=watershed\nstop_early=7\nfit=lasso", 400, None, 96, "surrogate"),
    ("samples=9\nsegments=60\nstop_early=0\nfit=LIME", 32, None, 0, "lime"),
    ("samples=1e9\nsegmentation=SLIC\nsegments=-4", 5000, "slic", 96, "surrogate"),
])
def test_hand_edited_lime_settings_read_as_sensible_values(qtbot, written, samples, segmentation, early, fit):
    import os

    ini = Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[lime]\n" + written + "\n")
    s = make_window(qtbot, FakeBackend(), persist=True).lime_settings
    assert (s.num_samples, s.segmentation, s.settle_from, s.fit) == (samples, segmentation, early, fit)
    assert s.n_segments in (None, 60)
