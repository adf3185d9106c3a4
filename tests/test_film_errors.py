"""Bad input: every case gives one FilmError naming the file and the reason, and leaves the file untouched."""

from __future__ import annotations

import builtins
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from dicom_factory import (
    BASIC_TEXT_SR,
    ENHANCED_CT_STORAGE,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
    compress,
    make_dataset,
    ramp,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate

from cxrviewer.film import FilmError, load_film
from cxrviewer.film import loader as loader_mod


def _png_bytes(shape=(200, 200)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(ramp(*shape, 0, 255, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _dicom_bytes(tmp_path, ds) -> bytes:
    return write(ds, tmp_path / "_src.dcm").read_bytes()


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims a huge size: the classic decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _garbage_encapsulated(syntax):
    ds = make_dataset(rows=64, cols=64)
    ds.PixelData = encapsulate([b"\x00not a codestream" * 40])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _with(ds, **changes):
    for k, v in changes.items():
        setattr(ds, k, v)
    return ds


def _without_pixels():
    ds = make_dataset(sop_class=BASIC_TEXT_SR, modality="SR")
    del ds.PixelData
    return ds


# Each case: file name, a function (tmp_path) -> bytes, and the reason the user must read.
CASES = [
    ("empty.dcm", lambda t: b"", "empty file (0 bytes)"),
    ("empty.png", lambda t: b"", "empty file (0 bytes)"),
    ("text.dcm", lambda t: b"Patient notes, not an image.\n" * 20, "not a DICOM file or a supported image"),
    ("text.png", lambda t: b"Patient notes, not an image.\n" * 20, "not a PNG image (unrecognised content)"),
    ("text.jpg", lambda t: b"BM but still text, honestly\n" * 5, "not a JPG image (unrecognised content)"),
    ("noext", lambda t: b"#!/bin/sh\necho hello\n", "not a DICOM file or a supported image (DICOM, PNG, JPEG, TIFF or BMP)"),
    ("cut_preamble.dcm", lambda t: bytes(100), "truncated DICOM file (it ends inside the header)"),
    (
        "cut_header.dcm",
        lambda t: _dicom_bytes(t, make_dataset(rows=64, cols=64))[:600],
        "truncated or corrupt DICOM file (it ends before the image is complete)",
    ),
    (
        "cut_pixels.dcm",
        lambda t: _dicom_bytes(t, make_dataset(rows=64, cols=64))[:-3000],
        "pixel data too short for the header: 5192 bytes, 64×64 needs 8192",
    ),
    (
        "cut_j2k.dcm",
        lambda t: (lambda b: b[: len(b) // 2])(_dicom_bytes(t, compress(make_dataset(rows=64, cols=64), JPEG2000Lossless))),
        "truncated or corrupt DICOM file (it ends before the image is complete)",
    ),
    ("cut.png", lambda t: (lambda b: b[: len(b) // 2])(_png_bytes()), "truncated image file"),
    ("cut_header.png", lambda t: _png_bytes()[:20], "truncated"),
    ("cut_signature.png", lambda t: _png_bytes()[:12], "truncated or corrupt PNG file (unreadable header)"),
    ("no_pixels.dcm", lambda t: _dicom_bytes(t, _without_pixels()), "DICOM file without pixel data (Basic Text SR Storage): not an image"),
    (
        "made_up_syntax.dcm",
        lambda t: _dicom_bytes(t, _with(make_dataset(), file_meta=_meta("1.2.3.4.5.6.7"))),
        "unsupported transfer syntax 1.2.3.4.5.6.7 (unknown UID)",
    ),
    (
        "deflate_unknown.dcm",
        lambda t: _dicom_bytes(t, _garbage_encapsulated("1.2.840.10008.1.2.4.100")),
        "unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level)",
    ),
    ("garbage_j2k.dcm", lambda t: _dicom_bytes(t, _garbage_encapsulated(JPEG2000)), "cannot decode the JPEG 2000 Image Compression pixel data (corrupt or unsupported"),
    ("garbage_rle.dcm", lambda t: _dicom_bytes(t, _garbage_encapsulated(RLELossless)), "cannot decode the RLE Lossless pixel data (corrupt or unsupported"),
    (
        "ct_volume.dcm",
        lambda t: _dicom_bytes(t, make_dataset(np.zeros((4, 16, 16), np.uint16), modality="CT", sop_class=ENHANCED_CT_STORAGE)),
        "3-D volume (CT, 4 frames), not a radiograph",
    ),
    (
        "bomb.dcm",
        lambda t: _dicom_bytes(t, _with(make_dataset(rows=16, cols=16), Rows=65535, Columns=65535)),
        "image too large: 65535×65535 = 4294.8 megapixels, above the limit of 60.0 megapixels",
    ),
    ("bomb.png", lambda t: _png_with_header(100_000, 100_000), "image too large: 100000×100000 = 10000.0 megapixels"),
    ("zero_rows.dcm", lambda t: _dicom_bytes(t, _with(make_dataset(rows=16, cols=16), Rows=0)), "invalid image size in the header (Rows 0, Columns 16)"),
    (
        "short_pixels.dcm",
        lambda t: _dicom_bytes(t, _with(make_dataset(rows=16, cols=16), Rows=2000)),
        "pixel data too short for the header: 512 bytes, 16×2000 needs 64000",
    ),
    (
        "bad_bits.dcm",
        lambda t: _dicom_bytes(t, _with(make_dataset(rows=16, cols=16), BitsStored=20)),
        "inconsistent header: Bits Stored 20 with Bits Allocated 16",
    ),
]


def _meta(syntax):
    from pydicom.dataset import FileMetaDataset

    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    m.MediaStorageSOPInstanceUID = "1.2.3.4"
    m.TransferSyntaxUID = syntax
    return m


@pytest.fixture
def no_writes(monkeypatch):
    """Fail the test if anything opens a file for writing while a film is being loaded."""
    real_open = builtins.open
    opened = []

    def guarded(file, mode="r", *args, **kwargs):
        opened.append((str(file), mode))
        if any(c in str(mode) for c in "wax+"):
            raise AssertionError(f"{file} opened for writing ({mode})")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    return opened


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom and Pillow warn about the junk on the way
@pytest.mark.parametrize("name, make, reason", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error_and_leaves_the_file_alone(tmp_path, name, make, reason, request):
    data = make(tmp_path)
    path = tmp_path / name
    path.write_bytes(data)
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns, path.stat().st_size)
    request.getfixturevalue("no_writes")
    with pytest.raises(FilmError) as info:
        load_film(path)
    err = info.value
    assert type(err) is FilmError
    assert str(err).startswith(f"Cannot open {name}: ")
    assert reason in err.reason, err.reason
    assert "\n" not in str(err) and "Traceback" not in str(err)
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns, path.stat().st_size) == before


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FilmError, match=r"^Cannot open nowhere\.dcm: file not found$"):
        load_film(tmp_path / "nowhere.dcm")
    with pytest.raises(FilmError, match="this is a folder, not a film"):
        load_film(tmp_path)


def test_pillow_own_bomb_guard_is_turned_into_film_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes((100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(FilmError, match="decompression bomb"):
        load_film(path, max_pixels=10**9)


def test_pixel_limit_argument_and_environment(tmp_path, monkeypatch):
    png = tmp_path / "film.png"
    png.write_bytes(_png_bytes((100, 100)))
    dcm = write(make_dataset(rows=100, cols=100), tmp_path / "film.dcm")
    for path in (png, dcm):
        with pytest.raises(FilmError, match="above the limit of 9999 pixels"):
            load_film(path, max_pixels=9999)
        assert load_film(path, max_pixels=10000).shape == (100, 100)
    monkeypatch.setenv("CXRVIEWER_MAX_PIXELS", "5000")
    with pytest.raises(FilmError, match="above the limit of 5000 pixels"):
        load_film(dcm)
    assert load_film(dcm, max_pixels=20000).shape == (100, 100)  # the argument wins over the environment
    monkeypatch.setenv("CXRVIEWER_MAX_PIXELS", "not a number")
    assert load_film(dcm).shape == (100, 100)
    assert loader_mod.DEFAULT_MAX_PIXELS >= 50_000_000


def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    import pydicom.pixels.decoders.base as base

    path = write(_with(make_dataset(rows=16, cols=16), Rows=20000, Columns=20000), tmp_path / "bomb.dcm")

    def no_decoding(*a, **k):
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(base.Decoder, "as_array", no_decoding)
    with pytest.raises(FilmError, match="image too large"):
        load_film(path)


def test_unexpected_exceptions_are_wrapped(tmp_path, monkeypatch):
    path = write(make_dataset(), tmp_path / "ok.dcm")
    import cxrviewer.film.dicom as dicom_mod

    def boom(*a, **k):
        raise KeyError("something internal")

    monkeypatch.setattr(dicom_mod, "_windows", boom)
    with pytest.raises(FilmError, match=r"^Cannot open ok\.dcm: unreadable file: 'something internal'$"):
        load_film(path)


def test_loaded_dicom_and_png_are_not_modified(tmp_path, request):
    dcm = write(make_dataset(), tmp_path / "ok.dcm")
    png = tmp_path / "ok.png"
    png.write_bytes(_png_bytes())
    before = {p: p.read_bytes() for p in (dcm, png)}
    no_writes = request.getfixturevalue("no_writes")
    for p in (dcm, png):
        load_film(p)
    assert {p: p.read_bytes() for p in (dcm, png)} == before
    assert any(mode == "rb" for _, mode in no_writes)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(min_size=1, max_size=400),
    suffix=st.sampled_from([".dcm", ".png", ".jpg", ".tif", ""]),
    prefix=st.sampled_from([b"", bytes(128) + b"DICM", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"\x08\x00\x05\x00CS"]),
)
def test_random_bytes_only_ever_raise_film_error(tmp_path, data, suffix, prefix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(prefix + data)
    try:
        film = load_film(path)
    except FilmError as err:
        assert str(err).startswith(f"Cannot open fuzz{suffix}: ")
    else:  # a few random byte strings are valid tiny images; they must then be real films
        assert film.pixels.ndim == 2 and film.pixels.dtype == np.float32


def test_missing_decoder_plugin_is_named(tmp_path, monkeypatch):
    import pydicom.pixels

    path = write(compress(make_dataset(rows=64, cols=64), JPEG2000Lossless), tmp_path / "j2k.dcm")
    real = pydicom.pixels.get_decoder

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg>=2.0"]

        def __init__(self, uid):
            self.uid = real(uid).UID

    monkeypatch.setattr(pydicom.pixels, "get_decoder", Unavailable)
    with pytest.raises(FilmError) as info:
        load_film(path)
    assert info.value.reason == (
        "no decoder installed for JPEG 2000 Image Compression (Lossless Only) (pylibjpeg-openjpeg>=2.0)"
    )
