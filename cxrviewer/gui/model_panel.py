"""Model selector and the model card dialog."""

from __future__ import annotations

import html
import json
from typing import Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

OPEN_MODEL = "__open_model__"
NO_MODEL = "__none__"


class ModelSelector(QComboBox):
    """Combo of discovered models (display name, classes, source) plus "Open model…"."""

    modelChosen = Signal(str)  # key
    openRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.choices: list = []
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(18)
        self.activated.connect(self._activated)
        self._last_key = NO_MODEL
        self.set_choices([], None)

    def set_choices(self, choices, current_key: Optional[str]) -> None:
        self.blockSignals(True)
        self.clear()
        self.choices = list(choices)
        if not self.choices:
            self.addItem("No model installed", NO_MODEL)
        for c in self.choices:
            self.addItem(c.display_name, c.key)
            self.setItemData(self.count() - 1, c.tooltip(), 3)  # Qt.ToolTipRole
        self.insertSeparator(self.count())
        self.addItem("Open model…", OPEN_MODEL)
        idx = self.findData(current_key) if current_key else -1
        self.setCurrentIndex(idx if idx >= 0 else 0)
        self._last_key = self.currentData()
        self.blockSignals(False)

    def current_key(self) -> Optional[str]:
        k = self.currentData()
        return None if k in (NO_MODEL, OPEN_MODEL) else k

    def _activated(self, index: int) -> None:
        key = self.itemData(index)
        if key == OPEN_MODEL:
            idx = self.findData(self._last_key)
            self.setCurrentIndex(max(idx, 0))
            self.openRequested.emit()
            return
        if key == NO_MODEL:
            return
        self._last_key = key
        self.modelChosen.emit(key)


def card_html(choice) -> str:
    """The model card as HTML: what it is, the data, the metrics, the limits, provenance."""
    meta = choice.metadata or {}
    card = meta.get("card") or {}
    training = meta.get("training") or {}
    esc = lambda v: html.escape(str(v))  # noqa: E731
    out = [f"<h2>{esc(choice.display_name)}</h2>"]
    facts = [
        ("Name", choice.key),
        ("Version", meta.get("version", "")),
        ("Architecture", meta.get("arch", choice.arch)),
        ("Classes", ", ".join(choice.classes)),
        ("Source", choice.source),
        ("File", choice.path),
    ]
    pre = meta.get("preprocess") or {}
    if pre:
        facts.append(("Input", f"{pre.get('input_size', '?')} px, {pre.get('resize', '?')}, preprocessing v{pre.get('version', '?')}"))
    if meta.get("temperature") not in (None, ""):
        facts.append(("Calibration temperature", meta.get("temperature")))
    out.append("<table>" + "".join(f"<tr><td><b>{esc(k)}</b>&nbsp;&nbsp;</td><td>{esc(v)}</td></tr>" for k, v in facts if v not in (None, "")) + "</table>")
    for title, key in (("Description", "description"), ("Training data", "data"), ("Limits", "limits"), ("Licence", "licence")):
        if card.get(key):
            out.append(f"<h3>{title}</h3><p>{esc(card[key])}</p>")
    metrics = training.get("metrics") or {}
    if metrics:
        out.append("<h3>Metrics</h3><table>")
        for k, v in metrics.items():
            if isinstance(v, float):
                v = f"{v:.4f}"
            elif isinstance(v, (dict, list)):
                v = json.dumps(v)[:300]
            out.append(f"<tr><td>{esc(k)}&nbsp;&nbsp;</td><td>{esc(v)}</td></tr>")
        out.append("</table>")
    prov = [(k, training.get(k)) for k in ("epochs", "date", "data_fingerprint", "hardware", "command") if training.get(k)]
    if prov:
        out.append("<h3>Provenance</h3><table>" + "".join(f"<tr><td>{esc(k)}&nbsp;&nbsp;</td><td>{esc(v)}</td></tr>" for k, v in prov) + "</table>")
    if not card and not metrics:
        out.append("<p><i>This model carries no model card.</i></p>")
    return "\n".join(out)


class ModelCardDialog(QDialog):
    def __init__(self, choice, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Model card — {choice.display_name}")
        self.resize(560, 520)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(False)
        self.browser.setHtml(card_html(choice))
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser)
        lay.addWidget(buttons)
