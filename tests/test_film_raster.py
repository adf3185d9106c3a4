"""PNG / JPEG / TIFF / BMP loading, folder listing, and the bundled sample films."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import REPO_ROOT, shared_path
from dicom_factory import make_dataset, ramp, write
from PIL import Image

from cxrviewer.film import load_film
from cxrviewer.film.display import render
from cxrviewer.film.loader import is_supported_path, iter_films

SAMPLES = REPO_ROOT / "resources" / "samples"


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_png_8bit_grey_is_exact_and_renders_as_is(tmp_path):
    a = ramp(50, 40, 0, 255, np.uint8)
    film = load_film(_save(Image.fromarray(a), tmp_path / "g.png"))
    assert film.kind == "raster" and film.bits_stored == 8 and film.pixels.dtype == np.float32
    np.testing.assert_array_equal(film.pixels, a)
    np.testing.assert_array_equal(render(film), a)  # 8-bit raster: the identity window
    assert film.info["format"] == "PNG" and film.info["size"] == "40×50" and film.phi == {}


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("TIFF", ".tif")])
def test_16bit_grey_keeps_its_values(tmp_path, fmt, suffix):
    a = ramp(50, 40, 100, 60000, np.uint16)
    img = Image.fromarray(a)  # mode I;16
    assert img.mode == "I;16"
    film = load_film(_save(img, tmp_path / f"g16{suffix}", format=fmt))
    assert film.bits_stored == 16
    np.testing.assert_array_equal(film.pixels, a.astype(np.float32))
    shown = render(film)
    assert shown[film.pixels == 100].max() == 0 and shown[film.pixels == 60000].min() == 255  # full range


def test_rgb_and_rgba_become_pillow_luminance_alpha_ignored(tmp_path):
    r = ramp(50, 40, 0, 255, np.uint8)
    rgb = np.stack([r, r[::-1], np.full_like(r, 200)], axis=-1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    film = load_film(_save(Image.fromarray(rgb), tmp_path / "c.png"))
    np.testing.assert_array_equal(film.pixels, expected)
    assert any("luminance" in n for n in film.notes)
    rgba = np.concatenate([rgb, ramp(50, 40, 0, 255, np.uint8)[..., None]], axis=-1)
    film = load_film(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "c4.png"))
    np.testing.assert_array_equal(film.pixels, expected)


def test_grey_saved_as_rgb_needs_no_note(tmp_path):
    a = ramp(50, 40, 0, 255, np.uint8)
    film = load_film(_save(Image.fromarray(np.stack([a] * 3, -1)), tmp_path / "grey_rgb.bmp"))
    np.testing.assert_array_equal(film.pixels, a)
    assert film.notes == [] and film.info["format"] == "BMP"


def test_palette_png(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, 10:20] = (255, 0, 0)
    rgb[:, 20:] = (0, 0, 255)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    film = load_film(_save(pal, tmp_path / "p.png"))
    assert set(np.unique(film.pixels)) == {0.0, 76.0, 29.0}  # black, red and blue as Pillow's L gives them


def test_jpeg_baseline_grey(tmp_path):
    a = ramp(64, 64, 0, 255, np.uint8)
    film = load_film(_save(Image.fromarray(a), tmp_path / "g.jpeg", quality=95))
    assert film.shape == (64, 64) and np.mean(np.abs(film.pixels - a)) < 3 and film.info["format"] == "JPEG"


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 60), np.uint8)
    a[:, :10] = 255  # bright band on the left of the stored image
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display needs a 90° clockwise turn
    path = _save(img, tmp_path / "o.jpg", exif=exif.tobytes(), quality=100)
    film = load_film(path)
    assert film.shape == (60, 20)
    assert film.pixels[:10].mean() > 200 and film.pixels[-10:].mean() < 50  # the band is now on top
    assert "EXIF orientation 6 applied." in film.notes


def test_multipage_tiff_shows_first_page(tmp_path):
    pages = [Image.fromarray(np.full((10, 12), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "m.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    film = load_film(path)
    assert np.all(film.pixels == 10) and "Frame 1 of 2 shown." in film.notes


def test_content_wins_over_extension(tmp_path):
    a = ramp(20, 20, 0, 255, np.uint8)
    png_named_dcm = _save(Image.fromarray(a), tmp_path / "really_png.dcm", format="PNG")
    assert load_film(png_named_dcm).kind == "raster"
    dcm_named_png = write(make_dataset(rows=20, cols=20), tmp_path / "really_dicom.png")
    assert load_film(dcm_named_png).kind == "dicom"


# ---------------------------------------------------------------------------- listing and detection


def test_is_supported_path(tmp_path):
    for name in ("a.dcm", "b.DICOM", "c.png", "d.JPG", "e.jpeg", "f.tif", "g.tiff", "h.bmp"):
        assert is_supported_path(tmp_path / name), name
    for name in ("a.txt", "b.gif", ".hidden.png", "DICOMDIR", "notes.md"):
        assert not is_supported_path(tmp_path / name), name
    raw = write(make_dataset(), tmp_path / "IM000001", meta=True)
    plain = tmp_path / "README"
    plain.write_text("not a film")
    uid_named = write(make_dataset(), tmp_path / "1.2.840.113619.2.55")
    assert is_supported_path(raw) and is_supported_path(uid_named) and not is_supported_path(plain)


def test_iter_films_recursive_natural_order_skipping_hidden(tmp_path):
    a = Image.fromarray(np.zeros((4, 4), np.uint8))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    for rel in ("film10.png", "film2.png", "sub/x.jpg", "sub/deeper/y.tif", ".cache/z.png", ".hidden.png"):
        a.save(tmp_path / rel)
    write(make_dataset(), tmp_path / "sub" / "IM0001")
    (tmp_path / "DICOMDIR").write_bytes(bytes(128) + b"DICM")
    (tmp_path / "notes.txt").write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_films(tmp_path)]
    assert found == ["film2.png", "film10.png", "sub/deeper/y.tif", "sub/IM0001", "sub/x.jpg"]


# ---------------------------------------------------------------------------------- real films


def test_bundled_samples_load():
    paths = sorted(p for p in SAMPLES.iterdir() if is_supported_path(p))
    assert len(paths) >= 4
    for p in paths:
        film = load_film(p)
        assert min(film.shape) >= 256 and render(film).std() > 20, p.name
        assert p.stat().st_size < 1_100_000
    dicoms = [load_film(p) for p in paths if p.suffix == ".dcm"]
    assert any(f.info.get("sop_class") == "Secondary Capture Image Storage" for f in dicoms)


@pytest.mark.shared
def test_real_kermany_films_load_as_8bit_grey():
    folder = shared_path("kermany-fullres")
    films = list(iter_films(folder))
    assert len(films) == 30
    for p in films[::5]:
        film = load_film(p)
        assert film.bits_stored == 8 and film.kind == "raster" and min(film.shape) >= 400
        ref = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        np.testing.assert_array_equal(film.pixels, ref)
