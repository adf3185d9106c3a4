"""Hardening (issue 8): the viewer survives what goes wrong around it, the way a reader meets it.

- A background job fails (the model runs out of memory, a CUDA error, an explanation crashes, a film
  cannot be read): the window says so, keeps the film it can show, and the next film works normally.
- The settings file is damaged (garbage bytes, a broken INI, a file in the wrong encoding, nonsense
  values): the window opens, says the settings were reset, keeps the bad file aside, and saves anew.
- The user data folder cannot be used (a file where the folder should be, a read-only place): the window
  still opens and predicts with a bundled model, and a model opened from a file is used where it is.

The trainer's faults (SIGKILL, a full disk) are in ``test_survival_trainer.py``; each file stays short.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
torch = pytest.importorskip("torch")

import inference_helpers as ih  # noqa: E402

from cxrviewer.gui import backend as backend_mod  # noqa: E402
from cxrviewer.gui.main_window import MainWindow  # noqa: E402
from gui_helpers import settle as _settle, show_window  # noqa: E402


# ------------------------------------------------------------------------------------------ helpers
def _window(qtbot, persist=False) -> MainWindow:
    # start with the heatmap off: the faults below choose when maps are computed
    return show_window(qtbot, persist=persist, heatmap_on_first_run=False)


def _open(qtbot, win, path):
    win.open_paths([str(path)])
    _settle(qtbot, win)


def _films(tmp_path, n, shape=(160, 136)):
    return [ih.write_png(tmp_path / f"film{i}.png", seed=i, shape=shape) for i in range(n)]


def _user_model(name="tiny", **kw) -> Path:
    ih.ensure_tiny_registered()
    folder = Path(os.environ["CXRVIEWER_DATA"]) / "models"
    return ih.make_checkpoint(folder / f"{name}.safetensors", sharpen=5.0, name=name, display_name=f"{name} model", **kw)


def _shows_film(win, path) -> bool:
    """The film is on screen: loaded, rendered into the view, under its own name."""
    return (win.film is not None and win.current_path == str(path) and win.view.gray is not None
            and win.view.gray.shape == win.film.shape and Path(path).name in win.windowTitle())


def _predicted(win, path) -> bool:
    p = win.prediction
    return (win.probs.state == "ready" and p is not None and p.film_key == str(path)
            and abs(sum(p.probs) - 1.0) < 1e-4)


class Faults:
    """Exceptions armed per (backend method, film file name), each raised once, on the worker thread."""

    def __init__(self):
        self.armed: dict = {}
        self.fired: list = []

    def arm(self, method: str, film, exc: BaseException) -> None:
        self.armed[(method, Path(film).name)] = exc

    def maybe_raise(self, method: str, film_key) -> None:
        exc = self.armed.pop((method, Path(str(film_key)).name), None)
        if exc is not None:
            self.fired.append((method, Path(str(film_key)).name, type(exc).__name__))
            raise exc


@pytest.fixture()
def faults(monkeypatch):
    f = Faults()
    B = backend_mod.Backend
    real_load, real_predict, real_explain = B.load_film, B.predict, B.explain

    def load_film(self, ctx, path):
        f.maybe_raise("load_film", path)
        return real_load(self, ctx, path)

    def predict(self, ctx, predictor, film, film_key, model_key):
        f.maybe_raise("predict", film_key)
        return real_predict(self, ctx, predictor, film, film_key, model_key)

    def explain(self, ctx, predictor, film, prediction, method, target_class, out_side=1024, cache_key=None,
                settings=None):
        f.maybe_raise("explain", prediction.film_key)
        return real_explain(self, ctx, predictor, film, prediction, method, target_class, out_side, cache_key,
                            settings)

    monkeypatch.setattr(B, "load_film", load_film)
    monkeypatch.setattr(B, "predict", predict)
    monkeypatch.setattr(B, "explain", explain)
    return f


# ------------------------------------------------------------------------ a. failing background jobs
def test_failing_jobs_are_messages_and_the_next_film_works(qtbot, tmp_path, faults):
    _user_model()
    f0, f1, f2, f3 = _films(tmp_path, 4)
    win = _window(qtbot)
    _settle(qtbot, win)
    assert win.model is not None

    # 1. the model fails on the GPU in the middle of a reading: the film stays on screen, the panel says why
    faults.arm("predict", f0, RuntimeError("CUDA error: an illegal memory access was encountered"))
    _open(qtbot, win, f0)
    assert _shows_film(win, f0)
    assert win.probs.state == "error" and "illegal memory access" in win.probs.message
    assert "illegal memory access" in win.banner.text() and "film0.png" in win.errors[-1]
    win.rerun_model()  # Model ▸ Run model again (Ctrl+Return)
    _settle(qtbot, win)
    assert _predicted(win, f0), win.errors

    # 2. out of memory during the prediction of the next film
    faults.arm("predict", f1, MemoryError())
    _open(qtbot, win, f1)
    assert _shows_film(win, f1) and win.probs.state == "error"
    assert "not enough memory" in win.banner.text()
    win.rerun_model()
    _settle(qtbot, win)
    assert _predicted(win, f1), win.errors

    # 3. explanations fail (a crash, then out of memory): a note under the controls, no overlay, no crash
    faults.arm("explain", f1, RuntimeError("grad can be implicitly created only for scalar outputs"))
    win.heatmap.set_method("gradcam")
    _settle(qtbot, win)
    assert win.view.overlay is None and "implicitly created" in win.heatmap.note.text()
    faults.arm("explain", f1, MemoryError())
    win.heatmap.set_method("attention")
    _settle(qtbot, win)
    assert win.view.overlay is None and "not enough memory" in win.heatmap.note.text()
    win.toggle_heatmap()  # O: off ...
    win.toggle_heatmap()  # ... and on again: the reader's retry
    _settle(qtbot, win)
    assert win.view.overlay is not None, win.heatmap.note.text()
    assert _predicted(win, f1)  # the reading is untouched by the failed explanations

    # 4. exporting to a folder that has gone (a USB stick pulled out): a message, then a good export works
    win.export_overlay(str(tmp_path / "unplugged" / "overlay.png"))
    _settle(qtbot, win)
    assert "Export failed" in win.errors[-1]
    win.export_overlay(str(tmp_path / "overlay.png"))
    _settle(qtbot, win)
    assert (tmp_path / "overlay.png").stat().st_size > 1000 and "Saved overlay.png" in win.errors[-1]

    # 5. a film cannot be read (I/O error, then out of memory while decoding)
    faults.arm("load_film", f2, RuntimeError("[Errno 5] Input/output error"))
    _open(qtbot, win, f2)
    assert win.film is None and win.prediction is None and win.view.overlay is None
    assert "Input/output error" in win.banner.text() and "Input/output error" in win.view.empty_text
    assert win.probs.state == "idle"  # "No film to analyse", not the previous film's reading
    faults.arm("load_film", f3, MemoryError())
    _open(qtbot, win, f3)
    assert win.film is None and "not enough memory" in win.banner.text()

    # 6. still usable: the next films open, are predicted and explained as if nothing had happened
    n_errors = len(win.errors)
    _open(qtbot, win, f2)
    assert _shows_film(win, f2) and _predicted(win, f2), win.errors[n_errors:]
    assert win.view.overlay is not None  # the attention method is still on: drawn for this film
    _open(qtbot, win, f3)
    assert _shows_film(win, f3) and _predicted(win, f3), win.errors[n_errors:]
    assert not any("fail" in e.lower() for e in win.errors[n_errors:]), win.errors[n_errors:]
    assert len(faults.fired) == 6 and not faults.armed, faults.fired


# ------------------------------------------------------------------------------ b. damaged settings
_BAD_SETTINGS = {
    "random-bytes": bytes(np.random.default_rng(8).integers(0, 256, 600, dtype=np.uint8)),
    "broken-ini": b"[window]\ngeometry=@ByteArray(\x01\xd9\xd0\xcb\x00\x03\n[heatmap\nmethod=grad\x00\x00cam\n[[[",
    "utf16": "[General]\nmodel=tiny\n[heatmap]\nmethod=lime\n".encode("utf-16"),
    "truncated-write": b"[General]\ndevice=cpu\n[heatmap]\ncolormap=jet\nmethod=gra" + b"\x00" * 512,
}


@pytest.mark.parametrize("kind", sorted(_BAD_SETTINGS))
def test_unreadable_settings_are_reset_with_a_notice(qtbot, kind):
    ini = Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_bytes(_BAD_SETTINGS[kind])
    win = _window(qtbot, persist=True)
    _settle(qtbot, win)
    notices = [e for e in win.errors if "settings" in e.lower()]
    assert notices and "reset" in notices[0].lower(), win.errors
    kept = [p for p in ini.parent.iterdir() if p.name != ini.name]
    assert len(kept) == 1 and kept[0].read_bytes() == _BAD_SETTINGS[kind]  # nothing of the reader's is destroyed
    assert kept[0].name in notices[0]

    # the fresh settings work: what the reader sets now is saved and restored
    win.heatmap.set_method("gradcam")
    win.worklist.set_sort("suspicion")
    win.close()
    from PySide6.QtCore import QSettings

    s = QSettings(str(ini), QSettings.IniFormat)
    assert s.status() == QSettings.NoError and s.value("heatmap/method") == "gradcam"
    win2 = _window(qtbot, persist=True)
    _settle(qtbot, win2)
    assert win2.heatmap.request.method == "gradcam" and win2.worklist.sort_key == "suspicion"
    assert not [e for e in win2.errors if "settings" in e.lower()]  # reset once, not at every start


def test_settings_folder_that_cannot_be_made_is_a_notice(qtbot, tmp_path, monkeypatch):
    """A portable install on read-only media: the window opens with the defaults and says so."""
    blocker = tmp_path / "settings-blocker"
    blocker.write_text("a file where the settings folder should be")
    monkeypatch.setenv("CXRVIEWER_SETTINGS_DIR", str(blocker / "settings"))
    win = _window(qtbot, persist=True)
    _settle(qtbot, win)
    assert any("cannot be saved" in e for e in win.errors), win.errors
    win.heatmap.set_method("gradcam")
    win.close()  # saving fails quietly, the window closes
    assert blocker.read_text().startswith("a file")


def test_nonsense_values_in_a_readable_settings_file_do_not_stop_reading(qtbot, tmp_path):
    """A hand-edited or older settings file: every value wrong in type or range. The window opens and
    the model predicts (an unknown saved device must not make every model load fail)."""
    _user_model()
    film = _films(tmp_path, 1)[0]
    ini = Path(os.environ["CXRVIEWER_SETTINGS_DIR"]) / "cxrviewer.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[General]\ndevice=quantum\nmodel=no-such-model\nlastFolder=@Invalid()\n"
                   "[window]\ngeometry=not a geometry\nstate=@ByteArray(garbage)\n"
                   "[heatmap]\nmethod=xray-vision\nopacity=banana\ncolormap=plaid\n"
                   "[worklist]\nsort=42\n[recent]\npaths=7\n")
    win = _window(qtbot, persist=True)
    _settle(qtbot, win)
    assert win.heatmap.request.method == "none" and win.worklist.sort_key == "name"
    _open(qtbot, win, film)
    assert _shows_film(win, film) and _predicted(win, film), win.errors
    assert "quantum" not in win.device_label.text()
    win.heatmap.set_method("gradcam")
    _settle(qtbot, win)
    assert win.view.overlay is not None, win.heatmap.note.text()
    win.close()  # and it saves over the nonsense without complaint
    assert "method=gradcam" in ini.read_text()


# ---------------------------------------------------------------------- b. unusable user data folder
def _unusable_data_dir(kind: str, tmp_path: Path) -> Path:
    if kind == "under-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        return blocker / "CXRViewer"
    if kind == "is-a-file":
        f = tmp_path / "CXRViewer"
        f.write_text("not a folder")
        return f
    # read-only: a folder the user cannot write (as root, a place no one can create folders in)
    if os.name == "posix" and os.geteuid() != 0:
        ro = tmp_path / "readonly"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "CXRViewer"
    target = Path("/sys/cxrviewer-test-data")
    try:
        target.mkdir()
    except OSError:
        return target
    target.rmdir()
    pytest.skip("no read-only location on this machine")


@pytest.mark.parametrize("kind", ["under-a-file", "is-a-file", "read-only"])
def test_unusable_data_folder_still_opens_and_predicts(qtbot, tmp_path, monkeypatch, kind):
    ih.ensure_tiny_registered()
    res = tmp_path / "resources"
    (res / "models").mkdir(parents=True)
    ih.make_checkpoint(res / "models" / "bundled.safetensors", sharpen=5.0, name="bundled",
                       display_name="Bundled model", default=True)
    opened = ih.make_checkpoint(tmp_path / "downloads" / "mine.safetensors", seed=3, sharpen=5.0, name="mine",
                                display_name="My model")
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(res))
    data = _unusable_data_dir(kind, tmp_path)
    monkeypatch.setenv("CXRVIEWER_DATA", str(data))
    film = _films(tmp_path, 1)[0]

    win = _window(qtbot, persist=True)
    _settle(qtbot, win)
    assert win.model is not None and win.model.key == "bundled", win.errors
    _open(qtbot, win, film)
    assert _shows_film(win, film) and _predicted(win, film), win.errors

    # File ▸ Open model…: it cannot be copied into the data folder, so it is used from where it is
    win.open_model_file(str(opened))
    _settle(qtbot, win)
    assert win.model is not None and win.model.key == "mine", win.errors
    assert _predicted(win, film) and win.prediction.model_key == "mine", win.errors
    assert any("mine.safetensors" in e and "model folder" in e for e in win.errors), win.errors
    assert not (data.is_dir() and any(data.rglob("*.safetensors")))
