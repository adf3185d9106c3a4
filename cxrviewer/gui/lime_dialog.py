"""LIME's settings for the reader: the segmentation, SLIC's superpixel count, the most samples, whether
sampling stops once the top superpixels settle, and how the weights are fitted (issue 4 asks for them as
settings with good defaults).

They live in QSettings ("lime/…") so a choice outlives the session; what a person or another version wrote
there that makes no sense reads as the default. "Model's choice" leaves the segmentation and the count to
the model and its card (``lime_explainer.for_model``), which is what the benchmarks measured.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox,
                               QVBoxLayout)

from cxrviewer.explain.lime_explainer import FITS, SEGMENTATIONS, LimeSettings
from cxrviewer.gui.settings import read_choice, read_int

SEGMENTATION_LABELS = {"": "Model's choice", "slic": "SLIC", "quickshift": "Quickshift (lime's own default)",
                       "felzenszwalb": "Felzenszwalb"}
FIT_LABELS = {"surrogate": "lime's regression with a logistic surrogate (less noise)",
              "lime": "lime's regression alone"}
assert set(FIT_LABELS) == set(FITS)
SAMPLES_RANGE = (32, 5000)
SEGMENTS_RANGE = (0, 400)  # 0: the model's choice


def read_lime_settings(s) -> LimeSettings:
    """The reader's LIME settings from QSettings ``s``; anything unreadable gives the default."""
    n_segments = read_int(s, "lime/segments", 0, *SEGMENTS_RANGE)
    samples = read_int(s, "lime/samples", LimeSettings().num_samples, *SAMPLES_RANGE)
    stop_early = read_int(s, "lime/stop_early", 1, 0, 1)
    return LimeSettings(segmentation=read_choice(s, "lime/segmentation", SEGMENTATIONS, None),
                        n_segments=n_segments if n_segments >= 2 else None, num_samples=samples,
                        fit=read_choice(s, "lime/fit", FITS, LimeSettings().fit),
                        **({} if stop_early else {"settle_from": 0}))


def write_lime_settings(s, settings: LimeSettings) -> None:
    s.setValue("lime/segmentation", settings.segmentation or "")
    s.setValue("lime/segments", int(settings.n_segments or 0))
    s.setValue("lime/samples", int(settings.num_samples))
    s.setValue("lime/stop_early", int(bool(settings.settle_from)))
    s.setValue("lime/fit", settings.fit)


class LimeSettingsDialog(QDialog):
    """Edits a copy of the window's LimeSettings; :meth:`value` is the result once accepted."""

    def __init__(self, settings: LimeSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("LIME settings")
        self._base = settings
        form = QFormLayout()
        self.segmentation = QComboBox()
        for key, label in SEGMENTATION_LABELS.items():
            self.segmentation.addItem(label, key)
        self.segments = QSpinBox()
        self.segments.setRange(*SEGMENTS_RANGE)
        self.segments.setSpecialValueText("Model's choice")
        self.segments.setToolTip("SLIC's target number of superpixels (it makes about two thirds as many on a "
                                 "chest film); more superpixels give a finer map that needs more samples")
        self.samples = QSpinBox()
        self.samples.setRange(*SAMPLES_RANGE)
        self.samples.setSingleStep(32)
        self.samples.setToolTip("The most perturbed films LIME asks the model about; each costs one forward pass")
        self.fit = QComboBox()
        for key, label in FIT_LABELS.items():
            self.fit.addItem(label, key)
        self.fit.setToolTip("Both estimate the same weights. The surrogate first fits a logistic curve to the "
                            "model's answers, which takes out its saturation: from the same samples, a map with "
                            "about a quarter of the squared error on the adult model's films")
        self.stop_early = QCheckBox("Stop once the top superpixels settle")
        self.stop_early.setToolTip("Fits every 32 samples from 96 on and stops when two agree and the fifth "
                                   "superpixel clearly leads the sixth; off, every sample is drawn")
        form.addRow("Segmentation", self.segmentation)
        form.addRow("SLIC superpixels", self.segments)
        form.addRow("Samples, at most", self.samples)
        form.addRow("", self.stop_early)
        form.addRow("Fit", self.fit)
        note = QLabel("The defaults are the ones measured against lime's own runs. More samples give "
                      "steadier outlines and slower maps. Changing them recomputes the LIME map on screen.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel | QDialogButtonBox.RestoreDefaults)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.RestoreDefaults).clicked.connect(lambda: self._show(LimeSettings()))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.segmentation.currentIndexChanged.connect(self._enable)
        self._show(settings)

    def _show(self, settings: LimeSettings) -> None:
        self.segmentation.setCurrentIndex(max(0, self.segmentation.findData(settings.segmentation or "")))
        self.segments.setValue(int(settings.n_segments or 0))
        self.samples.setValue(int(settings.num_samples))
        self.stop_early.setChecked(bool(settings.settle_from))
        self.fit.setCurrentIndex(max(0, self.fit.findData(settings.fit)))
        self._enable()

    def _enable(self) -> None:
        # the count is SLIC's; "Model's choice" may be SLIC too, so it stays open there
        self.segments.setEnabled(self.segmentation.currentData() in ("", "slic"))

    def value(self) -> LimeSettings:
        seg = self.segmentation.currentData() or None
        n = self.segments.value() if seg in (None, "slic") else 0
        return replace(self._base, segmentation=seg, n_segments=n if n >= 2 else None,
                       num_samples=self.samples.value(), fit=self.fit.currentData(),
                       settle_from=LimeSettings().settle_from if self.stop_early.isChecked() else 0)
