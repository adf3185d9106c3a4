"""The Film record every other part of the program consumes, and the one error the loader raises.

Pixels are kept in modality units (after the Modality LUT, before any VOI/display transform) so the
status bar can report true values and window/level is a pure display operation. Patient identifiers
are kept apart from everything else (``phi``) so that logs, titles and exports can leave them out by
construction rather than by remembering to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np


def log_label(path) -> str:
    """How log lines name a film. File names are the reader's own labels and often carry the patient's
    name (a PACS export names files after the patient), while logs get pasted into bug reports; a
    digest of the full path still tells one film's lines from another's."""
    return "film-" + hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


#: The reason given for a file that is neither: it names what would open, so the reader knows what to export.
NOT_A_FILM = "not a DICOM file or a supported image (DICOM, PNG, JPEG, TIFF or BMP)"


class FilmError(Exception):
    """A film could not be opened. ``str()`` is the one message shown to the user: file name and reason."""

    def __init__(self, path, reason: str):
        self.path = Path(path) if path is not None else None
        self.reason = reason
        name = self.path.name if self.path is not None else "<input>"
        super().__init__(f"Cannot open {name}: {reason}")


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units; ``function`` is LINEAR, LINEAR_EXACT or SIGMOID (DICOM C.11.2.1)."""

    center: float
    width: float
    function: str = "LINEAR"
    label: str = ""


@dataclass(frozen=True)
class VoiLut:
    """A VOI LUT from the file (VOI LUT Sequence): modality value ``first_mapped + i`` -> ``data[i]``."""

    first_mapped: int
    data: np.ndarray
    bits: int
    label: str = ""


@dataclass(frozen=True)
class TagRow:
    """One row of the DICOM tag panel."""

    tag: str  # "(0010,0010)"
    keyword: str
    vr: str
    value: str
    is_phi: bool = False


@dataclass
class Film:
    path: Path
    pixels: np.ndarray  # 2-D float32, modality units, never inverted
    kind: str  # "dicom" or "raster"
    windows: list = field(default_factory=list)  # Window, from the file; the first is the default
    voi_lut: Optional[VoiLut] = None  # used as the default display when present and no window is given
    monochrome1: bool = False  # displayed inverted by default
    pixel_spacing: Optional[tuple] = None  # (row mm, column mm)
    spacing_source: str = ""  # "Pixel Spacing", "Imager Pixel Spacing", ...
    modality: str = ""
    info: dict = field(default_factory=dict)  # concise header for the reader, no identifiers
    phi: dict = field(default_factory=dict)  # patient name, ID, birth date, accession: never logged
    tags: list = field(default_factory=list)  # TagRow, for the tag panel
    notes: list = field(default_factory=list)  # things the reader should know ("frame 1 of 3 shown")
    bits_stored: int = 8

    @property
    def shape(self) -> tuple:
        return tuple(self.pixels.shape)

    @property
    def display_name(self) -> str:
        """The file's name: what the worklist, messages and logs use (never patient identifiers)."""
        return self.path.name

    def value_range(self) -> tuple:
        return float(np.min(self.pixels)), float(np.max(self.pixels))
