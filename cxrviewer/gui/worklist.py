"""The worklist: the films of a folder (or of a multi-file open) with their top prediction.

Rows are :class:`viewmath.WorklistRow` records; ordering lives in :func:`viewmath.sort_rows` so it is tested
without Qt. Selecting a row asks the window to open that film; J/K and the arrows walk the list when it has
focus, PageDown/PageUp from anywhere (window shortcuts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QStyledItemDelegate,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxrviewer.gui import viewmath as vm

PATH_ROLE = Qt.UserRole + 1


class _ElideRight(QStyledItemDelegate):
    """The reading column is cut at its end ("83% Bacter…"): middle elision, right for file names
    ("perso…5.png"), would leave "Pneum…l" for both Bacterial and Viral."""

    def initStyleOption(self, option, index) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.ElideRight


class _List(QTreeWidget):
    """Two columns (film, reading) with list-like helpers; J/K walk it like the arrows."""

    def __init__(self):
        super().__init__()
        self.setColumnCount(2)
        self.setHeaderLabels(["Film", "Reading"])
        self.setRootIsDecorated(False)
        self.setUniformRowHeights(True)
        self.setAlternatingRowColors(True)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setTextElideMode(Qt.ElideMiddle)
        hh = self.header()
        hh.setStretchLastSection(False)
        hh.setSectionResizeMode(0, QHeaderView.Stretch)
        hh.setSectionResizeMode(1, QHeaderView.Fixed)  # sized by fit_columns, so the film name keeps its share
        hh.setSectionsClickable(True)
        self._reading_delegate = _ElideRight(self)
        self.setItemDelegateForColumn(1, self._reading_delegate)

    # the reading may take at most this share of the width: a long class name ("Pneumonia-Bacterial 59%")
    # must not squeeze the film name down to "k…g"; the full reading is in the cell's tooltip
    READING_SHARE = 0.5

    def fit_columns(self) -> None:
        width = self.viewport().width()
        wanted = max(self.sizeHintForColumn(1), self.header().sectionSizeHint(1))
        self.header().resizeSection(1, int(min(wanted, width * self.READING_SHARE)))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_columns()

    def count(self) -> int:
        return self.topLevelItemCount()

    def item(self, i: int):
        return self.topLevelItem(i)

    def currentRow(self) -> int:
        item = self.currentItem()
        return self.indexOfTopLevelItem(item) if item is not None else -1

    def setCurrentRow(self, i: int) -> None:
        item = self.topLevelItem(i)
        if item is not None:
            self.setCurrentItem(item)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key == Qt.Key_J:
            self.setCurrentRow(vm.step_index(self.currentRow(), self.count(), +1))
            return
        if key == Qt.Key_K:
            self.setCurrentRow(vm.step_index(self.currentRow(), self.count(), -1))
            return
        super().keyPressEvent(event)


class Worklist(QWidget):
    filmSelected = Signal(str)  # path

    SORT_LABELS = {"name": "Name", "suspicion": "Suspicion (1 − P(normal))", "top": "Top probability"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: dict = {}  # path -> WorklistRow
        self.sort_key = "name"
        self.title = QLabel("No worklist")
        self.title.setObjectName("sectionTitle")
        self.sort = QComboBox()
        for k in vm.SORT_KEYS:
            self.sort.addItem(self.SORT_LABELS[k], k)
        self.sort.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.sort.setMinimumContentsLength(8)
        self.sort.setToolTip("Order of the worklist (suspicion needs a model)")
        self.sort.currentIndexChanged.connect(lambda _i: self.set_sort(self.sort.currentData()))
        self.list = _List()
        self.list.currentItemChanged.connect(self._current_changed)
        # clicking a column header sorts by it: the film name, or the model's suspicion
        self.list.header().sectionClicked.connect(lambda col: self.set_sort("name" if col == 0 else "suspicion"))
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        row = QHBoxLayout()
        row.addWidget(QLabel("Sort:"))
        row.addWidget(self.sort, 1)
        lay.addLayout(row)
        lay.addWidget(self.list, 1)
        self._suppress = False

    # --------------------------------------------------------------------------------------------
    def set_films(self, paths: Sequence, title: str = "") -> None:
        self.rows = {str(p): vm.WorklistRow(path=str(p), name=Path(p).name) for p in paths}
        self.title.setText(f"{title or 'Worklist'} — {len(self.rows)} film{'s' if len(self.rows) != 1 else ''}")
        self._rebuild(keep=None)

    def paths(self) -> list:
        return [self.list.item(i).data(0, PATH_ROLE) for i in range(self.list.count())]

    def row_texts(self) -> list:
        return [f"{self.list.item(i).text(0)}   {self.list.item(i).text(1)}".rstrip() for i in range(self.list.count())]

    def count(self) -> int:
        return self.list.count()

    def current_path(self) -> Optional[str]:
        item = self.list.currentItem()
        return item.data(0, PATH_ROLE) if item is not None else None

    def select_path(self, path: str, emit: bool = True) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(0, PATH_ROLE) == str(path):
                self._suppress = not emit
                try:
                    self.list.setCurrentRow(i)
                finally:
                    self._suppress = False
                return

    def step(self, delta: int) -> None:
        self.list.setCurrentRow(vm.step_index(self.list.currentRow(), self.list.count(), delta))

    def set_prediction(self, path: str, classes, probs, top_class: str, ood_verdict: str = "") -> None:
        row = self.rows.get(str(path))
        if row is None:
            return
        pairs = vm.sorted_probabilities(classes, probs)
        row.top_class = top_class or (pairs[0][0] if pairs else "")
        row.top_prob = dict(pairs).get(row.top_class, pairs[0][1] if pairs else 0.0)
        row.top_short = vm.short_class_name(row.top_class, classes)
        row.ood_verdict = ood_verdict or ""
        # a film outside the model's training data has no meaningful suspicion: it sorts with the unread ones
        row.suspicion = None if row.ood_verdict == "outside" else vm.suspicion(classes, probs)
        row.error = ""
        if self.sort_key != "name":
            self._rebuild(keep=self.current_path())
        else:
            self._update_item(row)

    def set_error(self, path: str, message: str) -> None:
        row = self.rows.get(str(path))
        if row is not None:
            row.error = message
            self._update_item(row)

    def clear_predictions(self) -> None:
        """Forget the last model's readings (another model was chosen). The guard's verdict is the last
        model's too: a film one model calls outside its data may be one the next was trained on."""
        for row in self.rows.values():
            row.top_class, row.top_short, row.top_prob, row.suspicion, row.ood_verdict = "", "", None, None, ""
        self._rebuild(keep=self.current_path())

    def set_sort(self, key: str) -> None:
        if key not in vm.SORT_KEYS:
            return
        self.sort_key = key
        idx = self.sort.findData(key)
        if idx >= 0 and idx != self.sort.currentIndex():
            self.sort.blockSignals(True)
            self.sort.setCurrentIndex(idx)
            self.sort.blockSignals(False)
        self._rebuild(keep=self.current_path())

    # --------------------------------------------------------------------------------------------
    def _rebuild(self, keep: Optional[str]) -> None:
        self._suppress = True
        try:
            self.list.clear()
            for row in vm.sort_rows(list(self.rows.values()), self.sort_key):
                item = QTreeWidgetItem([row.name, row.reading()])
                item.setData(0, PATH_ROLE, row.path)
                self._style(item, row)
                self.list.addTopLevelItem(item)
            self.list.fit_columns()
            if keep is not None:
                self.select_path(keep, emit=False)
        finally:
            self._suppress = False

    def _update_item(self, row: vm.WorklistRow) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(0, PATH_ROLE) == row.path:
                item.setText(1, row.reading())
                self._style(item, row)
                self.list.fit_columns()
                return

    @staticmethod
    def _style(item: QTreeWidgetItem, row: vm.WorklistRow) -> None:
        item.setToolTip(0, row.error or row.path)
        item.setToolTip(1, row.error or row.reading(full=True))
        if row.error:
            item.setForeground(1, QBrush(QColor(230, 120, 90)))
        elif row.ood_verdict == "outside":
            item.setForeground(1, QBrush(QColor(140, 146, 152)))
        elif row.suspicion is not None and row.suspicion >= 0.5:
            item.setForeground(1, QBrush(QColor(255, 196, 90)))
        else:
            item.setForeground(1, QBrush(QColor(150, 200, 160)))

    def _current_changed(self, current, _previous) -> None:
        if current is not None and not self._suppress:
            self.filmSelected.emit(current.data(0, PATH_ROLE))
