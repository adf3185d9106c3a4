"""One bar per class, highest first, the top one highlighted, the model's name beside them.

Painted by hand rather than with QProgressBars so the layout stays compact and legible in a dark theme,
and so a click on a bar can choose the class to explain.
"""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QRect, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

from cxrviewer.gui import viewmath as vm
from cxrviewer.probability_text import percent

BAR_H = 22
GAP = 6
CAUTION_H = 40  # at least; grows with the sentence


class ProbabilityPanel(QWidget):
    classClicked = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.pairs: list = []
        self.model_label = ""
        self.state = "nomodel"  # nomodel | idle | busy | ready | error
        self.message = "No model installed"
        self.selected: Optional[str] = None
        self.caution = ""  # why the probabilities should not be trusted (out-of-distribution, header)
        self.outside = False  # greyed: the film is not what the model was trained on
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
        self.setMinimumWidth(220)
        self._update_height()

    # ------------------------------------------------------------------------------------------
    def set_no_model(self, message: str = "No model installed") -> None:
        self.state, self.message, self.pairs = "nomodel", message, []
        self._update_height()

    def set_idle(self, model_label: str, message: str = "Open a film to see the model's reading") -> None:
        self.state, self.message, self.pairs, self.model_label = "idle", message, [], model_label
        self._update_height()

    def set_busy(self, model_label: str, message: str = "Analysing…") -> None:
        self.state, self.message, self.model_label = "busy", message, model_label
        self.pairs = []
        self._update_height()

    def set_error(self, message: str) -> None:
        self.state, self.message, self.pairs = "error", message, []
        self._update_height()

    def set_probabilities(self, classes, probs, model_label: str, ood=None, evidence=()) -> None:
        """``ood`` (cxrviewer.ood.OodResult) greys the bars when the film is outside the training
        distribution; its sentence and the header ``evidence`` are written under them."""
        self.pairs = vm.sorted_probabilities(classes, probs)
        self.model_label = model_label
        self.state, self.message = "ready", ""
        self.selected = None
        self.outside = ood is not None and ood.verdict == "outside"
        lines = [ood.sentence] if ood is not None and ood.verdict != "inside" else []
        self.caution = " ".join(lines + [e for e in evidence if e not in lines])
        self.setToolTip(ood.sentence if ood is not None else "This model carries no out-of-distribution check.")
        self._update_height()

    def top(self) -> Optional[tuple]:
        return self.pairs[0] if self.pairs else None

    # ------------------------------------------------------------------------------------------
    def _update_height(self) -> None:
        n = len(self.pairs)
        h = 28 + (n * (BAR_H + GAP) if n else 76) + (self._caution_height() if n and self.caution else 0)
        self.setFixedHeight(h)
        self.update()

    def _caution_height(self) -> int:
        """The wrapped sentence's height at the current width (the panel grows to show all of it)."""
        w = max(120, self.width())
        r = self.fontMetrics().boundingRect(QRect(0, 0, w, 10000), int(Qt.AlignLeft | Qt.TextWordWrap), self.caution)
        return max(CAUTION_H, r.height() + 8)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.caution and self.pairs and self.height() != 28 + len(self.pairs) * (BAR_H + GAP) + self._caution_height():
            self._update_height()

    def mousePressEvent(self, event) -> None:
        y = event.position().y() - 28
        if y >= 0 and self.pairs:
            i = int(y // (BAR_H + GAP))
            if 0 <= i < len(self.pairs):
                self.selected = self.pairs[i][0]
                self.classClicked.emit(self.selected)
                self.update()

    def select_step(self, step: int = 1) -> None:
        """C / Shift+C: explain the next (previous) class down the bars, wrapping round, as a click on its
        bar would; from the top class when none has been chosen."""
        if not self.pairs:
            return
        names = [n for n, _ in self.pairs]
        i = names.index(self.selected) if self.selected in names else 0
        self.selected = names[(i + step) % len(names)]
        self.classClicked.emit(self.selected)
        self.update()

    def readouts(self) -> list:
        """(class, probability, the text beside its bar), highest first: what the panel paints."""
        return [(name, prob, percent(prob)) for name, prob in self.pairs]

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w = self.width()
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.9))
        p.setFont(small)
        p.setPen(QColor(140, 150, 160))
        label = self.model_label if self.state != "nomodel" else ""
        p.drawText(QRectF(0, 0, w, 22), Qt.AlignLeft | Qt.AlignVCenter | Qt.TextSingleLine,
                   p.fontMetrics().elidedText(label, Qt.ElideRight, w))  # cut visibly, not mid-letter
        if not self.pairs:
            col = QColor(230, 120, 90) if self.state == "error" else QColor(170, 178, 186)
            p.setPen(col)
            p.setFont(self.font())
            p.drawText(QRectF(0, 28, w, 76), Qt.AlignLeft | Qt.AlignTop | Qt.TextWordWrap, self.message)
            p.end()
            return
        y = 28
        label_w = min(160, int(w * 0.45))
        bar_x = label_w + 6
        bar_w = max(20, w - bar_x - 52)
        bold = QFont(self.font())
        bold.setBold(True)
        for i, (name, prob, text) in enumerate(self.readouts()):
            top = i == 0
            chosen = self.selected == name
            p.setFont(bold if top else self.font())
            p.setPen(QColor(235, 240, 245) if top and not self.outside else QColor(150, 156, 162) if self.outside else QColor(190, 196, 202))
            p.drawText(QRectF(0, y, label_w, BAR_H), Qt.AlignLeft | Qt.AlignVCenter | Qt.TextSingleLine,
                       p.fontMetrics().elidedText(name, Qt.ElideRight, label_w))
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(40, 44, 50))
            p.drawRoundedRect(QRectF(bar_x, y + 4, bar_w, BAR_H - 8), 3, 3)
            p.setBrush(QColor(110, 122, 138) if not top or self.outside else QColor(64, 156, 255))
            p.drawRoundedRect(QRectF(bar_x, y + 4, max(2.0, bar_w * prob), BAR_H - 8), 3, 3)
            if chosen:
                p.setPen(QColor(255, 196, 90))
                p.setBrush(Qt.NoBrush)
                p.drawRoundedRect(QRectF(bar_x - 1, y + 3, bar_w + 2, BAR_H - 6), 3, 3)
            p.setPen(QColor(235, 240, 245) if top else QColor(190, 196, 202))
            p.drawText(QRectF(bar_x + bar_w + 4, y, 48, BAR_H), Qt.AlignRight | Qt.AlignVCenter, text)
            y += BAR_H + GAP
        if self.caution:
            p.setFont(self.font())
            p.setPen(QColor(242, 197, 114))
            p.drawText(QRectF(0, y, w, self._caution_height()), Qt.AlignLeft | Qt.AlignTop | Qt.TextWordWrap, self.caution)
        p.end()
