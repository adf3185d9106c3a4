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
from gui_helpers import settle as _settle, show_window  # noqa: E402


@pytest.fixture()
def no_bundled_models(tmp_path_factory, monkeypatch):
    """Hide resources/models so the window starts with the test's own model."""
    from cxrviewer import paths

    empty = tmp_path_factory.mktemp("no_bundled")
    monkeypatch.setattr(paths, "bundled_models_dir", lambda: empty)


@pytest.fixture()
def tiny_model(no_bundled_models):
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


def test_real_model_fills_panel_heatmaps_and_worklist(qtbot, tmp_path, tiny_model):
    films = _films(tmp_path, 3)
    win = show_window(qtbot)
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


@pytest.mark.parametrize("bundled", [False, True], ids=["class-level attention", "bundled default"])
def test_first_run_opens_on_the_map_the_model_says_is_worth_seeing(qtbot, tmp_path, bundled, request):
    """A reader who has not chosen a map sees the model's attention where it is a deep, class-level map
    (the tiny attention model), and Grad-CAM where it is low-level (the bundled MobileNet-Lung's stem map,
    which follows bone and soft-tissue density); the attention stays one click away."""
    if not bundled:
        request.getfixturevalue("tiny_model")
    film = _films(tmp_path, 1)[0]
    win = show_window(qtbot)
    win.open_paths([str(film)])
    _settle(qtbot, win)
    assert win.model is not None and ("MobileNet" in win.model.label()) == bundled
    assert win.prediction.first_heatmap == ("gradcam" if bundled else "attention")
    assert win.heatmap.request.method == win.prediction.first_heatmap
    assert win.view.overlay is not None and win.heat[0][2] == win.prediction.first_heatmap
    assert win.heatmap.buttons["attention"].isEnabled()
    win.heatmap.set_method("attention")
    _settle(qtbot, win)
    assert win.heat[0][2] == "attention" and win.view.overlay is not None


def test_screenshot_with_a_model_file_and_heatmap(qtbot, tmp_path, tiny_model):
    film = _films(tmp_path, 1)[0]
    out = tmp_path / "shot.png"
    code = cli.main(["--screenshot", str(out), "--size", "900x600", "--model", str(tiny_model), str(film)])
    assert code == 0 and out.exists()


def test_outside_films_grey_the_panel_and_say_why(qtbot, tmp_path, no_bundled_models):
    """The guard's verdict and the DICOM header's evidence reach the reader beside the probabilities."""
    import numpy as np

    import dicom_factory as df
    from cxrviewer.ood import fit_ood_stats
    from cxrviewer.preprocess import PreprocessSpec, preprocess_gray

    ih.ensure_tiny_registered()
    model = ih.make_model(sharpen=5.0)
    x = torch.from_numpy(np.stack([preprocess_gray(ih.chest_like(seed=i), PreprocessSpec())[0] for i in range(12)]))
    with torch.no_grad():
        _, feats = model.forward_with_features(x)
    labels = np.arange(12) % 3
    stats = fit_ood_stats(feats.numpy(), labels, feats.numpy()[:6], labels[:6])
    stats["thresholds"].update(unusual=-2.0, outside=-1.0)  # every film outside: the wiring is under test here
    folder = Path(os.environ["CXRVIEWER_DATA"]) / "models"
    ih.make_checkpoint(folder / "guarded.safetensors", sharpen=5.0, name="guarded", display_name="Guarded", ood=stats)
    hand = df.write(df.make_dataset(rows=64, cols=48, BodyPartExamined="HAND", ViewPosition="PA"), tmp_path / "hand.dcm")

    win = show_window(qtbot)
    win.open_paths([str(hand)])
    _settle(qtbot, win)
    assert win.probs.state == "ready", win.errors
    assert win.model.display_name == "Guarded"
    assert win.prediction.ood is not None and win.prediction.ood.verdict == "outside"
    assert win.probs.outside and "not meaningful" in win.probs.caution
    assert "HAND, not chest" in win.probs.caution
    assert win.worklist.rows[str(hand)].reading() == "outside training data"
    assert win.probs.height() > 28 + 3 * 28  # room for the sentence under the bars
    win.grab().save(str(tmp_path / "outside.png"))  # paints without error


def test_window_opens_the_sample_film_with_the_bundled_default_model(qtbot):
    """The README's first command: a real model, a real film, a real prediction, where it looked."""
    sample = Path(__file__).resolve().parent.parent / "resources" / "samples" / "kermany_normal_IM-0117-0001.dcm"
    win = show_window(qtbot, size=(1200, 800))
    win.open_paths([str(sample)])
    _settle(qtbot, win, timeout=120000)
    assert win.model is not None and win.model.key == "mobilenet_lung-kermany3" and win.model.source == "bundled"
    assert win.probs.state == "ready", win.errors
    assert win.probs.pairs[0][0] == "Normal" and not win.probs.outside
    # the sample (a secondary capture) gives no age; the reader is told whom the model was trained on
    assert "No patient age on this film" in win.probs.caution and "ages 1 to 5" in win.probs.caution
    assert win.view.overlay is not None, win.heatmap.note.text()  # a heatmap is on the film


def test_the_first_lime_finds_its_fast_path_prepared_after_the_reading(qtbot, tmp_path, tiny_model, monkeypatch):
    """Once a model's first reading is on screen the window prepares LIME's fast path in the background
    (Backend.warm), so the reader's first LIME does not pay for building it; the reading came first."""
    from cxrviewer.inference import Predictor

    state_when_warmed, copies = [], []
    real_warm, real_copy = Predictor.warm_fast, Predictor._fast_copy
    monkeypatch.setattr(Predictor, "warm_fast", lambda self: state_when_warmed.append(win.probs.state) or real_warm(self))
    monkeypatch.setattr(Predictor, "_fast_copy", lambda self, *a: copies.append(1) or real_copy(self, *a))
    film = _films(tmp_path, 1)[0]
    win = show_window(qtbot)
    win.open_paths([str(film)])
    _settle(qtbot, win)
    assert win.probs.state == "ready" and win.heat[0][2] == "attention"  # no LIME asked for yet
    assert state_when_warmed == ["ready"] and copies == [1]
    win.heatmap.set_method("lime")
    _settle(qtbot, win)
    assert win.view.overlay is not None and win.heat[0][2] == "lime", win.heatmap.note.text()
    assert copies == [1]  # the first LIME used the prepared copy


def test_lime_tells_the_reader_when_its_ranking_did_not_settle(qtbot, tmp_path, tiny_model):
    """With the reader's own settings (here 100 samples at most: one fit at 96, nothing for it to agree
    with) the real LIME runs with them and the note under the heatmap controls says the outlines are
    uncertain and where to ask for more samples; the defaults then give a map of their own."""
    from cxrviewer.explain.lime_explainer import LimeSettings

    film = _films(tmp_path, 1)[0]
    win = show_window(qtbot)
    win.set_lime_settings(LimeSettings(num_samples=100))
    win.open_paths([str(film)])
    _settle(qtbot, win)
    win.heatmap.set_method("lime")
    _settle(qtbot, win)
    expl = win.heat[1]
    assert expl.method == "lime" and expl.settings["samples_used"] == 100, win.heatmap.note.text()
    note = win.heatmap.note.text()
    assert "had not settled after 100 samples" in note and "View > LIME settings" in note
    win.set_lime_settings(LimeSettings())
    _settle(qtbot, win)
    assert win.heat[1] is not expl and win.heat[1].settings["num_samples"] == 400
    assert ("had not settled" in win.heatmap.note.text()) == (win.heat[1].settings["settled"] is False)
