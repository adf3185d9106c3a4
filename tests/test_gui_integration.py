"""The window with the real core: model store, device choice, Predictor, explanations.

A tiny registered attention CNN (tests/inference_helpers.py) keeps this quick; what is tested is the
wiring: discovery -> load on a worker -> prediction in the panel -> heatmaps -> worklist rows.
"""

import os
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
torch = pytest.importorskip("torch")

import inference_helpers as ih  # noqa: E402

from cxrviewer import cli  # noqa: E402
from cxrviewer.gui.main_window import MainWindow  # noqa: E402


@pytest.fixture()
def tiny_model():
    ih.ensure_tiny_registered()
    folder = Path(os.environ["CXRVIEWER_DATA"]) / "models"
    return ih.make_checkpoint(folder / "tiny.safetensors", sharpen=5.0, name="tiny-demo",
                              display_name="Tiny demo model",
                              card={"description": "test model", "limits": "none"})


def _films(tmp_path, n):
    out = []
    for i in range(n):
        out.append(ih.write_png(tmp_path / f"film{i}.png", seed=i, shape=(240, 200)))
    return out


def _settle(qtbot, win, timeout=60000):
    qtbot.waitUntil(win.is_settled, timeout=timeout)
    qtbot.wait(20)


def test_real_model_fills_panel_heatmaps_and_worklist(qtbot, tmp_path, tiny_model):
    films = _films(tmp_path, 3)
    win = MainWindow(persist_settings=False)
    qtbot.addWidget(win)
    win.resize(1000, 700)
    win.show()
    win.open_paths([str(tmp_path)])
    _settle(qtbot, win)
    assert win.model is not None and win.model.display_name == "Tiny demo model"
    assert win.probs.state == "ready", win.errors
    probs = [p for _, p in win.probs.pairs]
    assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert probs == sorted(probs, reverse=True)
    assert "CPU" in win.device_label.text()
    assert all(win.worklist.rows[str(f)].top_class for f in films)
    # the model's own attention, then Grad-CAM, drawn over the film
    win.heatmap.set_method("attention")
    _settle(qtbot, win)
    assert win.view.overlay is not None, win.heatmap.note.text()
    win.heatmap.set_method("gradcam")
    _settle(qtbot, win)
    assert win.view.overlay is not None and win.heat[0][2] == "gradcam", win.heatmap.note.text()
    # exports: the overlay PNG at the film's size, and the one-page report without identifiers
    win.export_overlay(str(tmp_path / "ov.png"))
    win.export_report(str(tmp_path / "rep.png"))
    _settle(qtbot, win)
    from PIL import Image

    assert Image.open(tmp_path / "ov.png").size == (win.film.shape[1], win.film.shape[0])
    assert (tmp_path / "rep.png").stat().st_size > 10000, win.errors
    # switching films does not reload the model
    loads = win.backend._cache.loads
    win.worklist.step(+1)
    _settle(qtbot, win)
    assert win.backend._cache.loads == loads and win.prediction.film_key == win.current_path


def test_screenshot_with_a_model_file_and_heatmap(qtbot, tmp_path, tiny_model):
    film = _films(tmp_path, 1)[0]
    out = tmp_path / "shot.png"
    code = cli.main(["--screenshot", str(out), "--size", "900x600", "--model", str(tiny_model), str(film)])
    assert code == 0 and out.exists()
