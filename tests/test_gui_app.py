"""``cxrviewer`` as a program: --screenshot, exit codes, --version, and the window before torch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from cxrviewer import cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _film(tmp_path, name="film.png"):
    y, x = np.mgrid[0:120, 0:100]
    p = tmp_path / name
    Image.fromarray(((x + y) * 255 // 218).astype(np.uint8)).save(p)
    return p


def test_screenshot_writes_a_png_of_the_window_size(qtbot, tmp_path):
    out = tmp_path / "shot.png"
    code = cli.main(["--screenshot", str(out), "--size", "900x600", str(_film(tmp_path))])
    assert code == 0
    img = Image.open(out)
    assert img.size == (900, 600)
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    assert arr.std() > 10  # a film was drawn, not an empty grey window


def test_screenshot_of_a_bad_film_exits_non_zero_with_the_message(qtbot, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "shot.png"
    code = cli.main(["--screenshot", str(out), str(bad)])
    assert code != 0
    err = capsys.readouterr().err
    assert "Cannot open broken.png" in err and "Traceback" not in err
    assert not out.exists()


def test_version_and_unknown_model(qtbot, tmp_path, capsys):
    assert cli.main(["--version"]) == 0
    assert "CXR Viewer" in capsys.readouterr().out
    out = tmp_path / "m.png"
    code = cli.main(["--screenshot", str(out), "--size", "640x480", "--model", "no-such-model", str(_film(tmp_path))])
    assert code == 3 and out.exists()  # the window still opens, and says why there is no reading
    assert "no-such-model" in capsys.readouterr().err


def test_window_is_shown_before_torch_is_imported(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CXRVIEWER_TIMING="1", PYTHONPATH=str(REPO))
    out = tmp_path / "s.png"
    r = subprocess.run([sys.executable, "-m", "cxrviewer", "--screenshot", str(out), "--size", "640x480",
                        str(_film(tmp_path))], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "torch imported before show: False" in r.stderr
    assert out.exists()
