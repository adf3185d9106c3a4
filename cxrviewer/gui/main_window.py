"""The review window: worklist | film | reading panel, wired to the background job system.

The window holds only view state. Loading, model loading, inference and explanations are jobs on named
channels of :class:`~cxrviewer.gui.jobs.JobRunner` ("film", "model", "predict", "explain", "batch"); a new
film cancels the film-dependent channels, and every result is also checked against the film it was
computed for, so no result can land on the wrong film.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDockWidget,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cxrviewer import DISCLAIMER, paths
from cxrviewer.film.dicomdir import looks_like_dicomdir
from cxrviewer.gui import viewmath as vm
from cxrviewer.gui.backend import Backend, ModelChoice, PredictionResult, is_supported
from cxrviewer.gui.heatmap_controls import HeatmapControls
from cxrviewer.gui.image_view import ImageView
from cxrviewer.gui.jobs import JobRunner
from cxrviewer.gui.model_panel import ModelCardDialog, ModelSelector
from cxrviewer.gui.probability_panel import ProbabilityPanel
from cxrviewer.gui.settings import NOTICE as SETTINGS_NOTICE, make_settings, read_int
from cxrviewer.gui.tag_panel import TagPanel, header_text
from cxrviewer.gui.worklist import Worklist

log = logging.getLogger(__name__)

FILM_FILTER = ("Films (*.dcm *.dicom *.dic *.png *.jpg *.jpeg *.tif *.tiff *.bmp DICOMDIR);;"
               "DICOMDIR of a CD/DVD (DICOMDIR);;All files (*)")
MODEL_FILTER = "CXR Viewer models (*.safetensors);;All files (*)"
_DEVICE_SETTING = re.compile(r"auto|gpu|(cpu|mps|cuda)(:\d+)?")  # what cxrviewer.device accepts


class Banner(QFrame):
    """A non-modal message strip above the film: errors must be seen but must not block reading."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.film: Optional[str] = None
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 4, 4, 4)
        lay.addWidget(self.label, 1)
        lay.addWidget(close)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_message(self, text: str, kind: str = "error", timeout_ms: int = 20000,
                     film: Optional[str] = None) -> None:
        """``film``: the film the message is about; opening another film dismisses it (see ``leave_film``)."""
        self.film = film
        self.setProperty("kind", kind)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self.show()
        if timeout_ms:
            self._timer.start(timeout_ms)

    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""

    def leave_film(self, path: str) -> None:
        """The reader moved on to ``path``: "Cannot open bomb.png" above the next film in the worklist would
        read as being about that film. Messages about no film (a model, an export) stay."""
        if self.film is not None and self.film != path:
            self.hide()


class EmptyState(QWidget):
    openRequested = Signal()
    sampleRequested = Signal()

    def __init__(self, has_sample: bool, parent=None):
        super().__init__(parent)
        title = QLabel("No film open")
        title.setObjectName("emptyTitle")
        title.setAlignment(Qt.AlignCenter)
        text = QLabel(
            "Open a chest film with File ▸ Open (Ctrl+O), or drag DICOM / PNG / JPEG files or a whole folder "
            "onto this window. A folder opens as a worklist."
        )
        text.setWordWrap(True)
        text.setAlignment(Qt.AlignCenter)
        text.setObjectName("hint")
        open_btn = QPushButton("Open film…")
        open_btn.clicked.connect(self.openRequested)
        self.sample_btn = QPushButton("Open the sample film")
        self.sample_btn.clicked.connect(self.sampleRequested)
        self.sample_btn.setVisible(has_sample)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(open_btn)
        row.addWidget(self.sample_btn)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addStretch(2)
        lay.addWidget(title)
        lay.addSpacing(8)
        text.setMinimumWidth(160)
        text.setMaximumWidth(520)
        text.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.MinimumExpanding)
        text_row = QHBoxLayout()
        text_row.addStretch(1)
        text_row.addWidget(text, 10)
        text_row.addStretch(1)
        lay.addLayout(text_row)
        lay.addSpacing(16)
        lay.addLayout(row)
        lay.addStretch(3)


def app_icon_path():
    """The SVG icon, or its PNG rendering where Qt's SVG plugin is missing."""
    from PySide6.QtGui import QImageReader

    svg = paths.icons_dir() / "cxrviewer.svg"
    if svg.exists() and b"svg" in [bytes(f) for f in QImageReader.supportedImageFormats()]:
        return svg
    png = paths.icons_dir() / "cxrviewer.png"
    return png if png.exists() else None


def sample_films() -> list:
    d = paths.samples_dir()
    if not d.is_dir():
        return []
    return [p for p in sorted(d.rglob("*")) if p.is_file() and is_supported(p) and not p.name.startswith(".")]


def overlay_rgba(expl, shape, request) -> "np.ndarray":
    """The explanation as its exports draw it, on the preview grid ``shape``: one colouring and one
    outlining for the screen, the PNG and the report. Maps come scaled by their producers (Grad-CAM by
    its peak, attention by its range), so a map weak everywhere stays pale rather than being stretched."""
    from cxrviewer.explain.overlay import explanation_rgba

    return explanation_rgba(expl, _overlay_settings(request), shape)


def _overlay_settings(request):
    from cxrviewer.explain.overlay import OverlaySettings

    return OverlaySettings(colormap=request.colormap, opacity=request.opacity, threshold=request.threshold)


def _export_overlay_job(ctx, path, gray, expl, request):  # worker thread
    from cxrviewer.explain import render_overlay, save_overlay_png

    return str(save_overlay_png(path, render_overlay(expl, gray, _overlay_settings(request))))


def _export_report_job(ctx, path, film, gray, expl, request, prediction, model_name, version, include_ids):
    from cxrviewer.explain import render_overlay, save_report
    from cxrviewer.explain.types import outline_floor

    overlay = render_overlay(expl, gray, _overlay_settings(request))
    return str(save_report(path, gray, overlay, expl, prediction, model_name=model_name, model_version=version,
                           film=film, include_identifiers=include_ids, outline_floor=outline_floor(request.threshold)))


class ReportDialog(QDialog):
    """Where to save the report, and whether identifiers go in it (off unless the reader ticks it)."""

    def __init__(self, default_path, parent=None):
        super().__init__(parent)
        from PySide6.QtWidgets import QCheckBox, QDialogButtonBox, QLineEdit

        self.setWindowTitle("Export report")
        self.edit = QLineEdit(str(default_path))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.include_ids = QCheckBox("Include patient identifiers (name, ID, birth date)")
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.edit, 1)
        row.addWidget(browse)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("One page: the film, the heatmap, the probabilities, the model, the date and the "
                             "disclaimer. PDF or PNG, by the file's extension."))
        lay.addLayout(row)
        lay.addWidget(self.include_ids)
        lay.addWidget(buttons)
        self.resize(520, 160)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", self.edit.text(), "PDF (*.pdf);;PNG (*.png)")
        if path:
            self.edit.setText(path)

    def path(self) -> str:
        return self.edit.text().strip()


class MainWindow(QMainWindow):
    settled = Signal()  # nothing is being computed any more (used by --screenshot and tests)

    def __init__(self, backend: Optional[Backend] = None, device: Optional[str] = None,
                 persist_settings: bool = True, parent=None):
        super().__init__(parent)
        self.backend = backend or Backend()
        self.runner = JobRunner(self, max_threads=2)
        self.settings = make_settings()
        self.persist = persist_settings
        self._lime_settings = None  # see lime_settings
        saved = self.settings.value("device", "", str)
        if saved and not _DEVICE_SETTING.fullmatch(saved.strip().lower()):
            saved = ""  # a damaged or hand-edited value must not make every model load fail
        self.device_pref = device or (saved if saved and saved != "auto" else None)

        # state
        self.current_path: Optional[str] = None
        self.film = None
        self.film_error: Optional[str] = None
        self.choices: list = []
        self.model: Optional[ModelChoice] = None
        self.predictor = None
        self.predictor_key: Optional[str] = None
        self.model_error: Optional[str] = None
        self.prediction: Optional[PredictionResult] = None
        self.predictions: dict = {}  # (model key, path) -> PredictionResult
        self.heat_cache: dict = {}  # _heat_key -> (explanation, its preview grid's shape)
        self.heat: Optional[tuple] = None
        self.last_method = "attention"
        self.errors: list = []  # messages shown this session (for tests and --screenshot)
        self._shown = False
        self.torch_imported_at_first_show: Optional[bool] = None
        self._model_pending = False
        self._discover_pending = False
        self._model_arg: Optional[str] = None
        self.heatmap_if_model: Optional[str] = None  # --screenshot shows a heatmap when a model is there
        self._model_view_pending = False
        self._warmed = None  # the predictor whose explanation path was prepared
        self._train_dialog = None  # made on first use, then kept so a running training stays watched

        self.setWindowTitle("CXR Viewer")
        icon_path = app_icon_path()
        if icon_path is not None:
            self.setWindowIcon(QIcon(str(icon_path)))
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self._build_central()
        self._build_docks()
        self._build_status()
        self._build_actions()
        self.runner.busyChanged.connect(self._busy_changed)
        self.runner.jobFailed.connect(lambda ch, msg: self.show_error(msg))
        self._restore_settings()
        if self.settings.property(SETTINGS_NOTICE):
            self.show_error(str(self.settings.property(SETTINGS_NOTICE)), kind="info")
        self.refresh_models()

    # ============================================================================== construction
    def _build_central(self) -> None:
        self.view = ImageView()
        self.view.cursorMoved.connect(self._cursor_moved)
        self.view.windowChanged.connect(self._window_changed)
        self.view.viewChanged.connect(self._view_changed)
        self.empty = EmptyState(bool(sample_films()))
        self.empty.openRequested.connect(self.open_dialog)
        self.empty.sampleRequested.connect(self.open_sample)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.view)
        self.header = QLabel("")
        self.header.setObjectName("filmHeader")
        self.header.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.film_name = QLabel("")
        self.film_name.setObjectName("filmName")
        self.banner = Banner()
        self.disclaimer = QLabel("⚕ " + DISCLAIMER)
        self.disclaimer.setObjectName("disclaimer")
        self.disclaimer.setWordWrap(True)
        self.disclaimer.setAlignment(Qt.AlignCenter)
        self.header.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.film_notes = QLabel("")
        self.film_notes.setObjectName("notice")
        self.film_notes.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.film_notes.hide()
        top = QHBoxLayout()
        top.setContentsMargins(10, 6, 10, 4)
        top.addWidget(self.film_name)
        top.addSpacing(14)
        top.addWidget(self.header, 1)
        notes_row = QHBoxLayout()
        notes_row.setContentsMargins(10, 0, 10, 4)
        notes_row.addWidget(self.film_notes, 1)
        central = QWidget()
        central.setObjectName("central")
        lay = QVBoxLayout(central)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(top)
        lay.addLayout(notes_row)
        lay.addWidget(self.banner)
        lay.addWidget(self.stack, 1)
        lay.addWidget(self.disclaimer)
        self.setCentralWidget(central)

    def _build_docks(self) -> None:
        self.worklist = Worklist()
        self.worklist.filmSelected.connect(self.open_film)
        self.worklist_dock = QDockWidget("Worklist", self)
        self.worklist_dock.setObjectName("worklistDock")
        self.worklist_dock.setWidget(self.worklist)
        self.worklist.setMinimumWidth(190)
        self.addDockWidget(Qt.LeftDockWidgetArea, self.worklist_dock)

        # reading panel: model, probabilities, heatmap
        self.selector = ModelSelector()
        self.selector.modelChosen.connect(self.choose_model)
        self.selector.openRequested.connect(self.open_model_dialog)
        self.card_btn = QPushButton("Model card")
        self.card_btn.setToolTip("What this model is, the data it learnt from, its metrics and limits (Ctrl+K)")
        self.card_btn.clicked.connect(self.show_model_card)
        self.model_info = QLabel("")
        self.model_info.setObjectName("hint")
        self.model_info.setWordWrap(True)
        mbox = QGroupBox("Model")
        ml = QVBoxLayout(mbox)
        ml.addWidget(self.selector)
        ml.addWidget(self.model_info)
        row = QHBoxLayout()
        row.addWidget(self.card_btn)
        row.addStretch(1)
        ml.addLayout(row)

        self.probs = ProbabilityPanel()
        self.probs.classClicked.connect(self._class_clicked)
        self.notices = QLabel("")
        self.notices.setObjectName("notice")
        self.notices.setWordWrap(True)
        self.notices.hide()
        pbox = QGroupBox("Model reading")
        pl = QVBoxLayout(pbox)
        pl.addWidget(self.probs)
        pl.addWidget(self.notices)

        self.heatmap = HeatmapControls()
        self.heatmap.requestChanged.connect(self._heatmap_request_changed)
        self.heatmap.cancelRequested.connect(self.cancel_heatmap)
        hbox = QGroupBox("Heatmap")
        QVBoxLayout(hbox).addWidget(self.heatmap)

        panel = QWidget()
        panel.setObjectName("readingPanel")
        pv = QVBoxLayout(panel)
        pv.setContentsMargins(8, 8, 8, 8)
        pv.addWidget(mbox)
        pv.addWidget(pbox)
        pv.addWidget(hbox)
        pv.addStretch(1)
        side_disc = QLabel(DISCLAIMER)
        side_disc.setObjectName("hint")
        side_disc.setWordWrap(True)
        pv.addWidget(side_disc)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(panel)
        scroll.setMinimumWidth(290)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.reading_dock = QDockWidget("Reading", self)
        self.reading_dock.setObjectName("readingDock")
        self.reading_dock.setWidget(scroll)
        self.addDockWidget(Qt.RightDockWidgetArea, self.reading_dock)

        self.tags = TagPanel()
        self.tags_dock = QDockWidget("DICOM tags", self)
        self.tags_dock.setObjectName("tagsDock")
        self.tags_dock.setWidget(self.tags)
        self.addDockWidget(Qt.RightDockWidgetArea, self.tags_dock)
        self.tabifyDockWidget(self.reading_dock, self.tags_dock)
        self.reading_dock.raise_()
        self.resizeDocks([self.worklist_dock, self.reading_dock], [260, 330], Qt.Horizontal)

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.pixel_label = QLabel("")
        self.window_label = QLabel("")
        self.zoom_label = QLabel("")
        self.model_label = QLabel("Model: none")
        self.device_label = QLabel("")
        self.busy_label = QLabel("")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(90)
        self.busy.setMaximumHeight(12)
        self.busy.setTextVisible(False)
        self.busy.hide()
        for w in (self.pixel_label, self.window_label, self.zoom_label, self.model_label, self.device_label):
            w.setObjectName("statusField")
        sb.addWidget(self.pixel_label, 1)
        for w in (self.window_label, self.zoom_label, self.model_label, self.device_label, self.busy_label, self.busy):
            sb.addPermanentWidget(w)
        self._update_device_label()

    def _act(self, menu, text, slot, keys=(), tip="", checkable=False):
        a = QAction(text, self)
        if keys:
            a.setShortcuts([QKeySequence(k) for k in keys])
            a.setShortcutContext(Qt.WindowShortcut)
        if tip:
            a.setStatusTip(tip)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        if menu is not None:
            menu.addAction(a)
        self.addAction(a)
        self.shortcut_rows.append((menu.title().replace("&", "") if menu else "", text.replace("&", "").replace("…", ""),
                                   ", ".join(keys)))
        return a

    def _build_actions(self) -> None:
        self.shortcut_rows: list = []
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self._act(f, "&Open films…", self.open_dialog, ["Ctrl+O"])
        self._act(f, "Open &folder…", self.open_folder_dialog, ["Ctrl+Shift+O"])
        self._act(f, "Open sample film", self.open_sample)
        self._build_recent_menu(f)  # issue 7: File > Open Recent
        f.addSeparator()
        self._act(f, "Open &model…", self.open_model_dialog, ["Ctrl+M"])
        f.addSeparator()
        self._act(f, "Save view as PNG…", self.save_view_dialog, ["Ctrl+Shift+S"])
        self._act(f, "Export heatmap overlay…", self.export_overlay_dialog, ["Ctrl+E"])
        self._act(f, "Export report…", self.export_report_dialog, ["Ctrl+Shift+E"])
        f.addSeparator()
        self._act(f, "&Quit", self.close, ["Ctrl+Q"])

        v = mb.addMenu("&View")
        self._act(v, "&Fit to window", self.view.fit, ["F"])
        self._act(v, "Actual pixels (1:1)", self.view.one_to_one, ["1"])
        self._act(v, "Zoom in", lambda: self.view.zoom_by(1.25), ["+", "="])
        self._act(v, "Zoom out", lambda: self.view.zoom_by(0.8), ["-"])
        v.addSeparator()
        self._act(v, "Window: file default", lambda: self.view.apply_preset("default"), ["D"])
        self._act(v, "Window: full range", lambda: self.view.apply_preset("full"), ["A"])
        self._act(v, "Window: lung", lambda: self.view.apply_preset("lung"), ["L"])
        self._act(v, "Window: bone", lambda: self.view.apply_preset("bone"), ["B"])
        self._act(v, "&Invert", self.view.toggle_invert, ["I"])
        v.addSeparator()
        self._act(v, "Rotate clockwise", lambda: self.view.rotate(True), ["]", "Ctrl+R"])
        self._act(v, "Rotate counter-clockwise", lambda: self.view.rotate(False), ["[", "Ctrl+Shift+R"])
        self._act(v, "Flip horizontal", lambda: self.view.flip(True), ["H"])
        self._act(v, "Flip vertical", lambda: self.view.flip(False), ["V"])
        self._act(v, "&Reset view", self.view.reset, ["R", "Esc"])
        v.addSeparator()
        self._act(v, "Heatmap on/off", self.toggle_heatmap, ["O"])
        self._act(v, "Next heatmap method", self.heatmap.cycle_method, ["Shift+O"])
        self._act(v, "Explain the next class", lambda: self.probs.select_step(+1), ["C"])
        self._act(v, "Explain the previous class", lambda: self.probs.select_step(-1), ["Shift+C"])
        self.side_action = self._act(v, "Side by side (film | film + heatmap)", lambda *_: None, ["S"],
                                     checkable=True)
        self.side_action.toggled.connect(self._side_by_side)
        self.heatmap.side.toggled.connect(self.side_action.setChecked)
        self.side_action.toggled.connect(self.heatmap.side.setChecked)
        self._act(v, "LIME settings…", self.open_lime_settings)
        v.addSeparator()
        v.addAction(self.worklist_dock.toggleViewAction())
        v.addAction(self.reading_dock.toggleViewAction())
        v.addAction(self.tags_dock.toggleViewAction())
        self._act(v, "DICOM tags", self.show_tags, ["T"])

        w = mb.addMenu("&Worklist")
        self._act(w, "Next film", lambda: self.worklist.step(+1), ["PgDown", "Ctrl+Down"])
        self._act(w, "Previous film", lambda: self.worklist.step(-1), ["PgUp", "Ctrl+Up"])
        self._act(w, "Sort by name", lambda: self.worklist.set_sort("name"), ["Ctrl+1"])
        self._act(w, "Sort by suspicion", lambda: self.worklist.set_sort("suspicion"), ["Ctrl+2"])
        self._act(w, "Sort by top probability", lambda: self.worklist.set_sort("top"), ["Ctrl+3"])
        self.shortcut_rows.append(("Worklist", "Next / previous (list focused)", "J / K, Down / Up"))

        m = mb.addMenu("&Model")
        self._act(m, "Model card", self.show_model_card, ["Ctrl+K"])
        self._act(m, "Run model again", self.rerun_model, ["Ctrl+Return"])
        self._act(m, "Refresh model list", self.refresh_models)
        dm = m.addMenu("Device")
        from PySide6.QtGui import QActionGroup

        self.device_group = QActionGroup(self)
        for dev in ("auto", "cpu", "cuda", "mps"):
            a = QAction({"auto": "Automatic (CUDA, MPS, else CPU)", "cpu": "CPU", "cuda": "CUDA GPU",
                         "mps": "Apple MPS"}[dev], self, checkable=True)
            a.setData(dev)
            a.setChecked((self.device_pref or "auto") == dev)
            self.device_group.addAction(a)
            dm.addAction(a)
        self.device_group.triggered.connect(lambda a: self.set_device(a.data()))

        t = mb.addMenu("&Tools")
        self._act(t, "Train model…", self.open_train_dialog, ["Ctrl+T"])

        h = mb.addMenu("&Help")
        self._act(h, "Keyboard shortcuts", self.show_shortcuts, ["F1", "?"])
        self._act(h, "About CXR Viewer", self.show_about)
        for row in (("Mouse", "Zoom around the cursor", "Wheel"), ("Mouse", "Pan", "Left drag"),
                    ("Mouse", "Window / level (width ↔, level ↕)", "Right drag")):
            self.shortcut_rows.append(row)

    # ================================================================================ settings
    def _restore_settings(self) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            self.resize(1440, 900)
        state = s.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        method = s.value("heatmap/method", "", str)
        if not method:  # first run: show where the model looked as soon as there is a model and a film
            self.heatmap_if_model = "attention"
        opacity = read_int(s, "heatmap/opacity", 45, 0, 100)
        cmap = s.value("heatmap/colormap", "jet", str)
        self.heatmap.blockSignals(True)
        self.heatmap.set_method(method if method in vm.HEATMAP_METHODS else "none")
        self.heatmap.opacity.setValue(int(opacity))
        idx = self.heatmap.cmap.findData(cmap)
        if idx >= 0:
            self.heatmap.cmap.setCurrentIndex(idx)
        self.heatmap.blockSignals(False)
        self.worklist.set_sort(s.value("worklist/sort", "name", str))

    def save_settings(self) -> None:
        if not self.persist:
            return
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        if self.model is not None:
            s.setValue("model", self.model.key)
        r = self.heatmap.request
        s.setValue("heatmap/method", r.method)
        s.setValue("heatmap/opacity", int(round(r.opacity * 100)))
        s.setValue("heatmap/colormap", r.colormap)
        s.setValue("worklist/sort", self.worklist.sort_key)
        s.sync()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._shown:
            QTimer.singleShot(0, self._after_first_show)

    def _after_first_show(self) -> None:
        if self._shown:
            return
        self._shown = True
        # what start-up timing reports: the slow work below (model discovery imports torch on a worker) starts
        # only now, and on a fast machine may finish importing before the caller's first processEvents returns
        self.torch_imported_at_first_show = "torch" in sys.modules
        if self._discover_pending:
            self.refresh_models()
        if self._model_pending and self.model is not None:
            self._load_model(self.model)

    def start_background_work(self) -> None:
        """Start what waits for the window to be on screen now (``run`` calls this after the first paint)."""
        if not self._shown:
            self._after_first_show()

    def is_settled(self) -> bool:
        return (self.runner.is_idle() and not self._discover_pending
                and not (self._model_pending and self.model is not None))

    def closeEvent(self, event) -> None:
        self.save_settings()
        self.runner.shutdown(2000)
        super().closeEvent(event)

    # ============================================================================ opening films
    def open_dialog(self) -> None:
        start = self.settings.value("lastFolder", str(Path.home()), str)
        files, _ = QFileDialog.getOpenFileNames(self, "Open films", start, FILM_FILTER)
        if files:
            self.open_paths(files)

    def open_folder_dialog(self) -> None:
        start = self.settings.value("lastFolder", str(Path.home()), str)
        folder = QFileDialog.getExistingDirectory(self, "Open a folder as a worklist", start)
        if folder:
            self.open_paths([folder])

    def open_sample(self) -> None:
        films = sample_films()
        if films:  # all of them as a worklist: the reader sees the model's reading across several films
            self.open_paths([str(f) for f in films])
        else:
            self.show_error("No sample film is bundled with this installation.")

    def open_paths(self, items) -> None:
        """Files and folders from the dialog, the command line or a drop; folders expand recursively.

        Listing runs on a worker: a folder on a slow network share must not freeze the window."""
        items = [Path(p).expanduser().absolute() for p in items]
        if not items:
            return
        self.recent.add([p for p in items if p.exists()])  # issue 7: Open Recent
        if any(looks_like_dicomdir(p) for p in items):  # issue 7: a DICOMDIR opens the images it lists
            self._open_with_dicomdir(items)
            return
        if self.persist:
            first = items[0]
            self.settings.setValue("lastFolder", str(first if first.is_dir() else first.parent))
        folders = [p for p in items if p.is_dir()]
        title = folders[0].name if len(folders) == 1 and len(items) == 1 else "Opened films"
        if not folders:
            self._open_list([str(p) for p in items], items, title)
            return
        self.runner.submit("list", self._list_job, items, label="Listing films",
                           on_done=lambda films: self._open_list(films, items, title),
                           on_error=lambda msg, exc: self.show_error(f"Cannot list the folder: {msg}"))

    def _list_job(self, ctx, items) -> list:  # worker thread
        films: list = []
        for p in items:
            ctx.check()
            if p.is_dir():
                films.extend(self.backend.list_folder(ctx, p))
            else:
                films.append(str(p))  # bad files are kept: opening them says why they fail
        return list(dict.fromkeys(films))  # unique, in order

    def _open_list(self, films: list, items: list, title: str) -> None:
        unique = list(dict.fromkeys(films))
        if not unique:
            missing = [str(p) for p in items if not p.exists()]
            folders = [p for p in items if p.is_dir()]
            self.show_error(f"Cannot open {Path(missing[0]).name}: no such file or folder" if missing
                            else "No films found in " + ", ".join(p.name for p in folders))
            return
        self.worklist.set_films(unique, title)
        self.heat_cache.clear()
        if len(unique) > 1 or any(p.is_dir() for p in items):
            self.worklist_dock.setVisible(True)
        self.worklist.select_path(unique[0], emit=False)
        self.open_film(unique[0])
        self._start_batch()

    def open_film(self, path: str) -> None:
        path = str(path)
        if path == self.current_path and self.film is not None:
            return
        self.current_path = path
        self.heatmap.blockSignals(True)
        self.heatmap.set_target_class(None)  # each film's explanation starts with its own top class
        self.heatmap.blockSignals(False)
        self.runner.cancel("predict")
        self.runner.cancel("explain")
        self.prediction = None
        self.heat = None
        self._release_film_grids(path)
        self.film_error = None
        self.banner.leave_film(path)
        # never show the previous film under the new film's name, even for the moment it takes to load
        self.film = None
        self.view.clear()
        self.view.empty_text = f"Loading {Path(path).name}…"
        self.stack.setCurrentWidget(self.view)
        self.tags.set_tags([])
        self.film_notes.hide()
        self.setWindowTitle(f"{Path(path).name} — CXR Viewer")
        self.film_name.setText(Path(path).name)
        self.header.setText("Loading…")
        if self.model is not None:
            self.probs.set_busy(self.model.label(), "Waiting for the film…")
        self.notices.hide()
        self.worklist.select_path(path, emit=False)
        self.runner.submit("film", self.backend.load_film, path, label=f"Opening {Path(path).name}",
                           on_done=lambda film, p=path: self._film_loaded(p, film),
                           on_error=lambda msg, exc, p=path: self._film_failed(p, msg))

    def _film_loaded(self, path: str, film) -> None:
        if path != self.current_path:
            return
        self.film = film
        self.view.set_film(film)
        self.stack.setCurrentWidget(self.view)
        self.header.setText(header_text(film, with_notes=False))
        self.header.setToolTip(header_text(film))
        notes = "; ".join(str(n) for n in (film.notes or []))
        self.film_notes.setText(("Note: " + notes) if notes else "")
        self.film_notes.setToolTip(notes)
        self.film_notes.setVisible(bool(notes))
        self.tags.set_tags(film.tags)
        self.tags_dock.setWindowTitle("DICOM tags" if film.kind == "dicom" else "File information")
        self._zoom_label()
        cached = self.predictions.get((self.model.key, path)) if self.model else None
        if cached is not None:
            self._show_prediction(cached)
        else:
            self.request_prediction()

    def _film_failed(self, path: str, msg: str) -> None:
        if path != self.current_path:
            return
        self.film = None
        self.film_error = msg
        self.view.clear()
        self.stack.setCurrentWidget(self.view)
        self.view.empty_text = msg
        self.header.setText("")
        self.film_notes.hide()
        self.tags.set_tags([])
        self.worklist.set_error(path, msg)
        if self.model is not None:
            self.probs.set_idle(self.model.label(), "No film to analyse")
        self.show_error(msg, film=path)

    # ============================================================================== models
    def refresh_models(self, model_arg: Optional[str] = None) -> None:
        """Look for models on a worker: reading checkpoint headers validates the architecture, which
        imports torch, so it must neither delay the window nor freeze it."""
        if model_arg is not None:
            self._model_arg = model_arg
        if not self._shown:
            self._discover_pending = True
            return
        self._discover_pending = False
        if self.model is None:
            self.probs.set_idle("", "Looking for models…")
        self.runner.submit("discover", self._discover_job, self._model_arg, label="Looking for models",
                           on_done=self._models_discovered,
                           on_error=lambda msg, exc: self._model_failed(f"Cannot list the models: {msg}"))

    def _discover_job(self, ctx, model_arg):  # worker thread
        choices = self.backend.discover()
        default = self.backend.default_key(choices)
        arg_choice, arg_error = None, None
        if model_arg:
            arg_choice = next((c for c in choices if model_arg in (c.key, c.display_name)), None)
            if arg_choice is None:
                try:
                    arg_choice = self.backend.find(model_arg)
                except Exception as exc:  # noqa: BLE001  (LookupError, CheckpointError: a message)
                    arg_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return choices, default, arg_choice, arg_error

    def _models_discovered(self, result) -> None:
        choices, default, arg_choice, arg_error = result
        self.choices = list(choices)
        problems = self.backend.problems
        hint = f"{len(problems)} model file(s) could not be used (hover for why)" if problems else ""
        why = [f"{Path(str(p)).name}: {m}" for p, m in problems]
        self.selector.set_problems("\n".join(["Not usable:", *why]) if why else "")
        if arg_choice is not None and all(c.key != arg_choice.key for c in self.choices):
            self.choices.append(arg_choice)
        if self.model is not None and all(c.key != self.model.key for c in self.choices):
            self.choices.append(self.model)
        if arg_error:
            self.selector.set_choices(self.choices, None)
            self._model_failed(f"Cannot use model {Path(str(self._model_arg)).name}: {arg_error}")
            self._model_arg = None
            return
        if arg_choice is not None:
            wanted = arg_choice.key
            self._model_arg = None
        elif self.model is not None:
            wanted = self.model.key
        else:
            saved = self.settings.value("model", "", str)
            wanted = saved if any(c.key == saved for c in self.choices) else default
        self.selector.set_choices(self.choices, wanted)
        key = self.selector.current_key()
        if key is None:
            self.model = None
            self.probs.set_no_model("No model installed. Use File ▸ Open model… (Ctrl+M) to add one, or "
                                    "Tools ▸ Train model… (Ctrl+T) to train one on your own films.")
            self.model_label.setText("Model: none")
            self.card_btn.setEnabled(False)
            self.model_info.setText(hint)
            return
        if self.model is None or self.model.key != key:
            self.choose_model(key)
        if hint:
            self.model_info.setText((self.model_info.text() + "\n" + hint).strip())
        if self.heatmap_if_model and self.heatmap.request.method == "none":
            self.heatmap.set_method(self.heatmap_if_model)
            # "attention" here means the model's own choice, known once it has predicted (_show_prediction)
            self._model_view_pending = self.heatmap_if_model == "attention"
            self.heatmap_if_model = None

    def use_model_argument(self, name_or_path: str) -> None:
        """``--model``: an installed model's name, or a checkpoint file used where it is."""
        self.refresh_models(model_arg=str(name_or_path))

    def choose_model(self, key: str) -> None:
        choice = next((c for c in self.choices if c.key == key), None)
        if choice is None:
            return
        self.model = choice
        self.model_error = None
        if self.persist:
            self.settings.setValue("model", choice.key)
        self.predictor, self.predictor_key = None, None
        self.prediction = None
        self.heat = None
        self.view.set_overlay(None)
        self.worklist.clear_predictions()
        self.card_btn.setEnabled(True)
        self.model_label.setText(f"Model: {choice.display_name}")
        where = {"bundled": "bundled with CXR Viewer", "user": "installed in your model folder",
                 "opened": "opened from a file"}.get(choice.source, choice.source)
        self.model_info.setText(f"Classes: {', '.join(choice.classes)}\nSource: {where}")
        self.model_info.setToolTip(choice.tooltip())
        self.probs.set_busy(choice.label(), "Loading the model…")
        self.runner.cancel("predict")
        self.runner.cancel("explain")
        self.runner.cancel("batch")
        self.runner.cancel("warm")
        self._warmed = None  # a warm-up cut short leaves no copy: coming back warms again (cheap if built)
        if not self._shown:
            # loading a model imports torch: only once the window is on screen (and painted), or the
            # import would compete with building the window and delay it by seconds
            self._model_pending = True
            return
        self._load_model(choice)

    def _load_model(self, choice: ModelChoice) -> None:
        key = choice.key
        self._model_pending = False
        self.runner.submit("model", self.backend.load_predictor, choice, self.device_pref,
                           label=f"Loading {choice.display_name}",
                           on_done=lambda res, k=key: self._model_loaded(k, res),
                           on_error=lambda msg, exc: self._model_failed(f"Cannot load model {choice.display_name}: {msg}"))

    def _model_loaded(self, key: str, result) -> None:
        if self.model is None or self.model.key != key:
            return
        self.predictor, device_text = result
        self.predictor_key = key
        self.device_label.setText(f"Device: {device_text}")
        notices = self.backend.device_notices
        if notices:
            self.show_error("; ".join(str(n) for n in notices), kind="info")
        if self.film is not None:
            self.request_prediction()
        elif self.film_error is not None:  # the film failed while the model loaded: not "Loading the model…"
            self.probs.set_idle(self.model.label(), "No film to analyse")
        elif self.current_path is None:
            self.probs.set_idle(self.model.label())
        self._start_batch()

    def _model_failed(self, msg: str) -> None:
        self.model_error = msg
        self.predictor = None
        self.probs.set_error(msg)
        self.show_error(msg)

    def open_train_dialog(self) -> None:
        """The trainer's dialog (training runs in its own process); a finished model joins the list."""
        try:
            from cxrviewer.gui.train_dialog import TrainDialog
        except ImportError as exc:
            self.show_error(f"The trainer is not available in this installation ({exc}).")
            return
        dlg = self._train_dialog
        if dlg is None:
            dlg = TrainDialog(self)
            dlg.model_installed.connect(lambda _path: self.refresh_models())
            self._train_dialog = dlg
        dlg.show()
        dlg.raise_()

    def set_device(self, dev: str) -> None:
        """Where models run; remembered, and the current model is reloaded there (cached per device)."""
        self.device_pref = None if dev in (None, "", "auto") else dev
        if self.persist:
            self.settings.setValue("device", dev or "auto")
        self._update_device_label()
        if self.model is not None:
            self.choose_model(self.model.key)

    def open_model_dialog(self) -> None:
        start = self.settings.value("lastModelFolder", str(Path.home()), str)
        path, _ = QFileDialog.getOpenFileName(self, "Open model", start, MODEL_FILTER)
        if path:
            self.open_model_file(path)

    def open_model_file(self, path: str) -> None:
        """Install a checkpoint into the user's model folder (checked by model_store) and select it.

        On a worker: checking the file reads and validates its header, which imports torch."""
        if self.persist:
            self.settings.setValue("lastModelFolder", str(Path(path).parent))
        name = Path(path).name
        self.runner.submit("install", lambda ctx, p: self.backend.install(p), str(path), label=f"Installing {name}",
                           on_done=self._model_installed,
                           on_error=lambda msg, exc: self.show_error(f"Cannot open model {name}: {msg}"))

    def _model_installed(self, choice: ModelChoice) -> None:
        self.choices = [c for c in self.choices if c.key != choice.key] + [choice]
        self.selector.set_choices(self.choices, choice.key)
        self.choose_model(choice.key)
        if choice.install_problem:
            self.show_error(f"Model {choice.display_name} is used from {Path(choice.path).name} where it is: it could "
                            f"not be copied into your model folder ({choice.install_problem}).", kind="info")
            return
        self.show_error(f"Model {choice.display_name} installed ({', '.join(choice.classes)}).", kind="info")

    def show_model_card(self) -> None:
        if self.model is None:
            self.show_error("No model selected.", kind="info")
            return
        ModelCardDialog(self.model, self).show()

    def rerun_model(self) -> None:
        if self.model is not None and self.current_path:
            self.predictions.pop((self.model.key, self.current_path), None)
            self.request_prediction()

    # ============================================================================= inference
    def request_prediction(self) -> None:
        if self.model is None or self.film is None:
            return
        if self.predictor is None or self.predictor_key != self.model.key:
            if self.model_error:
                self.probs.set_error(self.model_error)
            else:
                self.probs.set_busy(self.model.label(), "Loading the model…")
            return  # _model_loaded comes back here
        path, film, key = self.current_path, self.film, self.model.key
        self.probs.set_busy(self.model.label(), "Analysing…")
        self.runner.submit("predict", self.backend.predict, self.predictor, film, path, key,
                           label=f"Analysing {Path(path).name}",
                           on_done=self._prediction_done,
                           on_error=lambda msg, exc: self._prediction_failed(path, msg))

    def _prediction_done(self, result: PredictionResult) -> None:
        self.predictions[(result.model_key, result.film_key)] = result
        self._list_prediction(result)
        if result.film_key != self.current_path or self.model is None or result.model_key != self.model.key:
            return  # a result for a film or model that is no longer shown
        self._show_prediction(result)

    def _show_prediction(self, result: PredictionResult) -> None:
        self.prediction = result
        caution = self.model.calibration_caution()
        self.probs.set_probabilities(result.classes, result.probs, self.model.label(), result.ood,
                                     tuple(result.header_evidence or ()) + ((caution,) if caution else ()))
        if result.notices:
            self.notices.setText("\n".join(result.notices))
            self.notices.show()
        else:
            self.notices.hide()
        avail = {"attention"} if result.attention is not None else set()
        avail |= {"gradcam", "lime"}
        self.heatmap.set_available(avail)
        # first run: open on the map the model says is worth seeing first
        not_first = self._model_view_pending and result.first_heatmap != "attention"
        self._model_view_pending = False
        method = self.heatmap.request.method
        if method not in avail | {"none"} or (not_first and method == "attention"):
            self.heatmap.blockSignals(True)  # plain baselines have no attention of their own; all have Grad-CAM
            self.heatmap.set_method("gradcam")
            self.heatmap.blockSignals(False)
        self.request_heatmap()
        self._warm_explanations()

    def _warm_explanations(self) -> None:
        """Once per loaded model, after its first reading is on screen: prepare LIME's fast path in the
        background, so the reader's first explanation costs what the later ones do (see Backend.warm).
        A failure here is only logged: the explanation itself will build the path and say what went wrong."""
        predictor = self.predictor
        if predictor is None or predictor is self._warmed:
            return
        self._warmed = predictor
        self.runner.submit("warm", self.backend.warm, predictor, label="Preparing explanations",
                           on_error=lambda msg, exc: log.info("preparing explanations failed: %s", msg))

    def _prediction_failed(self, path: str, msg: str) -> None:
        if path != self.current_path:
            return
        self.probs.set_error(f"Analysis failed: {msg}")
        self.show_error(f"Analysis of {Path(path).name} failed: {msg}", film=path)

    def _start_batch(self) -> None:
        """Run the model over the whole worklist in the background so rows show their top class."""
        if self.predictor is None or self.model is None or self.worklist.count() < 2:
            return
        key = self.model.key
        todo = [p for p in self.worklist.paths() if (key, p) not in self.predictions]
        if not todo:
            return
        backend, predictor = self.backend, self.predictor

        def run(ctx):
            for p in todo:
                ctx.check()
                try:
                    film = backend.load_film(ctx, p)
                    ctx.check()
                    ctx.report(backend.predict(ctx, predictor, film, p, key))
                except Exception as exc:  # noqa: BLE001  (one bad film must not stop the worklist)
                    if type(exc).__name__ == "Cancelled":
                        raise
                    ctx.report((p, str(exc)))
            return len(todo)

        self.runner.submit("batch", run, label=f"Worklist: {len(todo)} films", on_progress=self._batch_progress)

    def _list_prediction(self, result: PredictionResult) -> None:
        self.worklist.set_prediction(result.film_key, result.classes, result.probs, result.top_class,
                                     result.ood.verdict if result.ood is not None else "")

    def _batch_progress(self, item) -> None:
        if isinstance(item, PredictionResult):
            if self.model is None or item.model_key != self.model.key:
                return
            self.predictions[(item.model_key, item.film_key)] = item
            self._list_prediction(item)
            if item.film_key == self.current_path and self.prediction is None and self.film is not None:
                self.runner.cancel("predict")
                self._show_prediction(item)
        else:
            path, msg = item
            self.worklist.set_error(path, msg)

    # ============================================================================== heatmaps
    def toggle_heatmap(self) -> None:
        r = self.heatmap.request
        if r.active:
            self.last_method = r.method
            self.heatmap.set_method("none")
        else:
            self.heatmap.set_method(self.last_method)

    def _class_clicked(self, name: str) -> None:
        self.heatmap.set_target_class(name)

    def _heatmap_request_changed(self, request) -> None:
        if self.heat is not None and self.heat[0] == self._heat_key(request):
            self._draw_overlay()
        else:
            self.request_heatmap()

    def _heat_key(self, request) -> Optional[tuple]:
        """What a map depends on: film, model, method, class, and LIME's settings for LIME (opacity and
        colours only restyle it)."""
        if self.prediction is None or self.model is None:
            return None
        classes = self.prediction.classes
        target = request.target_class if request.target_class in classes else self.prediction.top_class
        return (self.current_path, self.model.key, request.method, target,
                self.lime_settings.key() if request.method == "lime" else ())

    @property
    def lime_settings(self):
        """The reader's LIME settings (View > LIME settings…), read from the settings file on first use:
        they come from the explanation core, which start-up does not import before the window is shown."""
        if self._lime_settings is None:
            from cxrviewer.gui.lime_dialog import read_lime_settings

            self._lime_settings = read_lime_settings(self.settings)
        return self._lime_settings

    def open_lime_settings(self) -> None:
        from cxrviewer.gui.lime_dialog import LimeSettingsDialog

        dialog = LimeSettingsDialog(self.lime_settings, self)
        if dialog.exec() == LimeSettingsDialog.Accepted:
            self.set_lime_settings(dialog.value())

    def set_lime_settings(self, settings) -> None:
        """New LIME settings: kept, and the LIME map on screen recomputed with them (maps made with the
        old ones stay cached under their own key, so going back is instant)."""
        from cxrviewer.gui.lime_dialog import write_lime_settings

        if settings == self.lime_settings:
            return
        self._lime_settings = settings
        if self.persist:
            write_lime_settings(self.settings, settings)
        if self.heatmap.request.method == "lime":
            self.request_heatmap()

    def request_heatmap(self) -> None:
        r = self.heatmap.request
        self.runner.cancel("explain")
        self.heatmap.set_busy(False)
        if not r.active or self.prediction is None or self.film is None or self.predictor is None:
            self.heat = None
            self.view.set_overlay(None)
            self.heatmap.set_note("")
            return
        key = self._heat_key(r)
        target = key[3]
        if key in self.heat_cache:
            self.heat = (key,) + self.heat_cache[key]
            self._show_heat_note(key, self.heat_cache[key])
            self._draw_overlay()
            return
        label = vm.HEATMAP_LABELS[r.method]
        self.heatmap.set_note(f"Computing {label} for {target}…")
        path, film, pred = self.current_path, self.film, self.prediction
        self.heatmap.set_busy(True)
        self.runner.submit("explain", self.backend.explain, self.predictor, film, pred, r.method, target,
                           label=f"{label} map", cache_key=key,
                           settings=self.lime_settings if r.method == "lime" else None,
                           on_progress=lambda item, lb=label, t=target: self._heat_progress(lb, t, item),
                           on_done=lambda res, k=key, p=path: self._heat_done(k, p, res),
                           on_error=lambda msg, exc, p=path: self._heat_failed(p, msg))

    def _release_film_grids(self, keep_path: str) -> None:
        """Let the explanations of films the reader has left drop their film-grid copies (a preview map
        is megabytes; over a worklist of hundreds of films they would add up to gigabytes). The
        explanations themselves stay cached: flipping back redraws them from their model-space maps."""
        for (path, *_rest), (expl, _shape) in self.heat_cache.items():
            if path != keep_path:
                expl.drop_film_grids()

    def _heat_done(self, key, path, result) -> None:
        self.heatmap.set_busy(False)
        self.heat_cache[key] = result
        if path != self.current_path:
            return
        self.heat = (key,) + tuple(result)
        self._show_heat_note(key, result)
        self._draw_overlay()

    def _show_heat_note(self, key, result) -> None:
        """What the map on screen is, and what to be wary of in it (fresh or from the cache alike)."""
        from cxrviewer.explain.lime_explainer import unsettled_note

        expl, shape = result
        heat = expl.film_map(shape)  # drawn in the worker: kept by the explanation
        flat = heat.size == 0 or float(np.nanmax(heat) - np.nanmin(heat)) < 1e-9
        unsettled = unsettled_note(expl)
        self.heatmap.set_note(f"{vm.HEATMAP_LABELS[key[2]]} for {key[3]}"
                              + (": flat map, no region changes the model's output" if flat else "")
                              + (f": {unsettled}; more samples (View > LIME settings…) may settle them"
                                 if unsettled else ""))

    def _heat_progress(self, label: str, target: str, item) -> None:
        if not (isinstance(item, tuple) and item):
            return
        if item[0] == "progress":
            self.heatmap.set_note(f"Computing {label} for {target}… {item[1] * 100:.0f}%")
        elif item[0] == "coarse":  # an early LIME estimate: show it while the refined one is computed
            _tag, key, expl, shape = item
            if key[0] == self.current_path:
                self.heat = (key, expl, shape)
                self._draw_overlay()
                self.heatmap.set_note(f"{label} for {target}: early estimate, refining…")

    def _side_by_side(self, on: bool) -> None:
        self.view.set_side_by_side(on)
        if on and not self.heatmap.request.active:
            self.heatmap.set_method(self.last_method)

    def cancel_heatmap(self) -> None:
        """Stop a running explanation (LIME can take seconds); the controls stay as they are."""
        self.runner.cancel("explain")
        self.heatmap.set_busy(False)
        self.heatmap.set_note("Cancelled.")

    def _heat_failed(self, path: str, msg: str) -> None:
        self.heatmap.set_busy(False)
        if path != self.current_path:
            return
        self.heat = None
        self.view.set_overlay(None)
        self.heatmap.set_note(msg)

    def _draw_overlay(self) -> None:
        if self.heat is None:
            self.view.set_overlay(None)
            return
        _key, expl, shape = self.heat
        self.view.set_overlay(overlay_rgba(expl, shape, self.heatmap.request))

    # =============================================================================== status
    def _cursor_moved(self, info) -> None:
        if info is None or self.film is None:
            self.pixel_label.setText("")
            return
        row, col, value = info
        text = f"x {col}  y {row}   value {vm.format_value(value)}"
        if self.film.pixel_spacing:
            sy, sx = self.film.pixel_spacing
            text += f"   ({col * sx:.1f}, {row * sy:.1f} mm)"
        self.pixel_label.setText(text)

    def _window_changed(self, window) -> None:
        inv = "  inverted" if self.view.invert else ""
        self.window_label.setText(vm.describe_window(window) + inv if self.film is not None else "")

    def _view_changed(self) -> None:
        self._zoom_label()

    def _zoom_label(self) -> None:
        if self.film is None:
            self.zoom_label.setText("")
            return
        st = self.view.state
        extra = (f"  rot {st.rotation}°" if st.rotation else "") + ("  flipH" if st.flip_h else "") + ("  flipV" if st.flip_v else "")
        self.zoom_label.setText(f"Zoom {st.zoom * 100:.0f}%{extra}")

    def _update_device_label(self) -> None:
        pref = self.device_pref or os.environ.get("CXRVIEWER_DEVICE") or "auto"
        self.device_label.setText(f"Device: {pref} (chosen when a model loads)")

    def _busy_changed(self, count: int, label: str) -> None:
        self.busy.setVisible(count > 0)
        self.busy_label.setText(label if count else "")
        if count == 0:
            self.settled.emit()

    def show_error(self, msg: str, kind: str = "error", film: Optional[str] = None) -> None:
        """``film``: the message is about that film alone, and goes when the reader opens another."""
        self.errors.append(msg)
        self.statusBar().showMessage(msg, 15000)
        self.banner.show_message(msg, kind, film=film)

    # ============================================================================= dialogs
    def show_tags(self) -> None:
        self.tags_dock.show()
        self.tags_dock.raise_()
        self.tags.filter.setFocus()

    def show_shortcuts(self) -> None:
        dlg = QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        table = QTableWidget(len(self.shortcut_rows), 3)
        table.setHorizontalHeaderLabels(["Menu", "Action", "Keys"])
        for i, row in enumerate(self.shortcut_rows):
            for j, v in enumerate(row):
                table.setItem(i, j, QTableWidgetItem(v))
        table.verticalHeader().setVisible(False)
        table.resizeColumnsToContents()
        table.horizontalHeader().setStretchLastSection(True)
        table.setEditTriggers(QTableWidget.NoEditTriggers)
        lay = QVBoxLayout(dlg)
        lay.addWidget(table)
        dlg.resize(560, 620)
        dlg.show()
        self._shortcuts_dialog = dlg

    def show_about(self) -> None:
        """Versions, device and the licences of the bundled models and films (see ``about.py``)."""
        from cxrviewer.gui.about import show_about

        self._about_dialog = show_about(self)

    def _export_path(self, path: str, suffixes=None) -> Optional[str]:
        """The name the reader chose, with its extension (``cxrviewer.explain.export_path``), or None and a
        message where the extension is not one the export writes."""
        from cxrviewer.explain.report import OVERLAY_SUFFIXES, export_path

        try:
            return str(export_path(path, suffixes or OVERLAY_SUFFIXES))
        except ValueError as e:
            self.show_error(f"Export failed: {e}")
            return None

    def save_view_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", str(Path.home() / "cxr-view.png"), "PNG (*.png)")
        path = self._export_path(path) if path else None
        if path:
            self.grab().save(path, "PNG")

    # ============================================================================= exports
    def _export_inputs(self):
        if self.film is None or self.heat is None or self.view.gray is None:
            self.show_error("Show a heatmap first: the export is the film with its explanation.", kind="info")
            return None
        return self.film, self.view.gray.copy(), self.heat[1], self.heatmap.request, self.prediction

    def export_overlay_dialog(self) -> None:
        inputs = self._export_inputs()
        if inputs is None:
            return
        stem = Path(self.current_path).stem
        path, _ = QFileDialog.getSaveFileName(self, "Export heatmap overlay", str(Path.home() / f"{stem}-overlay.png"),
                                              "PNG (*.png)")
        path = self._export_path(path) if path else None
        if path:
            self.export_overlay(path, inputs)

    def export_overlay(self, path: str, inputs=None) -> None:
        """The film as displayed (window, inversion) with the heatmap, at full resolution, no metadata."""
        film, gray, expl, request, _pred = inputs or self._export_inputs()
        # one channel per file: exports never supersede each other (they are not "newer requests")
        self.runner.submit(f"export:{path}", _export_overlay_job, path, gray, expl, request, label="Exporting overlay",
                           on_done=lambda p: self.show_error(f"Saved {Path(p).name}", kind="info"),
                           on_error=lambda msg, exc: self.show_error(f"Export failed: {msg}"))

    def export_report_dialog(self) -> None:
        inputs = self._export_inputs()
        if inputs is None:
            return
        dlg = ReportDialog(Path.home() / f"{Path(self.current_path).stem}-report.pdf", self)
        if dlg.exec() == QDialog.Accepted and dlg.path():
            from cxrviewer.explain.report import REPORT_SUFFIXES

            path = self._export_path(dlg.path(), REPORT_SUFFIXES)
            if path:
                self.export_report(path, dlg.include_ids.isChecked(), inputs)

    def export_report(self, path: str, include_identifiers: bool = False, inputs=None) -> None:
        """One page: film, heatmap, probabilities, model and version, date, disclaimer; identifiers only
        when the reader ticks the box."""
        film, gray, expl, request, pred = inputs or self._export_inputs()
        model = self.model
        self.runner.submit(f"export:{path}", _export_report_job, path, film, gray, expl, request,
                           pred.raw if pred is not None else None, model.display_name if model else "",
                           str((model.metadata or {}).get("version", "")) if model else "", include_identifiers,
                           label="Exporting report",
                           on_done=lambda p: self.show_error(f"Saved {Path(p).name}", kind="info"),
                           on_error=lambda msg, exc: self.show_error(f"Export failed: {msg}"))

    # ================================================================ recent files, DICOMDIR (issue 7)
    def _build_recent_menu(self, file_menu) -> None:
        from cxrviewer.gui.recent import RecentFiles, connect_window

        self.recent = RecentFiles(self.settings, persist=self.persist, parent=self)
        self.recent_menu = self.recent.build_menu(file_menu)
        connect_window(self.recent, self.open_paths, self.show_error)

    def _open_with_dicomdir(self, items: list) -> None:
        """Read the DICOMDIR(s) on a worker (media can be a slow optical drive), then open the images they
        list as one worklist; other dropped files and folders join it. A bad DICOMDIR is one message."""
        if self.persist:
            self.settings.setValue("lastFolder", str(items[0].parent if items[0].is_file() else items[0]))
        first = items[0]
        title = (f"{first.parent.name or 'Media'} (DICOMDIR)" if len(items) == 1 else "Opened films")
        self.runner.submit("list", self._dicomdir_list_job, items, label="Reading DICOMDIR",
                           on_done=lambda res: self._dicomdir_listed(res, items, title),
                           on_error=lambda msg, exc: self.show_error(msg))

    def _dicomdir_list_job(self, ctx, items) -> tuple:  # worker thread
        from cxrviewer.film.dicomdir import DicomdirError, read_dicomdir

        films, problems, notes = [], [], []
        for p in items:
            ctx.check()
            if looks_like_dicomdir(p):
                try:
                    dd = read_dicomdir(p)
                except DicomdirError as exc:
                    problems.append(str(exc))
                    continue
                films.extend(dd.paths())
                notes.append(f"{p.parent.name}/{p.name}: {dd.summary()}")
            elif p.is_dir():
                films.extend(self.backend.list_folder(ctx, p))
            else:
                films.append(str(p))
        return list(dict.fromkeys(films)), problems, notes

    def _dicomdir_listed(self, result, items: list, title: str) -> None:
        films, problems, notes = result
        if problems:
            self.show_error("; ".join(problems))
        if films:
            self._open_list(films, [p for p in items if not looks_like_dicomdir(p)] or items[:1], title)
            self.worklist_dock.setVisible(True)
            if notes and not problems:
                self.show_error("Opened " + "; ".join(notes), kind="info")

    # ============================================================================== drops
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        self.dragEnterEvent(event)

    def dropEvent(self, event) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_paths(files)

    def sizeHint(self) -> QSize:
        return QSize(1440, 900)
