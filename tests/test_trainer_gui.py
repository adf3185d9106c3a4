"""The Tools > Train model… dialog: preview, a real tiny training in a subprocess, progress, install, cancel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from _trainer_synth import make_dataset  # noqa: E402


@pytest.fixture
def dialog(qtbot, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from cxrviewer.gui.train_dialog import TrainDialog

    dlg = TrainDialog(None)
    qtbot.addWidget(dlg)
    dlg.open_report_on_finish = False
    yield dlg
    if dlg.is_running():
        dlg.process.kill()
        dlg.process.waitForFinished(5000)


def test_preview_shows_classes_counts_and_refusals(dialog, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    dialog.data_edit.setText(str(data))
    scan = dialog.refresh_preview()
    text = dialog.preview.toPlainText()
    assert scan["ok"] and "Alpha: 7" in text and "Beta: 7" in text and "Gamma: 6" in text
    assert dialog.start_button.isEnabled()
    (tmp_path / "flat").mkdir()
    dialog.data_edit.setText(str(tmp_path / "flat"))
    dialog.refresh_preview()
    assert "Cannot train on this" in dialog.preview.toPlainText() and not dialog.start_button.isEnabled()


def test_training_runs_in_a_subprocess_reports_progress_installs_and_cancels(dialog, qtbot, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=10, dicom=False)
    dialog.data_edit.setText(str(data))
    dialog.recipe_combo.setCurrentIndex(dialog.recipe_combo.findData("smoke"))
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cpu"))
    dialog.epochs_spin.setValue(2)
    dialog.overrides_edit.setText("input_size=32; batch_size=8")
    installed, events = [], []
    dialog.model_installed.connect(installed.append)
    dialog.event_received.connect(lambda ev: events.append(ev["event"]))
    assert dialog.start()
    assert not dialog.start_button.isEnabled() and dialog.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.state in ("finished", "failed"), timeout=150_000)
    assert dialog.state == "finished", dialog.status_label.text()
    assert dialog.progress_bar.value() == 1000 and dialog.curves.point_count() >= 4
    assert "step" in events and events.count("epoch") == 2 and events[-1] == "done"
    assert dialog.report_path is not None and dialog.report_path.is_file() and dialog.report_button.isEnabled()
    assert len(installed) == 1 and Path(installed[0]).is_file()
    # the dataset holds a broken film: the trainer skips it and the dialog says so, by name
    assert dialog.warnings and any("skipped" in w for w in dialog.warnings)
    assert not dialog.warnings_box.isHidden() and "skipped" in dialog.warnings_box.toPlainText()
    assert "warning" in dialog.status_label.text()
    from cxrviewer.paths import user_models_dir

    assert Path(installed[0]).parent == user_models_dir()

    # a long run, cancelled once it is training: the process stops and the run stays resumable
    events.clear()
    dialog.epochs_spin.setValue(200)
    assert dialog.start()
    assert dialog.warnings_box.isHidden()  # a new run starts with no warnings shown
    qtbot.waitUntil(lambda: "step" in events, timeout=90_000)
    dialog.cancel()
    qtbot.waitUntil(lambda: dialog.state == "cancelled", timeout=30_000)
    assert not dialog.is_running()
    assert events[-1] == "cancelled"  # the trainer stopped cleanly (SIGTERM -> saved state), not killed
    assert "cancelled" in dialog.status_label.text().lower()
    assert dialog.start_button.isEnabled()
