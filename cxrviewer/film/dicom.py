"""DICOM decoder behind :func:`cxrviewer.film.loader.load_film`.

The header is read first with large values deferred, so every refusal (no pixel data, 3-D volume,
unsupported transfer syntax, decompression bomb, pixel data shorter than the header promises) happens
before a single pixel is decoded. Only the first frame is ever decoded: a radiograph is one frame, and a
multi-frame file must not cost the memory of all of them.

pydicom does the parts it does well (parsing, transfer syntaxes, decompression through pylibjpeg /
pyjpegls, unused-bit masking and sign extension, colour-space conversion, parsing LUT data). The two
full-resolution steps, rescale and LUT lookup, are done here in float32 because pydicom's helpers
produce float64 copies that cost a third of the open time on a large film.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path

import numpy as np

from cxrviewer.film.types import NOT_A_FILM, Film, FilmError, TagRow, VoiLut, Window

# pydicom warns about a damaged file with its full path ("End of file reached ... in file /…/DOE^JOHN/…"),
# whose folders may name the patient where our messages give only the file name. Reading is forgiving on
# purpose and every refusal has a message of our own (FilmError), so its warnings add nothing for a reader.
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")

# Values larger than this are read only when touched: Pixel Data, big LUTs, private blobs.
_DEFER_SIZE = 16 * 1024

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float / Double Float Pixel Data

# Attributes that identify a person or can be linked back to one (after DICOM PS3.15 Annex E,
# Basic Application Level Confidentiality Profile, which also removes free-text descriptions because
# they can hold names). Person names (VR PN) and private elements are treated as identifiers as well,
# whatever their keyword.
PHI_KEYWORDS = frozenset(
    """
    PatientName PatientID IssuerOfPatientID OtherPatientIDs OtherPatientIDsSequence OtherPatientNames
    PatientBirthDate PatientBirthTime PatientBirthName PatientMotherBirthName PatientAddress
    PatientTelephoneNumbers PatientInsurancePlanCodeSequence MilitaryRank BranchOfService
    MedicalRecordLocator EthnicGroup Occupation AdditionalPatientHistory PatientComments
    PatientReligiousPreference CountryOfResidence RegionOfResidence ResponsiblePerson
    ResponsibleOrganization AccessionNumber StudyID InstitutionName InstitutionAddress
    InstitutionalDepartmentName InstitutionCodeSequence ReferringPhysicianName
    ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers PerformingPhysicianName
    NameOfPhysiciansReadingStudy PhysiciansOfRecord RequestingPhysician OperatorsName
    StationName DeviceSerialNumber PlateID DetectorID CassetteID GantryID
    StudyInstanceUID SeriesInstanceUID SOPInstanceUID MediaStorageSOPInstanceUID FrameOfReferenceUID
    RequestAttributesSequence RequestedProcedureID ScheduledProcedureStepID PerformedProcedureStepID
    AdmissionID ImageComments StudyComments RequestedProcedureDescription
    ContentCreatorName ProtocolName StudyDescription SeriesDescription PerformedProcedureStepDescription
    DerivationDescription
    """.split()
)

# What goes into ``Film.phi``: the identifiers a reader might need to match a film to a patient.
_PHI_FIELDS = (
    ("patient_name", "PatientName"),
    ("patient_id", "PatientID"),
    ("birth_date", "PatientBirthDate"),
    ("other_patient_ids", "OtherPatientIDs"),
    ("accession_number", "AccessionNumber"),
    ("study_id", "StudyID"),
    ("institution", "InstitutionName"),
    ("institution_address", "InstitutionAddress"),
    ("department", "InstitutionalDepartmentName"),
    ("referring_physician", "ReferringPhysicianName"),
    ("performing_physician", "PerformingPhysicianName"),
    ("operators", "OperatorsName"),
    ("station_name", "StationName"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
)

# Modalities whose multi-frame objects are volumes or time series, not projection radiographs.
_VOLUME_MODALITIES = {"CT", "MR", "PT", "NM", "US", "XA", "RF", "OCT", "OPT", "IVOCT"}
_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.3",  # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # X-Ray 3D Angiographic
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
}

_MONO = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")


def read_dicom(path: Path, max_pixels: int, head: bytes = b"") -> Film:
    """Decode the first frame of a DICOM file into a :class:`Film` (raises only :class:`FilmError`)."""
    path = Path(path)
    notes: list = []
    ds = _read_header(path, head, notes)
    _check_image(path, ds, max_pixels)
    raw, frames = _decode_first_frame(path, ds)
    if frames > 1:
        notes.append(f"Frame 1 of {frames} shown.")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    raw = _to_grey(path, ds, raw, photometric, notes)
    padding = _padding_mask(ds, raw) if photometric in _MONO else None

    pixels = _modality(path, ds, raw)
    del raw

    monochrome1 = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "") or "").strip().upper() == "INVERSE" and photometric in _MONO:
        monochrome1 = not monochrome1
        notes.append("Presentation LUT Shape INVERSE: displayed inverted.")

    if padding is not None:
        n_pad = int(np.count_nonzero(padding))
        if 0 < n_pad < padding.size:
            real = pixels[~padding]
            # Padding is shown as the darkest grey: black on screen is the lowest value for
            # MONOCHROME2 and the highest for MONOCHROME1. It then cannot stretch the full-range window.
            pixels[padding] = real.max() if monochrome1 else real.min()
            notes.append(f"{n_pad} padding pixels (Pixel Padding Value) shown as background.")

    windows = _windows(ds, notes)
    voi_lut = _voi_lut(path, ds, notes)
    spacing, spacing_source = _spacing(ds, notes)
    _lossy_note(ds, notes)

    modality = str(ds.get("Modality", "") or "").strip()
    if modality in _VOLUME_MODALITIES and modality not in ("XA", "RF", "US"):
        notes.append(f"{modality} slice shown: this viewer is meant for projection radiographs.")
    bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8) or 8)
    info = _info(ds, pixels.shape, photometric, spacing, spacing_source, frames)
    return Film(
        path=path,
        pixels=pixels,
        kind="dicom",
        windows=windows,
        voi_lut=voi_lut,
        monochrome1=monochrome1,
        pixel_spacing=spacing,
        spacing_source=spacing_source,
        modality=modality,
        info=info,
        phi=_phi(ds),
        tags=_tags(ds),
        notes=notes,
        bits_stored=bits_stored,
    )


# --------------------------------------------------------------------------------------------- header


def _read_header(path: Path, head: bytes, notes: list):
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    # pydicom's value-validation warnings quote the offending value, which may be a patient name, into
    # the log; reading is forgiving anyway, so they carry nothing a reader or a log needs.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if head[128:132] == b"DICM" and _is_deflated(path):
        # pydicom inflates the whole dataset in memory before anything can be checked: a 2 MB file can
        # inflate to gigabytes (and the size checks below assume offsets in the file, not in the inflated data).
        raise FilmError(path, "unsupported transfer syntax 1.2.840.10008.1.2.1.99 (Deflated Explicit VR Little Endian)")
    try:
        ds = pydicom.dcmread(str(path), force=True, defer_size=_DEFER_SIZE)
    except EOFError:
        raise FilmError(path, "truncated DICOM file (it ends inside the header)") from None
    except Exception as exc:  # pydicom raises many types on garbage; one message for the reader
        raise FilmError(path, f"not a readable DICOM file ({_short(exc)})") from None

    if not _has_pixel_data(ds):
        # pydicom stops quietly at the end of a short file and drops a dataset whose encapsulated pixel
        # data runs off the end; tell those apart from files that really have no image.
        try:
            hdr = pydicom.dcmread(str(path), force=True, stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            hdr = ds
        if len(hdr) > len(ds) or _ends_early(path, ds):
            raise FilmError(path, "truncated or corrupt DICOM file (it ends before the image is complete)")
    if len(ds) == 0 or not any(k in ds for k in ("Rows", "Columns", "PixelData", "SOPClassUID", "Modality")):
        if head[128:132] == b"DICM":
            raise FilmError(path, "DICOM file without an image header (no Rows, Columns or Pixel Data)")
        raise FilmError(path, NOT_A_FILM)

    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not tsuid:
        # A file without a file meta header (pre-Part 10, or a raw dataset): pydicom has guessed the
        # encoding while parsing, and the decoders need it recorded as a transfer syntax.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            implicit = True
        if little is None:
            little = True
        if implicit:
            uid = ImplicitVRLittleEndian
        else:
            uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
        notes.append(f"No file meta header: read as {uid.name}.")
    return ds


def _is_deflated(path: Path) -> bool:
    """Whether the file meta header names the deflated transfer syntax (read alone: a few hundred bytes)."""
    from pydicom.filereader import read_file_meta_info

    try:
        ts = read_file_meta_info(str(path)).get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 - the full read reports what is wrong with the header
        return False
    return ts is not None and str(ts).strip("\x00 ") == "1.2.840.10008.1.2.1.99"


def _has_pixel_data(ds) -> bool:
    return any(ds.get_item(t) is not None for t in _PIXEL_TAGS)


def _ends_early(path: Path, ds) -> bool:
    """Whether the last element read claims bytes beyond the end of the file, or a tag was cut in half."""
    keys = list(ds.keys())
    if not keys:
        return False
    last = ds.get_item(max(keys))
    length, tell = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:
        return False
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    end = int(tell) + int(length)
    return end > size or 0 < size - end < 8


def _check_image(path: Path, ds, max_pixels: int) -> None:
    """Every refusal that the header alone can justify, before any pixel is decoded."""
    if not _has_pixel_data(ds):
        sop = ds.get("SOPClassUID")
        what = f" ({sop.name})" if sop is not None and getattr(sop, "name", "") and sop.name != str(sop) else ""
        raise FilmError(path, f"DICOM file without pixel data{what}: not an image")
    if ds.get_item(0x7FE00010) is None:
        raise FilmError(path, "float pixel data (parametric map), not a radiograph")

    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows <= 0 or cols <= 0:
        raise FilmError(path, f"invalid image size in the header (Rows {rows}, Columns {cols})")
    if rows * cols > max_pixels:
        raise FilmError(path, too_large_reason(cols, rows, max_pixels))

    frames = _frames(ds)
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    if frames > 1 and (modality in ("CT", "MR", "PT", "NM") or sop in _VOLUME_SOP_CLASSES):
        raise FilmError(path, f"3-D volume ({modality or 'multi-frame'}, {frames} frames), not a radiograph")

    spp = _int(ds, "SamplesPerPixel", 1)
    alloc = _int(ds, "BitsAllocated", 0)
    stored = _int(ds, "BitsStored", alloc)
    if alloc not in (1, 8, 16, 32, 64):
        raise FilmError(path, f"unsupported Bits Allocated ({alloc})")
    if not 1 <= stored <= alloc:
        raise FilmError(path, f"inconsistent header: Bits Stored {stored} with Bits Allocated {alloc}")
    if spp not in (1, 3):
        raise FilmError(path, f"unsupported Samples per Pixel ({spp})")
    # The pixel limit budgets the float32 film (4 bytes a pixel), but the decoder first allocates the
    # frame as stored: colour or 32/64-bit samples make that up to 6x larger (a 60 MP 32-bit RGB frame is
    # 720 MB, and near 2 GB resident once converted), so the decoded frame gets the same 4-byte budget.
    decoded = rows * cols * spp * max(1, alloc // 8)
    if decoded > 4 * max_pixels:
        size = lambda n: f"{n / 1e6:.0f} MB" if n >= 10**6 else f"{n} bytes"  # noqa: E731
        raise FilmError(
            path,
            f"image too large: {cols}×{rows} with {spp} sample{'s' if spp > 1 else ''} of {alloc} bits is "
            f"{size(decoded)} decoded, above the limit of {size(4 * max_pixels)} "
            "(set CXRVIEWER_MAX_PIXELS to raise it)",
        )

    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_transfer_syntax:
        raise FilmError(path, f"unsupported transfer syntax {ts} (unknown UID)")
    if not ts.is_compressed:
        # Native data: the header says exactly how many bytes the first frame needs (pydicom knows the
        # special cases: 1-bit packing, YBR_FULL_422 subsampling).
        from pydicom.pixels.utils import get_expected_length

        try:
            need = get_expected_length(ds, unit="bytes") // frames
        except Exception:  # noqa: BLE001 - fall back to the plain product
            need = (rows * cols * spp * alloc + 7) // 8
        have = _available_pixel_bytes(path, ds)
        if have < need:
            raise FilmError(
                path, f"pixel data too short for the header: {have} bytes, {cols}×{rows} needs {need}"
            )


def _available_pixel_bytes(path: Path, ds) -> int:
    elem = ds.get_item(0x7FE00010)
    declared = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    if declared is None or declared == 0xFFFFFFFF:
        value = ds.PixelData
        return len(value) if value is not None else 0
    if tell is not None:
        try:  # a truncated file still declares the full length; what is on disk is what counts
            return max(0, min(int(declared), os.path.getsize(path) - int(tell)))
        except OSError:
            pass
    return int(declared)


# --------------------------------------------------------------------------------------------- pixels


def _decode_first_frame(path: Path, ds):
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        name = ts.name if ts.is_valid and ts.name != str(ts) else "unknown UID"
        raise FilmError(path, f"unsupported transfer syntax {ts} ({name})") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a plugin"
        raise FilmError(path, f"no decoder installed for {ts.name} ({missing})")

    frames = _frames(ds)
    plugins = [""]
    if "JPEG-LS" in ts.name and "pyjpegls" in decoder.available_plugins:
        # CharLS is 3-4× faster than libjpeg's JPEG-LS decoder, but given a codestream without its end
        # marker (a cut-off file) it spins for seconds per 100k pixels before failing: only libjpeg gets those.
        others = [p for p in decoder.available_plugins if p != "pyjpegls"]
        plugins = (["pyjpegls"] if _jpeg_ls_complete(ds, frames) else []) + others
        if not plugins:
            raise FilmError(path, "truncated JPEG-LS pixel data (the codestream has no end marker)")
    last = None
    for plugin in plugins:
        try:
            arr, _meta = decoder.as_array(ds, index=0, decoding_plugin=plugin, as_rgb=True)
            break
        except MemoryError:
            raise FilmError(path, "not enough memory to decode the image") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise anything on corrupt data
            last = exc
        except BaseException as exc:  # a Rust decoder's panic (pylibjpeg-rle: pyo3 PanicException) is no Exception
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            last = exc
    else:
        reason = _short(last)
        if "available plugins:" in reason:  # "... all available plugins: pylibjpeg: <reason>"
            reason = reason.split("available plugins:", 1)[1].strip()
            reason = reason.split(": ", 1)[1] if ": " in reason[:20] else reason
        raise FilmError(path, f"cannot decode the {ts.name} pixel data (corrupt or unsupported: {reason})")
    if arr.ndim == (4 if _int(ds, "SamplesPerPixel", 1) > 1 else 3):  # defensive: keep frame 1 only
        arr = arr[0]
    return arr, frames


def _jpeg_ls_complete(ds, frames: int) -> bool:
    """Whether the first frame's JPEG-LS codestream ends with its EOI marker, after any padding: DICOM pads
    an odd fragment with 0x00, and some encoders (the RG2 hip sample) pad with 0xFF, a JPEG fill byte."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception:  # noqa: BLE001 - the decoders will say what is wrong with the encapsulation
        return True
    return bytes(frame[-8:]).rstrip(b"\x00\xff").endswith(b"\xff\xd9")


def _to_grey(path: Path, ds, raw: np.ndarray, photometric: str, notes: list) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            raw = apply_color_lut(raw, ds)
        except Exception as exc:  # noqa: BLE001
            raise FilmError(path, f"invalid palette colour table ({_short(exc)})") from None
        notes.append("Palette colour image converted to grey (luminance).")
        return _luminance(raw)
    if raw.ndim == 3:
        notes.append(f"{photometric} colour image converted to grey (luminance, ITU-R 601).")
        return _luminance(raw)
    if photometric not in _MONO and photometric not in _COLOUR:
        notes.append(f"Unknown photometric interpretation {photometric!r}: shown as MONOCHROME2.")
    return raw


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, computed exactly as Pillow's RGB -> L so DICOM and PNG colour films agree."""
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint8:
        r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    f = rgb.astype(np.float32)
    return np.rint(f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114).astype(np.float32)


def _padding_mask(ds, raw: np.ndarray):
    """Pixels equal to Pixel Padding Value (or inside its range limit), in stored values as the standard says."""
    if "PixelPaddingValue" not in ds:
        return None
    try:
        a = int(ds.PixelPaddingValue)
        b = int(ds.PixelPaddingRangeLimit) if "PixelPaddingRangeLimit" in ds else a
    except (TypeError, ValueError):
        return None
    # The VR is US or SS depending on Pixel Representation; a value read with the wrong one is
    # brought back into the range of the data.
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        stored = _int(ds, "BitsStored", 16)
        a, b = a & ((1 << stored) - 1), b & ((1 << stored) - 1)
    else:
        a, b = (v - 65536 if v >= 32768 else v for v in (a, b))
    lo, hi = min(a, b), max(a, b)
    if lo == hi:
        return raw == lo
    return (raw >= lo) & (raw <= hi)


def _modality(path: Path, ds, raw: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (float32), through the Modality LUT Sequence or rescale."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        from pydicom.pixels import apply_modality_lut

        try:
            n, first = _lut_shape(seq[0])
            domain = np.arange(first, first + n, dtype=np.int64)
            table = np.asarray(apply_modality_lut(domain, ds), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise FilmError(path, f"invalid Modality LUT Sequence ({_short(exc)})") from None
        return _lookup(raw, table, first)
    out = raw.astype(np.float32)
    slope = _float(ds, "RescaleSlope", 1.0)
    intercept = _float(ds, "RescaleIntercept", 0.0)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _lookup(raw: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """``table[value - first]`` with values outside the table clamped to its ends (PS3.3 C.11.1)."""
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2 and first == 0:  # skip the int32 copy
        idx = np.minimum(raw, len(table) - 1)
    else:
        idx = raw.astype(np.int32) - np.int32(first)
        np.clip(idx, 0, len(table) - 1, out=idx)
    return table[idx]


def _lut_shape(item) -> tuple:
    desc = list(item.LUTDescriptor)
    n = int(desc[0]) or 65536
    return n, int(desc[1])


def _windows(ds, notes: list) -> list:
    centers = _multi(ds.get("WindowCenter"))
    widths = _multi(ds.get("WindowWidth"))
    if not centers or not widths:
        return []
    labels = [str(x) for x in _multi(ds.get("WindowCenterWidthExplanation"))]
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"Unknown VOI LUT Function {function!r}: LINEAR used.")
        function = "LINEAR"
    out = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        try:
            c, w = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(c) or not np.isfinite(w) or w <= 0 or (function == "LINEAR" and w < 1):
            notes.append(f"Invalid window in the file ignored (center {c:g}, width {w:g}).")
            continue
        label = labels[i].strip() if i < len(labels) and labels[i].strip() else f"File window {i + 1}"
        out.append(Window(center=c, width=w, function=function, label=label))
    return out


def _voi_lut(path: Path, ds, notes: list):
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    from pydicom.pixels import apply_voi

    item = seq[0]
    try:
        n, first = _lut_shape(item)
        bits = int(item.LUTDescriptor[2])
        domain = np.arange(first, first + n, dtype=np.int64)
        data = np.asarray(apply_voi(domain, ds, index=0))
    except Exception as exc:  # noqa: BLE001 - a bad LUT should not cost the reader the film
        notes.append(f"VOI LUT Sequence ignored: {_short(exc)}.")
        return None
    top = int(data.max()) if data.size else 0
    if top >= (1 << bits):
        bits = top.bit_length()
    if len(seq) > 1:
        notes.append(f"{len(seq)} VOI LUTs in the file; the first is used.")
    label = str(item.get("LUTExplanation", "") or "").strip() or "File VOI LUT"
    return VoiLut(first_mapped=first, data=data, bits=bits, label=label)


def _spacing(ds, notes: list):
    for kw, source in (
        ("PixelSpacing", "Pixel Spacing"),
        ("ImagerPixelSpacing", "Imager Pixel Spacing"),
        ("NominalScannedPixelSpacing", "Nominal Scanned Pixel Spacing"),
    ):
        vals = _multi(ds.get(kw))
        if len(vals) < 2:
            continue
        try:
            r, c = float(vals[0]), float(vals[1])
        except (TypeError, ValueError):
            continue
        if r > 0 and c > 0 and np.isfinite(r) and np.isfinite(c):
            if source == "Imager Pixel Spacing":
                notes.append("Spacing is Imager Pixel Spacing (at the detector, not corrected for magnification).")
            elif source != "Pixel Spacing":
                notes.append(f"Spacing is {source}.")
            return (r, c), source
        notes.append(f"{source} {r:g}\\{c:g} in the file is not usable; ignored.")
    return None, ""


def _lossy_note(ds, notes: list) -> None:
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01" or ds.file_meta.TransferSyntaxUID in (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
    ):
        ratio = _multi(ds.get("LossyImageCompressionRatio"))
        extra = f" (ratio {float(ratio[0]):g}:1)" if ratio else ""
        notes.append(f"Lossy compressed{extra}.")


# ------------------------------------------------------------------------------------------ metadata


def _info(ds, shape, photometric, spacing, spacing_source, frames) -> dict:
    ts = ds.file_meta.TransferSyntaxUID
    info = {
        "modality": _s(ds, "Modality"),
        "patient_sex": _s(ds, "PatientSex"),
        "patient_age": _age(ds),
        "view_position": _s(ds, "ViewPosition"),
        "body_part": _s(ds, "BodyPartExamined"),
        "study_date": _date(_s(ds, "StudyDate")),
        "manufacturer": _s(ds, "Manufacturer"),
        "size": f"{shape[1]}×{shape[0]}",
        "rows": int(shape[0]),
        "columns": int(shape[1]),
        "bits_stored": _int(ds, "BitsStored", _int(ds, "BitsAllocated", 0)),
        "photometric": photometric,
        "transfer_syntax": ts.name if ts.is_valid else str(ts),
        "spacing": f"{spacing[0]:g} × {spacing[1]:g} mm ({spacing_source})" if spacing else "",
        "frames": frames,
        "sop_class": _uid_name(ds.get("SOPClassUID")),
    }
    return {k: v for k, v in info.items() if v not in ("", None)}


def _age(ds) -> str:
    """Patient Age as written, or computed from the birth date and the study date (the birth date stays in phi)."""
    age = _s(ds, "PatientAge")
    if age:
        return age
    birth = _parse_date(_s(ds, "PatientBirthDate"))
    when = None
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        when = _parse_date(_s(ds, kw))
        if when:
            break
    if not birth or not when or when < birth:
        return ""
    years = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{years:03d}Y"
    months = (when.year - birth.year) * 12 + when.month - birth.month - (when.day < birth.day)
    if months >= 1:
        return f"{months:03d}M"
    return f"{(when - birth).days:03d}D"


def _phi(ds) -> dict:
    out = {}
    for key, kw in _PHI_FIELDS:
        v = _s(ds, kw)
        if v:
            out[key] = v
    return out


def _tags(ds) -> list:
    rows = [_tag_row(ds.file_meta, t) for t in sorted(ds.file_meta.keys())] if getattr(ds, "file_meta", None) else []
    for t in sorted(ds.keys()):
        if int(t) in _PIXEL_TAGS:
            continue
        row = _tag_row(ds, t)
        if row is not None:
            rows.append(row)
    return [r for r in rows if r is not None]


def _tag_row(ds, tag):
    raw = ds.get_item(tag)
    if getattr(raw, "value", b"") is None and getattr(raw, "length", 0) not in (0, 0xFFFFFFFF):
        # A deferred large value (private blob, big LUT): its size is all the panel shows, so the
        # file is not read again just to build the row.
        from pydicom.datadict import dictionary_keyword

        try:
            keyword = dictionary_keyword(tag)
        except KeyError:
            keyword = "Private tag" if tag.is_private else ""
        vr = str(getattr(raw, "VR", "") or "")
        is_phi = tag.is_private or vr == "PN" or keyword in PHI_KEYWORDS
        return TagRow(_fmt_tag(tag), keyword, vr, f"<{raw.length} bytes>", bool(is_phi))
    try:
        elem = ds[tag]
    except Exception:  # noqa: BLE001 - one bad element must not hide the others
        raw = ds.get_item(tag)
        return TagRow(_fmt_tag(tag), "", str(getattr(raw, "VR", "") or ""), "<unreadable>", tag.is_private)
    vr = str(elem.VR)
    keyword = elem.keyword or ("Private tag" if elem.tag.is_private else "")
    if vr == "SQ":
        n = len(elem.value or [])
        value = f"<sequence, {n} item{'s' if n != 1 else ''}>"
    elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or isinstance(elem.value, (bytes, bytearray)):
        length = len(elem.value) if elem.value is not None else 0
        value = f"<{length} bytes>"
    else:
        value = str(elem.value) if elem.value is not None else ""
        if elem.tag == 0x00020010 or vr == "UI":
            name = _uid_name(elem.value)
            if name and name != value:
                value = f"{value} ({name})"
        if len(value) > 256:
            value = value[:253] + "..."
    is_phi = elem.tag.is_private or vr == "PN" or keyword in PHI_KEYWORDS
    return TagRow(_fmt_tag(elem.tag), keyword, vr, value, bool(is_phi))


# ------------------------------------------------------------------------------------------- helpers


def _fmt_tag(tag) -> str:
    t = int(tag)
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"


def _uid_name(uid) -> str:
    if uid is None or str(uid) == "":
        return ""
    try:
        from pydicom.uid import UID

        u = UID(str(uid))
        return u.name if u.name != str(u) else ""
    except Exception:  # noqa: BLE001
        return ""


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _multi(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _int(ds, kw: str, default: int = 0) -> int:
    try:
        v = ds.get(kw, default)
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _float(ds, kw: str, default: float) -> float:
    try:
        v = ds.get(kw, default)
        f = float(v) if v not in (None, "") else default
        return f if np.isfinite(f) else default
    except (TypeError, ValueError):
        return default


def _s(ds, kw: str) -> str:
    try:
        v = ds.get(kw)
    except Exception:  # noqa: BLE001
        return ""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _parse_date(s: str):
    s = (s or "").strip().replace(".", "")
    if len(s) >= 8 and s[:8].isdigit():
        try:
            return _dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
        except ValueError:
            return None
    return None


def _date(s: str) -> str:
    d = _parse_date(s)
    return d.isoformat() if d else s


def too_large_reason(width: int, height: int, limit: int) -> str:
    """The one wording for a refused size, shared with the raster decoder."""

    def amount(n: int) -> str:
        return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"

    return (
        f"image too large: {width}×{height} = {amount(width * height)}, above the limit of {amount(limit)} "
        "(set CXRVIEWER_MAX_PIXELS to raise it)"
    )


def _short(exc) -> str:
    """The first informative line of an exception (decoders put the reason on the line after a colon)."""
    if exc is None:
        return "unknown error"
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
    msg = lines[0]
    if msg.endswith(":") and len(lines) > 1:
        msg = f"{msg[:-1]}: {lines[1].lstrip('-* ')}"
    return msg if len(msg) <= 200 else msg[:197] + "..."
