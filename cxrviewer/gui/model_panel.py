"""Model selector and the model card dialog."""

from __future__ import annotations

import html
import json
from typing import Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

from cxrviewer.ood import trained_ages

OPEN_MODEL = "__open_model__"
NO_MODEL = "__none__"


class ModelSelector(QComboBox):
    """Combo of discovered models (display name, classes, source) plus "Open model…".

    The Reading panel is narrower than a descriptive model name ("MobileNet-Lung, paediatric (Normal /
    Bacterial / Viral)"), so the closed combo elides it; the open list is made wide enough for every
    full name, and hovering the closed combo shows the current model's full name, classes and file, with
    any model files that could not be used listed after it."""

    modelChosen = Signal(str)  # key
    openRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.choices: list = []
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(18)
        self.activated.connect(self._activated)
        self._last_key = NO_MODEL
        self._problems = ""
        self.currentIndexChanged.connect(self._update_tooltip)
        self.set_choices([], None)

    def set_problems(self, text: str) -> None:
        """Why some model files were not offered (shown after the current model in the tooltip)."""
        self._problems = text.strip()
        self._update_tooltip()

    def _update_tooltip(self, *_) -> None:
        current = self.itemData(self.currentIndex(), 3) or ""
        self.setToolTip("\n\n".join(t for t in (str(current), self._problems) if t))

    def _fit_popup(self) -> None:
        fm = self.view().fontMetrics()
        widest = max((fm.horizontalAdvance(self.itemText(i)) for i in range(self.count())), default=0)
        scroll = self.view().verticalScrollBar().sizeHint().width()
        self.view().setMinimumWidth(widest + scroll + 4 * fm.averageCharWidth())

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
        self._fit_popup()
        self._update_tooltip()

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


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _split_html(title: str, m: dict, classes: list) -> str:
    """One split's numbers as a reader wants them: the headline row, per-class recall (what a missed class
    costs), the confusion matrix (which classes are confused), calibration (can the percentages be read)."""
    esc = html.escape
    n = f" ({m['n']} films)" if m.get("n") else ""
    head = [("Accuracy", m.get("accuracy")), ("Macro F1", m.get("macro_f1")), ("Macro AUC", m.get("macro_auc"))]
    ece = ""
    if m.get("ece_before_temperature") is not None or m.get("ece_after_temperature") is not None:
        ece = (f"<p>Calibration error (ECE): {_num(m.get('ece_before_temperature'))} before temperature scaling, "
               f"{_num(m.get('ece_after_temperature'))} after.</p>")
    elif m.get("ece") is not None:
        ece = f"<p>Calibration error (ECE): {_num(m.get('ece'))}.</p>"
    out = [f"<h4>{esc(title)}{esc(n)}</h4><table>"
           + "".join(f"<tr><td>{k}&nbsp;&nbsp;</td><td>{_num(v)}</td></tr>" for k, v in head) + "</table>" + ece]
    pc = m.get("per_class") or {}
    if pc:
        out.append("<table border='1' cellspacing='0' cellpadding='3'><tr><th>class</th><th>recall</th>"
                   "<th>precision</th><th>AUC</th><th>films</th></tr>")
        for c, v in pc.items():
            out.append(f"<tr><td>{esc(str(c))}</td><td>{_num(v.get('recall'))}</td><td>{_num(v.get('precision'))}</td>"
                       f"<td>{_num(v.get('auc'))}</td><td>{esc(str(v.get('support', '')))}</td></tr>")
        out.append("</table>")
    cm = m.get("confusion_matrix")
    if cm and len(cm) == len(classes):
        out.append("<p>Confusion matrix (rows: true class, columns: predicted):</p>"
                   "<table border='1' cellspacing='0' cellpadding='3'><tr><th></th>"
                   + "".join(f"<th>{esc(c)}</th>" for c in classes) + "</tr>")
        for c, row in zip(classes, cm):
            out.append(f"<tr><th>{esc(c)}</th>" + "".join(f"<td align='right'>{int(v)}</td>" for v in row) + "</tr>")
        out.append("</table>")
    return "".join(out)


def _metrics_html(metrics: dict, classes: list) -> str:
    out = ["<h3>Metrics</h3>"]
    for key, title in (("test", "Held-out test split"), ("val", "Validation split")):
        if isinstance(metrics.get(key), dict):
            out.append(_split_html(title, metrics[key], classes))
    rest = {k: v for k, v in metrics.items()
            if k not in ("test", "val", "temperature_not_fitted") and v not in (None, "", [], {})}  # that one: facts
    if rest:
        out.append("<table>")
        for k, v in rest.items():
            v = _num(v, 4) if isinstance(v, float) else (json.dumps(v)[:300] if isinstance(v, (dict, list)) else v)
            out.append(f"<tr><td>{html.escape(str(k))}&nbsp;&nbsp;</td><td>{html.escape(str(v))}</td></tr>")
        out.append("</table>")
    return "".join(out)


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
    pop = card.get("population") if isinstance(card.get("population"), dict) else {}
    ages = trained_ages(pop)
    if ages:
        facts.append(("Trained on ages", f"{ages} (years)"))
    if meta.get("temperature") not in (None, ""):
        why_not = choice.temperature_not_fitted
        facts.append(("Calibration temperature", _num(meta.get("temperature"))
                      + (f" (none fitted: {why_not}; the percentages are the network's own, often overconfident)"
                         if why_not else "")))
    out.append("<table>" + "".join(f"<tr><td><b>{esc(k)}</b>&nbsp;&nbsp;</td><td>{esc(v)}</td></tr>" for k, v in facts if v not in (None, "")) + "</table>")
    for title, key in (("Description", "description"), ("Intended use", "intended_use"), ("Training data", "data"),
                       ("Limits", "limits"), ("Licence", "licence")):
        if card.get(key):
            out.append(f"<h3>{title}</h3><p>{esc(card[key])}</p>")
    metrics = training.get("metrics") or {}
    if metrics:
        out.append(_metrics_html(metrics, list(choice.classes)))
    if card.get("training_notes"):
        out.append(f"<h3>How it was trained</h3><p>{esc(card['training_notes'])}</p>")
    prov = [(k, training.get(k)) for k in ("epochs", "best_epoch", "date", "train_seconds", "data_fingerprint",
                                           "hardware", "command") if training.get(k)]
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
