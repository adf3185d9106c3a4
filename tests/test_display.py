"""Display mapping (windows, VOI LUT, presets, inversion): the grey levels a reader sees."""

from pathlib import Path

import numpy as np
import pytest

from cxrviewer.film import Film, VoiLut, Window
from cxrviewer.film.display import apply_voi_lut, apply_window, default_window, preset_window, render


def _film(pixels, **kw):
    return Film(path=Path("x.dcm"), pixels=np.asarray(pixels, dtype=np.float32), kind="dicom", **kw)


def test_linear_window_follows_dicom_formula():
    # C.11.2.1.2.1: center 100, width 51 -> x <= 74.5 black, x > 124.5 white, linear between.
    x = np.array([0, 74, 75, 100, 124, 125, 1000], dtype=np.float32)
    y = apply_window(x, Window(100, 51))
    assert y[0] == 0 and y[1] == 0 and y[-1] == 255 and y[-2] == 255
    assert 120 <= y[3] <= 135
    assert np.all(np.diff(y.astype(int)) >= 0)


def test_linear_exact_and_sigmoid():
    x = np.linspace(0, 200, 201, dtype=np.float32)
    exact = apply_window(x, Window(100, 100, "LINEAR_EXACT"))
    assert exact[50] == 0 and exact[150] == 255 and exact[100] in (127, 128)
    sig = apply_window(x, Window(100, 100, "SIGMOID"))
    assert sig[100] in (127, 128)
    assert 0 < sig[50] < 50 and 205 < sig[150] < 255  # smooth, never clipped hard at the window edges
    assert np.all(np.diff(sig.astype(int)) >= 0)


def test_voi_lut_maps_and_clamps():
    lut = VoiLut(first_mapped=10, data=np.array([0, 1023, 4095], dtype=np.uint16), bits=12)
    out = apply_voi_lut(np.array([0, 10, 11, 12, 99], dtype=np.float32), lut)
    assert out.tolist() == [0, 0, 64, 255, 255]


def test_monochrome1_is_inverted_and_invert_toggles():
    f = _film([[0, 100]], windows=[Window(50, 101)], monochrome1=True)
    img = render(f)
    assert img[0, 0] > img[0, 1]  # low values bright on MONOCHROME1
    assert render(f, invert=True)[0, 0] < render(f, invert=True)[0, 1]


def test_default_window_falls_back_to_voi_lut_then_full_range():
    lut = VoiLut(0, np.arange(256, dtype=np.uint16), 8)
    assert default_window(_film([[0, 5]], voi_lut=lut)) is None
    w = default_window(_film([[-1000, 3000]]))
    assert w.center == pytest.approx(1000.5) and w.width == pytest.approx(4001)


def test_raster_8bit_default_is_identity():
    pixels = np.arange(256, dtype=np.float32).reshape(16, 16)
    f = Film(path=Path("a.png"), pixels=pixels, kind="raster", bits_stored=8)
    assert np.array_equal(render(f), pixels.astype(np.uint8))


def test_presets_order_lung_darker_than_bone():
    rng = np.random.default_rng(0)
    f = _film(rng.normal(1000, 300, (64, 64)))
    lung, bone = preset_window(f, "lung"), preset_window(f, "bone")
    assert lung.center < bone.center
    f1 = _film(f.pixels, monochrome1=True)  # on MONOCHROME1 the bright (bone) end is the low values
    assert preset_window(f1, "lung").center > preset_window(f1, "bone").center
    with pytest.raises(ValueError):
        preset_window(f, "nonsense")
