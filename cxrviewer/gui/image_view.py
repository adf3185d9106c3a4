"""The film view: a QWidget painting one QImage through a transform, PACS-style mouse handling.

A plain widget rather than QGraphicsView because every interaction here is one affine transform of one
image plus an optional overlay; the transform comes from :mod:`cxrviewer.gui.viewmath` so it is tested
without a display. Window/level is re-rendered from modality values with :func:`display.render`; while
the right button is held a subsampled copy is rendered so a 3000×3000 film keeps up with the mouse, and
the full-resolution image is rendered on release.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QTransform
from PySide6.QtWidgets import QWidget

from cxrviewer.film import display
from cxrviewer.film.types import Film, Window
from cxrviewer.gui import viewmath as vm


def gray_to_qimage(gray: np.ndarray) -> QImage:
    """uint8 (H, W) -> QImage that owns its own copy (numpy buffers must not outlive the QImage)."""
    g = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = g.shape
    return QImage(g.data, w, h, w, QImage.Format_Grayscale8).copy()


def rgba_to_qimage(rgba: np.ndarray) -> QImage:
    a = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 4 * w, QImage.Format_RGBA8888).copy()


def qimage_to_array(img: QImage) -> np.ndarray:
    """A QImage as (H, W, 4) uint8 RGBA (used by tests and the screenshot check)."""
    img = img.convertToFormat(QImage.Format_RGBA8888)
    w, h = img.width(), img.height()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=img.sizeInBytes())
    return buf.reshape(h, img.bytesPerLine())[:, : 4 * w].reshape(h, w, 4).copy()


class ImageView(QWidget):
    cursorMoved = Signal(object)  # (row, col, value) in film/modality units, or None off the film
    windowChanged = Signal(object)  # Window or None (file VOI LUT)
    viewChanged = Signal()

    BACKGROUND = QColor(8, 8, 10)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMinimumSize(200, 200)
        self.setAcceptDrops(False)  # the main window takes drops
        self.film: Optional[Film] = None
        self.state = vm.ViewState()
        self.window: Optional[Window] = None  # None = the file's default display
        self.invert = False
        self.image: Optional[QImage] = None
        self.gray: Optional[np.ndarray] = None  # what is displayed (full res), for tests
        self.overlay: Optional[QImage] = None
        self.overlay_opacity = 1.0
        self.empty_text = ""
        self._preview_film: Optional[Film] = None
        self._preview_step = 1
        self._drag = None  # ("pan"|"wl", start pos, start state/window)
        self.split = False  # side by side: film | film + heatmap, one shared zoom/pan

    # ---------------------------------------------------------------------------------------- film
    def set_film(self, film: Optional[Film]) -> None:
        self.film = film
        self.window = display.default_window(film) if film is not None else None
        self.invert = False
        self.overlay = None
        self._preview_film = None
        self.state = vm.ViewState()
        self._range = film.value_range() if film is not None else (0.0, 1.0)
        if film is not None:
            step = vm.preview_step(film.shape, 1_000_000)
            self._preview_step = step
            if step > 1:
                self._preview_film = replace(film, pixels=np.ascontiguousarray(film.pixels[::step, ::step]))
        self._rerender()
        self.fit()
        self.windowChanged.emit(self.window)

    def clear(self) -> None:
        self.set_film(None)

    def _rerender(self, preview: bool = False) -> None:
        if self.film is None:
            self.image, self.gray = None, None
            self.update()
            return
        src = self._preview_film if (preview and self._preview_film is not None) else self.film
        gray = display.render(src, self.window, invert=self.invert, use_default=self.window is None)
        if src is self.film:
            self.gray = gray
        self.image = gray_to_qimage(gray)
        self._image_scale = self.film.shape[1] / gray.shape[1]
        self.update()

    # ------------------------------------------------------------------------------------- display
    def set_window(self, window: Optional[Window], preview: bool = False) -> None:
        self.window = window
        self._rerender(preview)
        self.windowChanged.emit(window)

    def apply_preset(self, preset: str) -> None:
        if self.film is None:
            return
        self.set_window(display.preset_window(self.film, preset))

    def toggle_invert(self) -> None:
        if self.film is None:
            return
        self.invert = not self.invert
        self._rerender()
        self.windowChanged.emit(self.window)

    def set_overlay(self, rgba: Optional[np.ndarray]) -> None:
        self.overlay = rgba_to_qimage(rgba) if rgba is not None else None
        self.update()

    def set_side_by_side(self, on: bool) -> None:
        self.split = bool(on)
        if self.film is not None and self.state.fit:
            self.fit()
        self.update()

    def pane_width(self) -> float:
        return self.width() / 2.0 if self.split else float(self.width())

    def _local_x(self, x: float) -> float:
        pw = self.pane_width()
        return x - pw if self.split and x >= pw else x

    def fit(self) -> None:
        if self.film is None:
            return
        h, w = self.film.shape
        self.state = vm.fit_state(w, h, self.state, self.pane_width(), self.height())
        self._changed()

    def one_to_one(self) -> None:
        if self.film is None:
            return
        h, w = self.film.shape
        self.state = vm.one_to_one(self.state, w, h)
        self._changed()

    def zoom_by(self, factor: float, anchor: Optional[QPointF] = None) -> None:
        if self.film is None:
            return
        pw = self.pane_width()
        a = (self._local_x(anchor.x()), anchor.y()) if anchor is not None else (pw / 2, self.height() / 2)
        self.state = vm.zoom_about(self.state, factor, a, pw, self.height())
        self._changed()

    def rotate(self, clockwise: bool = True) -> None:
        if self.film is None:
            return
        h, w = self.film.shape
        fit = self.state.fit
        self.state = vm.rotate(self.state, w, h, clockwise)
        if fit:
            self.fit()
        self._changed()

    def flip(self, horizontal: bool) -> None:
        if self.film is None:
            return
        fit = self.state.fit
        h, w = self.film.shape
        old = vm.orientation_matrix(w, h, self.state.rotation, self.state.flip_h, self.state.flip_v)
        film_center = vm.map_point(np.linalg.inv(old), *self.state.center)
        st = vm.screen_flip(self.state, horizontal)
        new = vm.orientation_matrix(w, h, st.rotation, st.flip_h, st.flip_v)
        self.state = replace(st, center=vm.map_point(new, *film_center), fit=fit)
        self._changed()

    def reset(self) -> None:
        """Back to how the film opened: the file's window, no inversion, orientation, fit."""
        if self.film is None:
            return
        self.state = vm.ViewState()
        self.invert = False
        self.window = display.default_window(self.film)
        self._rerender()
        self.fit()
        self.windowChanged.emit(self.window)

    def _changed(self) -> None:
        self.update()
        self.viewChanged.emit()

    # -------------------------------------------------------------------------------------- geometry
    def film_to_widget(self, offset_x: float = 0.0) -> QTransform:
        h, w = self.film.shape
        m = vm.view_matrix(w, h, self.state, self.pane_width(), self.height())
        return QTransform(m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2] + offset_x, m[1, 2])

    def widget_to_film(self, x: float, y: float) -> tuple:
        h, w = self.film.shape
        return vm.screen_to_film(w, h, self.state, self.pane_width(), self.height(), self._local_x(x), y)

    def value_at(self, x: float, y: float):
        """(row, col, modality value) under a widget position, or None outside the film."""
        if self.film is None:
            return None
        fx, fy = self.widget_to_film(x, y)
        h, w = self.film.shape
        col, row = int(np.floor(fx)), int(np.floor(fy))
        if 0 <= row < h and 0 <= col < w:
            return row, col, float(self.film.pixels[row, col])
        return None

    # ---------------------------------------------------------------------------------------- events
    def resizeEvent(self, event) -> None:
        if self.film is not None and self.state.fit:
            h, w = self.film.shape
            self.state = vm.fit_state(w, h, self.state, self.pane_width(), self.height())
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self.BACKGROUND)
        if self.film is None or self.image is None:
            self._paint_empty(p)
            p.end()
            return
        h, w = self.film.shape
        pw = self.pane_width()
        panes = [(0.0, False), (pw, True)] if self.split else [(0.0, True)]
        for offset, with_overlay in panes:
            p.save()
            p.setClipRect(QRectF(offset, 0, pw, self.height()))
            p.setTransform(self.film_to_widget(offset))
            p.setRenderHint(QPainter.SmoothPixmapTransform, self.state.zoom < 1.0)
            p.drawImage(QRectF(0, 0, w, h), self.image)
            if with_overlay and self.overlay is not None:
                p.setOpacity(self.overlay_opacity)
                p.setRenderHint(QPainter.SmoothPixmapTransform, True)
                p.drawImage(QRectF(0, 0, w, h), self.overlay)
            p.restore()
        if self.split:
            p.setPen(QColor(60, 66, 74))
            p.drawLine(int(pw), 0, int(pw), self.height())
        p.end()

    def _paint_empty(self, p: QPainter) -> None:
        if not self.empty_text:
            return
        p.setPen(QColor(150, 160, 170))
        f = QFont(self.font())
        f.setPointSizeF(f.pointSizeF() * 1.15)
        p.setFont(f)
        r = self.rect().adjusted(40, 40, -40, -self.height() // 3)
        p.drawText(r, Qt.AlignHCenter | Qt.AlignBottom | Qt.TextWordWrap, self.empty_text)

    def wheelEvent(self, event) -> None:
        if self.film is None:
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.15 ** steps, event.position())
        event.accept()

    def mousePressEvent(self, event) -> None:
        if self.film is None:
            return
        pos = event.position()
        if event.button() == Qt.LeftButton:
            self._drag = ("pan", pos, self.state)
            self.setCursor(Qt.ClosedHandCursor)
        elif event.button() == Qt.RightButton:
            start = self.window or display.full_range_window(self.film.pixels)
            self._drag = ("wl", pos, start)
            self.setCursor(Qt.SizeAllCursor)
        event.accept()

    def mouseMoveEvent(self, event) -> None:
        pos = event.position()
        if self._drag is not None:
            kind, start_pos, start = self._drag
            dx, dy = pos.x() - start_pos.x(), pos.y() - start_pos.y()
            if kind == "pan":
                self.state = vm.pan(start, dx, dy)
                self._changed()
            else:
                self.set_window(vm.drag_window(start, dx, dy, self._range), preview=True)
        self.cursorMoved.emit(self.value_at(pos.x(), pos.y()))

    def mouseReleaseEvent(self, event) -> None:
        if self._drag is not None:
            kind = self._drag[0]
            self._drag = None
            self.unsetCursor()
            if kind == "wl":
                self._rerender(preview=False)  # full resolution once the reader lets go
        event.accept()

    def leaveEvent(self, event) -> None:
        self.cursorMoved.emit(None)
        super().leaveEvent(event)

    def contextMenuEvent(self, event) -> None:
        event.accept()  # the right button is window/level here, as in every PACS viewer
