"""Tools > Train model…: pick a data folder, an architecture and a recipe, watch the training, get a model.

Training runs in a separate process (``python -m trainer fit ... --progress-jsonl``) driven by QProcess:
the viewer stays responsive, a crash or an out-of-memory kill in training cannot take the window (and the
reader's open films) with it, and cancel is a plain SIGTERM that the trainer turns into a clean stop
after which the run can be resumed. The two sides speak the JSON-lines events of
:mod:`trainer.progress`; anything else on stdout is ignored and stderr is kept for the error message.

On success the run's report opens and the best checkpoint is installed into the user's models folder
(``cxrviewer.model_store.install_model``); ``model_installed(path)`` tells the window to refresh its
model list.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QProcess, QProcessEnvironment, QPointF, QRectF, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QPainter, QPen
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

DEVICES = ("auto", "cpu", "cuda", "mps")


class CurveWidget(QWidget):
    """Loss (left) and accuracy (right) per epoch, drawn with QPainter: no matplotlib in the viewer's process.

    Training points arrive with every step event (x = fractional epoch), validation points per epoch.
    """

    COLORS = {"train": QColor(52, 120, 200), "val": QColor(220, 110, 40)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumSize(420, 150)
        self.clear()

    def clear(self):
        self.series = {"loss": {"train": [], "val": []}, "acc": {"train": [], "val": []}}
        self.epochs = 1
        self.update()

    def add(self, kind: str, which: str, x: float, y: Optional[float]):
        if y is None:
            return
        self.series[kind][which].append((float(x), float(y)))
        self.update()

    def point_count(self) -> int:
        return sum(len(v) for s in self.series.values() for v in s.values())

    def paintEvent(self, event):  # noqa: N802 (Qt naming)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        w, h = self.width(), self.height()
        half = w / 2
        self._panel(p, QRectF(30, 8, half - 40, h - 30), "loss", None)
        self._panel(p, QRectF(half + 30, 8, half - 40, h - 30), "acc", (0.0, 1.0))
        p.end()

    def _panel(self, p: QPainter, r: QRectF, kind: str, yrange):
        p.setPen(QPen(self.palette().text().color(), 1))
        p.drawRect(r)
        pts = [pt for v in self.series[kind].values() for pt in v]
        lo, hi = yrange or ((0.0, max([y for _, y in pts] + [1e-6]) * 1.05) if pts else (0.0, 1.0))
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width(), 16), Qt.AlignLeft,
                   "loss" if kind == "loss" else "accuracy")
        p.drawText(QRectF(r.left() - 30, r.top() - 2, 28, 14), Qt.AlignRight, f"{hi:.2g}")
        p.drawText(QRectF(r.left() - 30, r.bottom() - 12, 28, 14), Qt.AlignRight, f"{lo:.2g}")
        xmax = max([x for x, _ in pts] + [float(self.epochs)])
        for which, color in self.COLORS.items():
            data = self.series[kind][which]
            if not data:
                continue
            p.setPen(QPen(color, 1.6))
            mapped = [QPointF(r.left() + r.width() * x / max(xmax, 1e-6),
                              r.bottom() - r.height() * (y - lo) / max(hi - lo, 1e-9)) for x, y in data]
            for a, b in zip(mapped, mapped[1:]):
                p.drawLine(a, b)
            if which == "val":
                for q in mapped:
                    p.drawEllipse(q, 2.5, 2.5)
        # legend under the panel, right-aligned, clear of the curves
        p.setPen(QPen(self.COLORS["val"], 1))
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width(), 16), Qt.AlignRight, "validation (per epoch)")
        p.setPen(QPen(self.COLORS["train"], 1))
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width() - 150, 16), Qt.AlignRight, "train")


def _format_eta(seconds) -> str:
    if seconds is None:
        return "estimating…"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min left" if h else (f"{m} min {s:02d} s left" if m else f"{s} s left")


class TrainDialog(QDialog):
    """The training dialog. ``model_installed(path)`` fires once a trained model is in the user's models folder."""

    model_installed = Signal(str)
    run_finished = Signal(str)  # the run folder, after success
    event_received = Signal(dict)  # every progress event (tests and the window's status bar may listen)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Train model")
        self.setModal(False)
        self.process: Optional[QProcess] = None
        self.open_report_on_finish = True
        self.install_on_finish = True
        self.extra_args: list = []  # appended to the trainer's command line (advanced use, tests)
        self.run_dir: Optional[Path] = None
        self.report_path: Optional[Path] = None
        self._checkpoint: Optional[str] = None  # the best checkpoint the run reported when done
        self.last_event: Optional[dict] = None
        self.state = "idle"  # idle | running | cancelling | finished | cancelled | failed
        self._stdout_buf = b""
        self._stderr_tail: list = []
        self._scan = None
        self._build()
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(300)
        self._preview_timer.timeout.connect(self.refresh_preview)
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)

    # --- layout -------------------------------------------------------------------------------------------
    def _build(self):
        from trainer.recipes import RECIPES

        lay = QVBoxLayout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("folder with one subfolder per class, train/val/test folders, or a CSV")
        self.data_edit.textChanged.connect(lambda _t: self._preview_timer.start())
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.data_edit, 1)
        row.addWidget(browse)
        form.addRow("Data", row)
        self.pattern_edit = QLineEdit()
        self.pattern_edit.setPlaceholderText("optional: patient ID from file names, e.g. ^(\\d+)_")
        self.pattern_edit.textChanged.connect(lambda _t: self._preview_timer.start())
        form.addRow("Patient pattern", self.pattern_edit)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setMaximumHeight(110)
        self.preview.setPlainText("Choose a data folder to see its classes and counts.")
        form.addRow("Preview", self.preview)
        self.arch_combo = QComboBox()
        try:
            from cxrviewer.models import list_models

            for info in list_models():
                self.arch_combo.addItem(info.name, info.name)
                self.arch_combo.setItemData(self.arch_combo.count() - 1, info.description, Qt.ToolTipRole)
        except Exception as e:  # the dialog must open even if the zoo cannot be imported; the trainer will say why
            self.arch_combo.addItem("mobilenet_lung", "mobilenet_lung")
            self.arch_combo.setToolTip(f"model list unavailable: {e}")
        i = self.arch_combo.findData("mobilenet_lung")
        if i >= 0:
            self.arch_combo.setCurrentIndex(i)
        form.addRow("Architecture", self.arch_combo)
        self.recipe_combo = QComboBox()
        for name, r in RECIPES.items():
            self.recipe_combo.addItem(name, name)
            self.recipe_combo.setItemData(self.recipe_combo.count() - 1, r.description, Qt.ToolTipRole)
        self.recipe_combo.setCurrentIndex(max(0, self.recipe_combo.findData("seed003")))  # mobilenet_lung's paper
        self.recipe_combo.currentIndexChanged.connect(self._recipe_changed)
        form.addRow("Recipe", self.recipe_combo)
        self.recipe_label = QLabel()
        self.recipe_label.setWordWrap(True)
        form.addRow("", self.recipe_label)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        form.addRow("Epochs", self.epochs_spin)
        self.device_combo = QComboBox()
        for d in DEVICES:
            self.device_combo.addItem(d, d)
        form.addRow("Device", self.device_combo)
        self.overrides_edit = QLineEdit()
        self.overrides_edit.setPlaceholderText("optional recipe overrides: lr=1e-4; batch_size=16; balance=sampler")
        form.addRow("Overrides", self.overrides_edit)
        lay.addLayout(form)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.status_label = QLabel("Not started.")
        self.status_label.setWordWrap(True)
        self.curves = CurveWidget()
        # the trainer's warnings (films skipped, pretrained weights missing so training starts from random
        # weights, a device fallback): hidden until the first one, kept for the whole run
        self.warnings_box = QPlainTextEdit()
        self.warnings_box.setReadOnly(True)
        self.warnings_box.setMaximumHeight(90)
        self.warnings_box.setVisible(False)
        self.warnings: list = []
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status_label)
        lay.addWidget(self.warnings_box)
        lay.addWidget(self.curves, 1)

        buttons = QDialogButtonBox()
        self.start_button = buttons.addButton("Start training", QDialogButtonBox.AcceptRole)
        self.cancel_button = buttons.addButton("Cancel training", QDialogButtonBox.DestructiveRole)
        self.report_button = buttons.addButton("Open report", QDialogButtonBox.ActionRole)
        self.close_button = buttons.addButton(QDialogButtonBox.Close)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.report_button.clicked.connect(self.open_report)
        self.close_button.clicked.connect(self.close)
        self.cancel_button.setEnabled(False)
        self.report_button.setEnabled(False)
        self.start_button.setEnabled(False)
        lay.addWidget(buttons)
        self._recipe_changed()
        self.resize(640, 640)

    def _browse(self):
        d = QFileDialog.getExistingDirectory(self, "Training data folder", self.data_edit.text() or str(Path.home()))
        if d:
            self.data_edit.setText(d)

    def _recipe_changed(self, *_):
        from trainer.recipes import describe, get_recipe

        r = get_recipe(self.recipe_combo.currentData())
        self.epochs_spin.setValue(r.epochs)
        lines = describe(r).split("\n")[1:]
        self.recipe_label.setText("\n".join(ln.strip() for ln in lines if not ln.strip().startswith("notes:")))
        self.recipe_label.setToolTip(r.notes)

    # --- preview ----------------------------------------------------------------------------------------------
    def refresh_preview(self) -> dict:
        """Scan the folder (no decoding) and show classes, counts and problems; enables Start when usable."""
        from trainer.data import scan_dataset

        path = self.data_edit.text().strip()
        if not path:
            self._scan = None
            self.preview.setPlainText("Choose a data folder to see its classes and counts.")
            self._update_buttons()
            return {}
        scan = scan_dataset(path, self.pattern_edit.text().strip() or None)
        self._scan = scan
        if not scan["ok"]:
            self.preview.setPlainText(f"Cannot train on this: {scan['error']}")
        else:
            lines = [f"{scan['total']} films in {len(scan['classes'])} classes ({scan['kind']}):"]
            lines += [f"  {c}: {n}" for c, n in scan["counts"].items()]
            if scan.get("split_counts"):
                lines.append("  given split: " + ", ".join(f"{s} {sum(v.values())}" for s, v in scan["split_counts"].items()))
            lines += [f"⚠ {p}" for p in scan["problems"]]
            self.preview.setPlainText("\n".join(lines))
        self._update_buttons()
        return scan

    def _update_buttons(self):
        running = self.state in ("running", "cancelling")
        self.start_button.setEnabled(bool(self._scan and self._scan.get("ok")) and not running)
        self.cancel_button.setEnabled(self.state == "running")
        self.report_button.setEnabled(self.report_path is not None and self.report_path.exists())
        for w in (self.data_edit, self.pattern_edit, self.arch_combo, self.recipe_combo, self.epochs_spin,
                  self.device_combo, self.overrides_edit):
            w.setEnabled(not running)

    # --- running ------------------------------------------------------------------------------------------------
    def command(self) -> list:
        """The trainer's arguments (after the Python interpreter) for the current choices."""
        from cxrviewer.paths import user_runs_dir

        arch = self.arch_combo.currentData()
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = user_runs_dir() / f"{arch}-{stamp}"
        args = ["-m", "trainer", "fit", self.data_edit.text().strip(), "--arch", arch,
                "--recipe", self.recipe_combo.currentData(), "--epochs", str(self.epochs_spin.value()),
                "--device", self.device_combo.currentData(), "--out", str(self.run_dir), "--progress-jsonl"]
        pattern = self.pattern_edit.text().strip()
        if pattern:
            args += ["--patient-pattern", pattern]
        for item in self.overrides_edit.text().replace(",", ";").split(";") if "=" in self.overrides_edit.text() else []:
            if item.strip():
                args += ["--set", item.strip()]
        if self.device_combo.currentData() in ("auto", "cpu"):
            # leave a core to the viewer so it stays responsive while training on the CPU
            args += ["--threads", str(max(1, (os.cpu_count() or 2) - 1))]
        return args + list(self.extra_args)

    def start(self) -> bool:
        if self.state in ("running", "cancelling"):
            return False
        scan = self.refresh_preview()
        if not scan.get("ok"):
            return False
        self.curves.clear()
        self.curves.epochs = self.epochs_spin.value()
        self.warnings = []
        self.warnings_box.clear()
        self.warnings_box.setVisible(False)
        self.progress_bar.setValue(0)
        self.report_path = None
        self._checkpoint = None
        self._stdout_buf = b""
        self._stderr_tail = []
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        root = str(Path(__file__).resolve().parents[2])  # makes ``-m trainer`` work from a source checkout
        env.insert("PYTHONPATH", root + (os.pathsep + env.value("PYTHONPATH") if env.value("PYTHONPATH") else ""))
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._process_error)
        self.process = proc
        self.state = "running"
        self.status_label.setText("Starting the trainer…")
        self._update_buttons()
        proc.start(sys.executable, self.command())
        return True

    def cancel(self):
        """Ask the trainer to stop (SIGTERM: it saves nothing half-way and stays resumable); kill after 10 s."""
        if self.process is None or self.state != "running":
            return
        self.state = "cancelling"
        self.status_label.setText("Stopping…")
        self._update_buttons()
        self.process.terminate()
        self._kill_timer.start(10_000)

    def _kill(self):
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.kill()

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _read_stdout(self):
        from trainer.progress import parse_line

        self._stdout_buf += bytes(self.process.readAllStandardOutput())
        *lines, self._stdout_buf = self._stdout_buf.split(b"\n")
        for raw in lines:
            ev = parse_line(raw.decode("utf-8", "replace"))
            if ev is not None:
                self._handle(ev)

    def _read_stderr(self):
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        self._stderr_tail = (self._stderr_tail + [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()])[-40:]

    def _handle(self, ev: dict):
        self.last_event = ev
        kind = ev.get("event")
        if kind == "start":
            self.curves.epochs = int(ev.get("epochs", 1))
            self.status_label.setText(
                f"Training {ev.get('arch')} on {ev.get('device')}: "
                + ", ".join(f"{s} {sum(c.values())}" for s, c in (ev.get("counts") or {}).items()) + " films")
        elif kind == "phase" and ev.get("phase") == "loading":
            self.status_label.setText(f"Reading films: {ev.get('done')} of {ev.get('total')}")
        elif kind == "phase" and ev.get("phase") in ("calibrating", "testing", "reporting"):
            self.status_label.setText({"calibrating": "Calibrating on the validation split…",
                                       "testing": "Evaluating the test split…",
                                       "reporting": "Writing the report…"}[ev["phase"]])
        elif kind == "step":
            epochs, steps = max(1, int(ev["epochs"])), max(1, int(ev["steps"]))
            frac = (int(ev["epoch"]) - 1 + int(ev["step"]) / steps) / epochs
            self.progress_bar.setValue(int(1000 * frac))
            x = int(ev["epoch"]) - 1 + int(ev["step"]) / steps
            self.curves.add("loss", "train", x, ev.get("loss"))
            self.curves.add("acc", "train", x, ev.get("acc"))
            self.status_label.setText(
                f"Epoch {ev['epoch']}/{ev['epochs']}, step {ev['step']}/{ev['steps']}: loss {ev['loss']:.3f}, "
                f"accuracy {ev['acc']:.3f} — {_format_eta(ev.get('eta_s'))}")
        elif kind == "epoch":
            self.curves.add("loss", "val", ev["epoch"], ev.get("val_loss"))
            self.curves.add("acc", "val", ev["epoch"], ev.get("val_acc"))
            self.progress_bar.setValue(int(1000 * int(ev["epoch"]) / max(1, int(ev["epochs"]))))
        elif kind == "done":
            self.progress_bar.setValue(1000)
            self.report_path = Path(ev["report"]) if ev.get("report") else None
            self.run_dir = Path(ev.get("run_dir", self.run_dir))
            self._checkpoint = ev.get("checkpoint")
        elif kind == "error":
            self.status_label.setText(ev.get("message", "training failed"))
        elif kind == "warning":
            self.warnings.append(str(ev.get("message", "")))
            self.warnings_box.appendPlainText("⚠ " + self.warnings[-1])
            self.warnings_box.setVisible(True)
        self.event_received.emit(ev)

    def _with_warnings(self, text: str) -> str:
        n = len(self.warnings)
        return text + (f" {n} warning{'s' if n > 1 else ''}, listed below." if n else "")

    def _finished(self, code: int, status):
        self._kill_timer.stop()
        self._read_stdout()
        if self.state == "cancelling":
            self.state = "cancelled"
            ep = (self.last_event or {}).get("epoch") if (self.last_event or {}).get("event") == "cancelled" else None
            self.status_label.setText(
                "Training cancelled." + (f" The run keeps its state after epoch {ep}; it can be resumed with "
                                         f"cxr-train fit --resume --out {self.run_dir}" if ep else ""))
        elif code == 0 and (self.last_event or {}).get("event") in ("done", "installed"):
            self.state = "finished"
            self._on_success()
        else:
            self.state = "failed"
            err = (self.last_event or {}).get("message") if (self.last_event or {}).get("event") == "error" else None
            tail = "\n".join(self._stderr_tail[-3:])
            self.status_label.setText(self._with_warnings(f"Training failed (exit {code}): {err or tail or 'no message'}"))
        self._update_buttons()

    def _process_error(self, err):
        if err == QProcess.FailedToStart:
            self.state = "failed"
            self.status_label.setText(f"Could not start the trainer ({sys.executable}).")
            self._update_buttons()

    def _on_success(self):
        msg = "Training finished."
        ckpt = self._checkpoint
        if self.install_on_finish and ckpt:
            try:
                from cxrviewer.model_store import install_model

                entry = install_model(ckpt, overwrite=False)
                dest = str(entry.path)
                msg += f" The model is installed ({Path(dest).name}) and selectable in the model list."
                self.model_installed.emit(dest)
            except Exception as e:  # a refusal from the store must not hide a finished run
                msg += f" It could not be installed: {e}"
        self.status_label.setText(self._with_warnings(msg))
        if self.run_dir is not None:
            self.run_finished.emit(str(self.run_dir))
        if self.open_report_on_finish:
            self.open_report()

    def open_report(self):
        if self.report_path is not None and self.report_path.exists():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.report_path)))

    def closeEvent(self, event):  # noqa: N802 (Qt naming)
        if self.is_running():
            self.cancel()
            self.process.waitForFinished(15_000)
        super().closeEvent(event)
