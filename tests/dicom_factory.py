"""Synthetic DICOM films for the loader tests, built with pydicom so the suite needs no external data.

Every dataset is a small, valid Part 10 object unless a test asks otherwise; identifiers are made up
(``Doe^Jane``, ``PID-0001``) so tests can assert they never leak into ``info``, notes, errors or logs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-0001",
    "PatientBirthDate": "19700615",
    "AccessionNumber": "ACC-42",
    "InstitutionName": "Example General Hospital",
    "ReferringPhysicianName": "House^Gregory",
}


def ramp(rows: int, cols: int, lo: int, hi: int, dtype=np.uint16) -> np.ndarray:
    """A deterministic test pattern covering [lo, hi]: a diagonal ramp with a bright square."""
    y, x = np.mgrid[0:rows, 0:cols]
    t = (y * cols + x * 7) % (rows * cols)
    a = lo + (t * (hi - lo)) // max(rows * cols - 1, 1)
    a[rows // 4 : rows // 2, cols // 4 : cols // 2] = hi
    a.flat[0], a.flat[-1] = lo, hi
    return a.astype(dtype)


def make_dataset(
    pixels: np.ndarray | None = None,
    *,
    rows: int = 40,
    cols: int = 32,
    bits_allocated: int = 16,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "CR",
    sop_class: str = CR_STORAGE,
    planar: int | None = None,
    phi: bool = True,
    **elements,
) -> Dataset:
    """A dataset with the given pixels (frames, rows, cols[, 3] or rows, cols[, 3]); extra keywords become elements."""
    if pixels is None:
        pixels = ramp(rows, cols, 0, (1 << bits_stored) - 1)
    pixels = np.asarray(pixels)
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    shape = pixels.shape[1:] if frames > 1 or pixels.ndim == (4 if colour else 3) else pixels.shape
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.StudyDate = "20240301"
    ds.PatientSex = "F"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "Factory"
    if phi:
        for k, v in PHI.items():
            setattr(ds, k, v)
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if colour:
        ds.PlanarConfiguration = planar or 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = _native_bytes(pixels, bits_allocated, signed, colour and bool(planar), frames > 1)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _native_bytes(pixels, bits_allocated, signed, planar, multiframe) -> bytes:
    """Raw little-endian sample bytes; values are written bit for bit (garbage high bits included)."""
    kind = "i" if signed else "u"
    dtype = np.dtype(f"<{kind}{bits_allocated // 8}")
    a = np.asarray(pixels)
    if planar:  # (.., rows, cols, 3) -> (.., 3, rows, cols)
        a = np.moveaxis(a, -1, -3)
    if a.dtype.kind in "ui" and a.dtype.itemsize == dtype.itemsize:
        a = a.view(dtype)  # keep the bit pattern (e.g. uint16 0xF123 written into a signed file)
    return np.ascontiguousarray(a.astype(dtype, copy=False)).tobytes()


def write(ds: Dataset, path, *, meta: bool = True, implicit: bool = False) -> Path:
    """Write ``ds``; ``meta=False`` writes a bare dataset (no preamble, no file meta), as old archives do."""
    path = Path(path)
    if meta:
        ts = ds.file_meta.TransferSyntaxUID
        if ts.is_private or not ts.is_transfer_syntax:  # a made-up UID: say how to encode the dataset
            ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
        else:
            ds.save_as(path, enforce_file_format=True)
        return path
    bare = Dataset()
    bare.update(ds)
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    pydicom.filewriter.write_dataset(fp, bare)
    path.write_bytes(fp.getvalue())
    return path


def compress(ds: Dataset, syntax, **kwargs) -> Dataset:
    """Re-encode ``ds`` with pydicom's encoders (RLE, JPEG-LS, JPEG 2000) or Pillow (JPEG baseline)."""
    if syntax == JPEGBaseline8Bit:
        return _jpeg_baseline(ds, **kwargs)
    ds.compress(syntax, **kwargs)
    return ds


def _jpeg_baseline(ds: Dataset, quality: int = 95) -> Dataset:
    from PIL import Image

    arr = ds.pixel_array
    mode = "RGB" if arr.ndim == 3 else "L"
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode).save(buf, "JPEG", quality=quality, subsampling=0)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    if mode == "RGB":
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def lut_item(first: int, data, bits: int = 16, explanation: str = "", modality_type: str = "") -> Dataset:
    item = Dataset()
    data = np.asarray(data)
    item.LUTDescriptor = [len(data) if len(data) < 65536 else 0, first, bits]
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = "US"
    if explanation:
        item.LUTExplanation = explanation
    if modality_type:
        item.ModalityLUTType = modality_type
    return item


def modality_lut_sequence(first: int, data, bits: int = 16) -> Sequence:
    return Sequence([lut_item(first, data, bits, modality_type="US")])


def voi_lut_sequence(first: int, data, bits: int = 16, explanation: str = "") -> Sequence:
    return Sequence([lut_item(first, data, bits, explanation)])


__all__ = [
    "CR_STORAGE",
    "DX_STORAGE",
    "SC_STORAGE",
    "ENHANCED_CT_STORAGE",
    "BASIC_TEXT_SR",
    "PHI",
    "ramp",
    "make_dataset",
    "write",
    "compress",
    "lut_item",
    "modality_lut_sequence",
    "voi_lut_sequence",
    "JPEG2000",
    "JPEG2000Lossless",
    "JPEGBaseline8Bit",
    "JPEGLSLossless",
    "RLELossless",
    "ImplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
]
