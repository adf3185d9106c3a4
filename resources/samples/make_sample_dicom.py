"""Build the bundled sample films that are not plain copies (run once; the outputs are committed).

* ``kermany_normal_IM-0117-0001.dcm``: a DICOM Secondary Capture made from the Kermany et al. (2018) film
  ``Normal/IM-0117-0001`` (CC BY 4.0), halved in size, 8-bit MONOCHROME2, JPEG-LS lossless. It carries
  no real patient identifiers: the name and ID are made up, dates and UIDs are fixed so that running
  the script again gives the same file.
* ``kermany_normal_IM-0133-0001.png``: the Kermany film ``Normal/IM-0133-0001`` halved in size, because
  every full-resolution Normal film is above the 400 KB the samples may take.

Usage: ``python resources/samples/make_sample_dicom.py [KERMANY_FULLRES_FOLDER]``
(default: ``../shared/data/kermany-fullres`` from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEGLSLossless, generate_uid

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent.parent / "shared" / "data" / "kermany-fullres"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
LICENCE = (
    "Kermany D, Zhang K, Goldbaum M (2018), Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2; CC BY 4.0; "
    "halved in size and converted to DICOM by CXR Viewer"
)


def half(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.LANCZOS)


def make_dicom(src: Path, out: Path) -> None:
    grey = np.asarray(half(Image.open(src).convert("L")), dtype=np.uint8)
    key = f"cxrviewer-sample:{src.parent.name}/{src.name}"  # deterministic UIDs: same input, same file

    ds = Dataset()
    ds.SOPClassUID = SC_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[key, "sop"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = "20260101"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation: a digitised, re-encoded film
    ds.PatientName = "Sample^Kermany"
    ds.PatientID = "CXRVIEWER-SAMPLE-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = "Sample chest film (paediatric, normal)"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ""  # not recorded in the published data set
    ds.PatientOrientation = ""
    ds.ImageComments = f"{src.parent.name}/{src.name}. {LICENCE}"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grey.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = "128"  # with width 256 the DICOM linear window is exactly the identity on 8 bits
    ds.WindowWidth = "256"
    ds.WindowCenterWidthExplanation = "FULL RANGE"
    ds.PixelData = grey.tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.compress(JPEGLSLossless)
    ds.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(out).pixel_array
    assert np.array_equal(back, grey), "JPEG-LS lossless round trip failed"
    print(f"wrote {out.name}: {grey.shape[1]}×{grey.shape[0]}, {out.stat().st_size // 1024} KB")


def make_half_png(src: Path, out: Path) -> None:
    half(Image.open(src).convert("L")).save(out, optimize=True)
    print(f"wrote {out.name}: {out.stat().st_size // 1024} KB")


def main(argv: list) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DEFAULT_SOURCE
    make_dicom(source / "Normal" / "IM-0117-0001.png", HERE / "kermany_normal_IM-0117-0001.dcm")
    make_half_png(source / "Normal" / "IM-0133-0001.png", HERE / "kermany_normal_IM-0133-0001.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
