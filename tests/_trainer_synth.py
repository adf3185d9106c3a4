"""Synthetic chest-film folders for the trainer tests: small, fast, and learnable only from the pixels.

Each class has its own pattern (horizontal stripes, vertical stripes, a bright disc) under noise, so a
model that reaches well above chance has learned from the images, not from file order or names. Films
come two per patient (``pat{id}_{k}.png``) so patient grouping can be checked; one DICOM carries a
PatientID, and one corrupt file must be skipped and reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Alpha", "Beta", "Gamma")


def pattern(cls: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if cls == 0:
        base = 0.5 + 0.4 * np.sin(yy * 0.8 + phase)
    elif cls == 1:
        base = 0.5 + 0.4 * np.sin(xx * 0.8 + phase)
    else:
        cy, cx = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
        base = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < (size / 4) ** 2, 0.9, 0.2)
    img = base + rng.normal(0, 0.08, base.shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, patient_id: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = patient_id
    ds.PatientName = "Test^Synthetic"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def make_dataset(root: Path, per_class: int = 24, size: int = 48, seed: int = 0, dicom: bool = True,
                 corrupt: bool = True, films_per_patient: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for ci, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pid = f"{ci}{i // films_per_patient:03d}"
            Image.fromarray(pattern(ci, rng, size)).save(d / f"pat{pid}_{i % films_per_patient}.png")
    if dicom:
        write_dicom(root / CLASSES[0] / "scan.dcm", pattern(0, rng, size), "SYNTH-0042")
    if corrupt:
        (root / CLASSES[1] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return root


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its size and mtime: to prove nothing was written into the data."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*")}
