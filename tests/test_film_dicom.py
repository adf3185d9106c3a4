"""DICOM loading: the grey values and metadata a reader relies on, from pydicom-generated fixtures.

Tests marked ``shared`` also open the real files in ../shared/data/dicom and skip when it is absent.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from conftest import shared_path
from dicom_factory import (
    DX_STORAGE,
    JPEG2000,
    PHI,
    SC_STORAGE,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    compress,
    make_dataset,
    modality_lut_sequence,
    ramp,
    voi_lut_sequence,
    write,
)
from PIL import Image

from cxrviewer.film import Film, VoiLut, Window, load_film
from cxrviewer.film.display import default_window, full_range_window, render


def _load(tmp_path, ds, name="film.dcm", **write_kw) -> Film:
    return load_film(write(ds, tmp_path / name, **write_kw))


# ------------------------------------------------------------------------------------- modality LUT


def test_rescale_slope_intercept_gives_float32_modality_values(tmp_path):
    raw = ramp(40, 32, 0, 4095)
    film = _load(tmp_path, make_dataset(raw, RescaleSlope="2", RescaleIntercept="-1000", Modality="DX"))
    assert film.pixels.dtype == np.float32 and film.pixels.shape == (40, 32)
    np.testing.assert_array_equal(film.pixels, raw.astype(np.float32) * 2 - 1000)
    assert film.kind == "dicom" and film.modality == "DX" and film.bits_stored == 12


def test_modality_lut_sequence_maps_signed_values_and_clamps_outside(tmp_path):
    raw = np.array([[-2048, -10, 0], [5, 100, 2047]], dtype=np.int16)
    table = (np.arange(200) * 3 + 7).astype(np.uint16)  # covers -10 .. 189
    ds = make_dataset(raw, signed=True, ModalityLUTSequence=modality_lut_sequence(-10, table))
    film = _load(tmp_path, ds)
    expected = np.array([[7, 7, 37], [52, 337, table[-1]]], dtype=np.float32)
    np.testing.assert_array_equal(film.pixels, expected)


# ------------------------------------------------------------------------------------------ VOI / windows


def test_several_windows_keep_their_explanations_and_the_first_is_default(tmp_path):
    ds = make_dataset(
        WindowCenter=["2000", "1000"],
        WindowWidth=["4000", "500"],
        WindowCenterWidthExplanation=["NORMAL", "HARDER"],
    )
    film = _load(tmp_path, ds)
    assert film.windows == [Window(2000, 4000, "LINEAR", "NORMAL"), Window(1000, 500, "LINEAR", "HARDER")]
    assert default_window(film) == film.windows[0]
    assert not np.array_equal(render(film), render(film, film.windows[1]))


def test_windows_without_explanation_get_labels_and_invalid_width_is_dropped(tmp_path):
    film = _load(tmp_path, make_dataset(WindowCenter=["100", "200"], WindowWidth=["0", "50"]))
    assert film.windows == [Window(200, 50, "LINEAR", "File window 2")]
    assert any("Invalid window" in n for n in film.notes)


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_voi_lut_function_is_carried_into_the_window_and_rendered(tmp_path, function):
    ds = make_dataset(WindowCenter="2048", WindowWidth="1024", VOILUTFunction=function)
    film = _load(tmp_path, ds)
    assert film.windows[0].function == function
    linear = render(film, Window(2048, 1024, "LINEAR"))
    shown = render(film)
    assert not np.array_equal(shown, linear)
    near_center = np.unravel_index(np.argmin(np.abs(film.pixels - 2048)), film.shape)
    assert abs(float(film.pixels[near_center]) - 2048) < 20
    assert 115 <= shown[near_center] <= 140  # both functions put the centre at mid-grey


def test_voi_lut_sequence_becomes_the_default_display(tmp_path):
    raw = ramp(40, 32, 0, 255, np.uint8)
    lut = (255 - np.arange(256)).astype(np.uint16) * 257  # an inverting 16-bit LUT
    ds = make_dataset(raw, bits_allocated=8, bits_stored=8, VOILUTSequence=voi_lut_sequence(0, lut, 16, "INVERT"))
    film = _load(tmp_path, ds)
    assert isinstance(film.voi_lut, VoiLut)
    assert film.voi_lut.first_mapped == 0 and film.voi_lut.bits == 16 and film.voi_lut.label == "INVERT"
    np.testing.assert_array_equal(film.voi_lut.data, lut)
    assert film.windows == [] and default_window(film) is None
    np.testing.assert_array_equal(render(film), 255 - raw)


# --------------------------------------------------------------------------------- photometric, bits


def test_monochrome1_is_flagged_not_inverted_and_rendered_inverted(tmp_path):
    raw = ramp(40, 32, 0, 4095)
    m1 = _load(tmp_path, make_dataset(raw, photometric="MONOCHROME1", WindowCenter="2048", WindowWidth="4096"), "m1.dcm")
    m2 = _load(tmp_path, make_dataset(raw, WindowCenter="2048", WindowWidth="4096"), "m2.dcm")
    assert m1.monochrome1 and not m2.monochrome1
    np.testing.assert_array_equal(m1.pixels, m2.pixels)
    np.testing.assert_array_equal(render(m1), 255 - render(m2))
    assert render(m1)[0, 0] == 255  # the lowest value (no attenuation) is white in MONOCHROME1


def test_unused_high_bits_are_masked(tmp_path):
    true = ramp(40, 32, 0, 4095)
    garbage = (true | 0xA000).astype(np.uint16)  # overlay/garbage bits above Bits Stored 12
    film = _load(tmp_path, make_dataset(garbage, bits_stored=12))
    np.testing.assert_array_equal(film.pixels, true.astype(np.float32))


def test_signed_pixels_are_sign_extended_from_bits_stored(tmp_path):
    true = np.array([[-2048, -1, 0], [1, 1000, 2047]], dtype=np.int16)
    stored = (true.view(np.uint16) & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, high bits zero
    film = _load(tmp_path, make_dataset(stored, bits_stored=12, signed=True))
    np.testing.assert_array_equal(film.pixels, true.astype(np.float32))


@pytest.mark.parametrize("photometric, darkest", [("MONOCHROME2", "min"), ("MONOCHROME1", "max")])
def test_padding_pixels_are_background_and_excluded_from_the_full_range(tmp_path, photometric, darkest):
    raw = ramp(40, 32, 1000, 3000)
    raw[:5, :] = 0  # a padded border
    film = _load(tmp_path, make_dataset(raw, photometric=photometric, PixelPaddingValue=0))
    real = raw[5:, :].astype(np.float32)
    lo, hi = film.value_range()
    assert (lo, hi) == (real.min(), real.max())
    assert np.all(film.pixels[:5] == getattr(real, darkest)())
    assert full_range_window(film.pixels).width == pytest.approx(real.max() - real.min() + 1)
    assert any("padding" in n for n in film.notes)
    assert np.all(render(film)[:5] == 0)  # black on screen either way


def test_signed_padding_value_and_range_limit(tmp_path):
    raw = ramp(40, 32, 0, 2000).astype(np.int16)
    raw[:, :4] = -2000  # padding band, and a second padding value inside the range limit
    raw[:, 4:6] = -1990
    film = _load(tmp_path, make_dataset(raw, signed=True, PixelPaddingValue=-2000, PixelPaddingRangeLimit=-1990))
    assert film.value_range()[0] == raw[:, 6:].min() and "240 padding pixels" in " ".join(film.notes)


def test_rgb_interleaved_and_planar_give_pillow_luminance(tmp_path):
    r = ramp(40, 32, 0, 255, np.uint8)
    rgb = np.stack([r, r[::-1], np.full_like(r, 77)], axis=-1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    for planar in (0, 1):
        ds = make_dataset(rgb, bits_allocated=8, bits_stored=8, photometric="RGB", planar=planar, sop_class=SC_STORAGE)
        film = _load(tmp_path, ds, f"rgb{planar}.dcm")
        np.testing.assert_array_equal(film.pixels, expected)
        assert any("luminance" in n for n in film.notes)


def test_multiframe_shows_the_first_frame_and_says_so(tmp_path):
    frames = np.stack([ramp(40, 32, 0, 4095), np.full((40, 32), 7, np.uint16), np.zeros((40, 32), np.uint16)])
    film = _load(tmp_path, make_dataset(frames, modality="DX", sop_class=DX_STORAGE))
    np.testing.assert_array_equal(film.pixels, frames[0].astype(np.float32))
    assert "Frame 1 of 3 shown." in film.notes and film.info["frames"] == 3


# --------------------------------------------------------------------------------------- spacing


def test_pixel_spacing_wins_over_imager_pixel_spacing(tmp_path):
    film = _load(tmp_path, make_dataset(PixelSpacing=[0.139, 0.14], ImagerPixelSpacing=[0.15, 0.15]))
    assert film.pixel_spacing == (0.139, 0.14) and film.spacing_source == "Pixel Spacing"


def test_imager_pixel_spacing_is_recorded_as_such(tmp_path):
    film = _load(tmp_path, make_dataset(ImagerPixelSpacing=[0.15, 0.16]))
    assert film.pixel_spacing == (0.15, 0.16) and film.spacing_source == "Imager Pixel Spacing"
    assert "Imager Pixel Spacing" in film.info["spacing"]


def test_zero_spacing_is_ignored(tmp_path):
    film = _load(tmp_path, make_dataset(PixelSpacing=[0, 0]))
    assert film.pixel_spacing is None and film.spacing_source == ""


# ------------------------------------------------------------------------------ no meta, compression


@pytest.mark.parametrize("implicit", [True, False])
def test_files_without_file_meta_header(tmp_path, implicit):
    raw = ramp(40, 32, 0, 4095)
    name = "1.2.840.113619.2.55" if implicit else "old"  # archives name such files by UID, or not at all
    path = write(make_dataset(raw, WindowCenter="100", WindowWidth="200"), tmp_path / name, meta=False, implicit=implicit)
    assert path.read_bytes()[128:132] != b"DICM"
    film = load_film(path)
    np.testing.assert_array_equal(film.pixels, raw.astype(np.float32))
    expected = "Implicit VR Little Endian" if implicit else "Explicit VR Little Endian"
    assert f"No file meta header: read as {expected}." in film.notes
    assert film.windows[0].center == 100


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_lossless_compressed_syntaxes_decode_exactly(tmp_path, syntax):
    raw = ramp(40, 32, 0, 4095)
    ds = compress(make_dataset(raw, RescaleSlope="1", RescaleIntercept="-1024"), syntax)
    assert ds.file_meta.TransferSyntaxUID == syntax
    film = _load(tmp_path, ds)
    np.testing.assert_array_equal(film.pixels, raw.astype(np.float32) - 1024)
    assert film.info["transfer_syntax"] == syntax.name


def test_jpeg2000_lossy_is_close_and_noted(tmp_path):
    raw = ramp(64, 64, 0, 4095)
    film = _load(tmp_path, compress(make_dataset(raw), JPEG2000, j2k_cr=[4]))
    assert np.mean(np.abs(film.pixels - raw)) < 60
    assert any(n.startswith("Lossy compressed") for n in film.notes)


def test_jpeg_baseline_grey_and_colour(tmp_path):
    grey = ramp(48, 48, 0, 255, np.uint8)
    film = _load(tmp_path, compress(make_dataset(grey, bits_allocated=8, bits_stored=8), JPEGBaseline8Bit), "g.dcm")
    assert np.mean(np.abs(film.pixels - grey)) < 3
    rgb = np.stack([grey, grey, grey], axis=-1)
    ds = make_dataset(rgb, bits_allocated=8, bits_stored=8, photometric="RGB", sop_class=SC_STORAGE)
    film = _load(tmp_path, compress(ds, JPEGBaseline8Bit), "c.dcm")
    assert film.pixels.ndim == 2 and np.mean(np.abs(film.pixels - grey)) < 3


def test_jpeg_extended_12bit_from_pydicom_test_data():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPGExtended.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's bundled test data is not installed")
    film = load_film(path)
    ref = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(film.pixels, ref.astype(np.float32))
    assert film.info["transfer_syntax"] == "JPEG Extended (Process 2 and 4)"


def test_presentation_lut_shape_inverse_flips_the_default_display(tmp_path):
    film = _load(tmp_path, make_dataset(PresentationLUTShape="INVERSE", modality="DX", sop_class=DX_STORAGE))
    assert film.monochrome1 and any("INVERSE" in n for n in film.notes)


def test_single_ct_slice_loads_with_a_note(tmp_path):
    film = _load(tmp_path, make_dataset(modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2", RescaleIntercept="-1024", RescaleSlope="1"))
    assert film.value_range()[0] == -1024 and any("CT slice shown" in n for n in film.notes)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle_2frame.dcm"])
def test_colour_encodings_from_pydicom_test_data(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip("pydicom's bundled test data is not installed")
    film = load_film(path)
    rgb = pydicom.pixels.pixel_array(path, index=0) if "palette" not in name else None
    if rgb is not None:  # pydicom gives RGB; we give Pillow's luminance of it
        expected = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L"), dtype=np.float32)
        np.testing.assert_array_equal(film.pixels, expected)
    assert film.pixels.ndim == 2 and film.pixels.std() > 5
    assert any("converted to grey" in n for n in film.notes)


# ------------------------------------------------------------------------------ info, phi, tags, logs


def test_info_has_no_identifiers_and_age_is_computed_without_the_birth_date(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ds = make_dataset(
        ImagerPixelSpacing=[0.15, 0.15],
        OtherPatientIDsSequence=pydicom.Sequence([pydicom.Dataset(), pydicom.Dataset()]),
    )
    film = _load(tmp_path, ds)
    assert film.info["patient_age"] == "053Y"  # 1970-06-15 -> 2024-03-01
    for key in ("modality", "patient_sex", "view_position", "body_part", "study_date", "manufacturer",
                "size", "bits_stored", "photometric", "transfer_syntax", "spacing"):
        assert key in film.info, key
    assert film.info["study_date"] == "2024-03-01" and film.info["size"] == "32×40"
    assert film.phi["patient_name"] == "Doe^Jane" and film.phi["patient_id"] == "PID-0001"
    assert film.phi["birth_date"] == "19700615" and film.phi["accession_number"] == "ACC-42"
    assert film.phi["institution"] == PHI["InstitutionName"] and film.phi["referring_physician"] == "House^Gregory"
    public = " ".join(map(str, film.info.values())) + " ".join(film.notes) + caplog.text
    for secret in list(PHI.values()) + ["1970"]:
        assert secret not in public, secret

    rows = {r.keyword: r for r in film.tags}
    assert "PixelData" not in rows
    assert rows["PatientName"].is_phi and rows["PatientID"].is_phi and rows["PatientBirthDate"].is_phi
    assert rows["AccessionNumber"].is_phi and rows["InstitutionName"].is_phi
    assert not rows["Modality"].is_phi and not rows["Rows"].is_phi
    assert rows["OtherPatientIDsSequence"].value == "<sequence, 2 items>"
    assert rows["Rows"].tag == "(0028,0010)" and rows["Rows"].vr == "US" and rows["Rows"].value == "40"
    assert rows["TransferSyntaxUID"].value.endswith("(Explicit VR Little Endian)")


def test_patient_age_attribute_wins_and_no_phi_when_absent(tmp_path):
    film = _load(tmp_path, make_dataset(phi=False, PatientAge="007Y"))
    assert film.info["patient_age"] == "007Y"
    assert set(film.phi) <= {"study_instance_uid", "sop_instance_uid"}


def test_render_gives_uint8_of_the_film_shape(tmp_path):
    film = _load(tmp_path, make_dataset(WindowCenter="2048", WindowWidth="4096"))
    out = render(film)
    assert out.dtype == np.uint8 and out.shape == film.shape


# ----------------------------------------------------------------------------- real files (../shared)

REAL = [
    "CR_chest_CR-MONO1-10-chest.dcm",
    "CR_chest_RG1_J2KI.dcm",
    "CR_chest_RG1_JLSN.dcm",
    "CR_extremity_RG3_J2KI.dcm",
    "CR_extremity_RG3_J2KR.dcm",
    "CR_hip_RG2_JLSL.dcm",
    "CR_hip_RG2_JPLL.dcm",
    "CR_hip_RG2_JPLY_fixed.dcm",
    "CR_teeth_ModalityLUTSequence_JPLL.dcm",
    "DX_chest_NIH_nofinding.dcm",
    "OT_mlut_18_ModalityLUTSequence.dcm",
    "OT_vlut_04_VOILUTSequence.dcm",
]


@pytest.mark.shared
@pytest.mark.parametrize("name", REAL)
def test_real_dicom_files_load(name):
    path = shared_path("dicom", name)
    film = load_film(path)
    assert film.pixels.ndim == 2 and film.pixels.dtype == np.float32 and film.pixels.size > 10_000
    assert film.monochrome1 == (name.startswith("CR_") and ("chest" in name or "extremity" in name or "teeth" in name))
    img = render(film)
    assert img.std() > 10  # a real picture, not a flat field
    if "CR-MONO1-10" in name:
        assert "No file meta header: read as Implicit VR Little Endian." in film.notes
        assert film.windows[0] == Window(550, 1024, "LINEAR", "File window 1")
    if name == "CR_chest_RG1_J2KI.dcm":
        assert film.shape == (1955, 1841) and film.bits_stored == 15
        assert film.value_range() == (803.0, 26512.0)
    if name == "CR_chest_RG1_JLSN.dcm":
        assert film.info["transfer_syntax"].startswith("JPEG-LS")
        assert abs(film.value_range()[1] - 26481.0) < 1
    if "ModalityLUTSequence" in name:
        ds = pydicom.dcmread(path)
        expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(film.pixels, expected.astype(np.float32))
    if "VOILUTSequence" in name:
        ds = pydicom.dcmread(path)
        assert film.voi_lut is not None and film.voi_lut.bits == 16
        expected = pydicom.pixels.apply_voi(ds.pixel_array, ds).astype(np.float64) * 255 / 65535
        assert np.max(np.abs(img - np.rint(expected))) <= 1
