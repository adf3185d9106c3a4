"""Heatmap controls: method, opacity, colour map. They only edit a Qt-free :class:`HeatmapRequest`; the
window decides what to compute from it, so the explanation back-end can change without touching this."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QButtonGroup, QCheckBox, QComboBox, QGridLayout, QLabel, QPushButton, QRadioButton, QSlider, QWidget

from cxrviewer.gui import viewmath as vm


class HeatmapControls(QWidget):
    requestChanged = Signal(object)  # HeatmapRequest
    cancelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.request = vm.HeatmapRequest()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.group = QButtonGroup(self)
        self.buttons = {}
        for i, m in enumerate(vm.HEATMAP_METHODS):
            b = QRadioButton(vm.HEATMAP_LABELS[m])
            b.setProperty("method", m)
            self.group.addButton(b, i)
            self.buttons[m] = b
            grid.addWidget(b, i // 2, i % 2)
        self.buttons["none"].setChecked(True)
        self.group.buttonToggled.connect(self._method_toggled)
        grid.addWidget(QLabel("Opacity"), 2, 0)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(self.request.opacity * 100))
        self.opacity.valueChanged.connect(lambda v: self._set(opacity=v / 100.0))
        grid.addWidget(self.opacity, 2, 1)
        grid.addWidget(QLabel("Colour map"), 3, 0)
        self.cmap = QComboBox()
        for c in vm.COLORMAPS:
            self.cmap.addItem(c.capitalize(), c)
        self.cmap.currentIndexChanged.connect(lambda _i: self._set(colormap=self.cmap.currentData()))
        grid.addWidget(self.cmap, 3, 1)
        grid.addWidget(QLabel("Threshold"), 4, 0)
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(0, 90)
        self.threshold.setValue(int(self.request.threshold * 100))
        self.threshold.setToolTip("Hide weak evidence: nothing is drawn below this fraction of the map's peak")
        self.threshold.valueChanged.connect(lambda v: self._set(threshold=v / 100.0))
        grid.addWidget(self.threshold, 4, 1)
        self.note = QLabel("")
        self.note.setObjectName("hint")
        self.note.setWordWrap(True)
        grid.addWidget(self.note, 5, 0, 1, 2)
        self.side = QCheckBox("Side by side")
        self.side.setToolTip("Film on the left, film with the heatmap on the right (S)")
        grid.addWidget(self.side, 6, 0)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop computing this explanation")
        self.cancel.clicked.connect(self.cancelRequested)
        self.cancel.hide()
        grid.addWidget(self.cancel, 6, 1, Qt.AlignRight)

    def set_busy(self, busy: bool) -> None:
        self.cancel.setVisible(busy)

    def set_method(self, method: str) -> None:
        if method in self.buttons:
            self.buttons[method].setChecked(True)

    def cycle_method(self) -> None:
        """H: off -> attention -> Grad-CAM -> LIME -> off."""
        i = vm.HEATMAP_METHODS.index(self.request.method)
        self.set_method(vm.HEATMAP_METHODS[(i + 1) % len(vm.HEATMAP_METHODS)])

    def set_target_class(self, name) -> None:
        self._set(target_class=name)

    def set_available(self, methods) -> None:
        for m, b in self.buttons.items():
            b.setEnabled(m == "none" or m in methods)

    def set_note(self, text: str) -> None:
        self.note.setText(text)

    def _method_toggled(self, button, checked: bool) -> None:
        if checked:
            self._set(method=button.property("method"))

    def _set(self, **changes) -> None:
        new = replace(self.request, **changes)
        if new != self.request:
            self.request = new
            self.requestChanged.emit(new)
