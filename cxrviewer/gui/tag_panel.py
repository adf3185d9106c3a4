"""The DICOM tag panel and the concise header above the film.

Identifier rows (``TagRow.is_phi``) are filtered out by the proxy unless "Show identifiers" is ticked, so
they are not merely hidden from view but absent from what the table exposes (copy, search).
"""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QHeaderView, QLineEdit, QTableView, QVBoxLayout, QWidget

COLUMNS = ("Tag", "Name", "VR", "Value")


class TagModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list = []

    def set_rows(self, rows) -> None:
        self.beginResetModel()
        self.rows = list(rows or [])
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        if role in (Qt.DisplayRole, Qt.ToolTipRole):
            return (r.tag, r.keyword, r.vr, r.value)[index.column()]
        return None

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if role == Qt.DisplayRole and orientation == Qt.Horizontal:
            return COLUMNS[section]
        return None


class TagFilter(QSortFilterProxyModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.show_phi = False
        self.text = ""

    def set_text(self, text: str) -> None:
        self._refilter(lambda: setattr(self, "text", text.strip().lower()))

    def set_show_phi(self, on: bool) -> None:
        self._refilter(lambda: setattr(self, "show_phi", bool(on)))

    def _refilter(self, change) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9: invalidateFilter() is deprecated
            self.beginFilterChange()
            change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row, source_parent) -> bool:
        row = self.sourceModel().rows[source_row]
        if row.is_phi and not self.show_phi:
            return False
        if not self.text:
            return True
        return any(self.text in str(v).lower() for v in (row.tag, row.keyword, row.value))


class TagPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = TagModel(self)
        self.proxy = TagFilter(self)
        self.proxy.setSourceModel(self.model)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter tags (name, number or value)…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.proxy.set_text)
        self.show_phi = QCheckBox("Show identifiers")
        self.show_phi.setToolTip("Patient name, ID, birth date and other identifiers (hidden by default)")
        self.show_phi.toggled.connect(self.proxy.set_show_phi)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setSelectionBehavior(QTableView.SelectRows)
        self.table.setWordWrap(False)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.Interactive)
        hh.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        hh.setStretchLastSection(True)
        hh.resizeSection(1, 170)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.show_phi)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)

    def set_tags(self, rows) -> None:
        self.model.set_rows(rows)

    def visible_rows(self) -> list:
        return [self.model.rows[self.proxy.mapToSource(self.proxy.index(i, 0)).row()] for i in range(self.proxy.rowCount())]


def header_text(film, with_notes: bool = True) -> str:
    """The one-line summary a reader glances at: sex/age, view, date, modality, spacing, notes.

    Built from ``film.info`` (no identifiers by construction) with tolerant key lookup, since the loader's
    key spelling is its own.
    """
    if film is None:
        return ""
    info = {str(k).lower().replace(" ", "").replace("_", ""): v for k, v in (film.info or {}).items()}

    def get(*keys) -> Optional[str]:
        for k in keys:
            v = info.get(k.lower().replace(" ", "").replace("_", ""))
            if v not in (None, ""):
                return str(v)
        return None

    parts = []
    sex, age = get("PatientSex", "sex"), get("PatientAge", "age")
    if sex or age:
        parts.append(" ".join(x for x in (sex, age) if x))
    view = get("ViewPosition", "view", "view_position")
    if view:
        parts.append(view)
    body = get("BodyPartExamined", "body_part")
    if body:
        parts.append(body)
    date = get("StudyDate", "study_date", "date")
    if date:
        if len(date) == 8 and date.isdigit():
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        parts.append(date)
    modality = film.modality or get("Modality")
    if modality:
        parts.append(modality)
    h, w = film.shape
    parts.append(f"{w}×{h}")
    if film.pixel_spacing:
        sy, sx = film.pixel_spacing
        parts.append(f"{sy:.3g}×{sx:.3g} mm" + (f" ({film.spacing_source})" if film.spacing_source else ""))
    if getattr(film, "monochrome1", False):
        parts.append("MONOCHROME1")
    text = "  ·  ".join(parts)
    if with_notes and film.notes:
        text += "  ·  " + "; ".join(str(n) for n in film.notes)
    return text
