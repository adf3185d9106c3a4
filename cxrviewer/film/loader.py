"""The one entry point for opening a film: :func:`load_film`.

The file's content decides how it is read, not its extension (a PNG renamed ``.dcm`` still opens; a text
file renamed ``.png`` is refused as "not an image"). Everything that can go wrong surfaces as one
:class:`FilmError` whose message names the file and the reason, so the GUI, the CLI and the trainer can
show it without a traceback. Files are only ever opened for reading.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Iterator, Optional

from cxrviewer.film.types import NOT_A_FILM, Film, FilmError, log_label

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})
RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SUPPORTED_EXTENSIONS = DICOM_EXTENSIONS | RASTER_EXTENSIONS

# 60 megapixels: above the largest digital radiography detectors (43×43 cm at 100 µm is ~18 MP) with
# a wide margin, and at float32 still only 240 MB, so a forged header cannot exhaust memory.
_BUILTIN_MAX_PIXELS = 60_000_000


def _env_max_pixels() -> Optional[int]:
    raw = os.environ.get("CXRVIEWER_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return None
    try:
        value = int(float(raw))
    except ValueError:
        log.warning("CXRVIEWER_MAX_PIXELS=%r is not a number; using %d", raw, _BUILTIN_MAX_PIXELS)
        return None
    return value if value > 0 else None


DEFAULT_MAX_PIXELS = _env_max_pixels() or _BUILTIN_MAX_PIXELS

_RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)


def load_film(path, max_pixels: Optional[int] = None) -> Film:
    """Open a DICOM or raster film. Raises only :class:`FilmError`.

    ``max_pixels`` refuses images with more pixels than that before decoding them (decompression
    bombs, forged headers); None uses ``CXRVIEWER_MAX_PIXELS`` from the environment at call time, else
    :data:`DEFAULT_MAX_PIXELS`.
    """
    p = Path(path)
    limit = int(max_pixels) if max_pixels is not None else (_env_max_pixels() or DEFAULT_MAX_PIXELS)
    t0 = time.perf_counter()
    try:
        film = _load(p, limit)
    except FilmError:
        raise
    except MemoryError:
        raise FilmError(p, "not enough memory to open the image") from None
    except RecursionError:
        raise FilmError(p, "unreadable file: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the contract: nothing but FilmError leaves load_film
        # No traceback in the log: its frames' messages could quote header values (patient names).
        log.debug("unexpected %s opening %s", type(exc).__name__, log_label(p))
        raise FilmError(p, f"unreadable file: {_short(exc)}") from None
    log.info(
        "opened %s (%s, %d×%d) in %.0f ms",
        log_label(p),
        film.kind,
        film.pixels.shape[1],
        film.pixels.shape[0],
        (time.perf_counter() - t0) * 1000,
    )
    return film


def _load(p: Path, limit: int) -> Film:
    try:
        if p.is_dir():
            raise FilmError(p, "this is a folder, not a film")
        size = p.stat().st_size
    except FileNotFoundError:
        raise FilmError(p, "file not found") from None
    except PermissionError:
        raise FilmError(p, "permission denied") from None
    except OSError as exc:
        raise FilmError(p, f"cannot read the file ({exc.strerror or _short(exc)})") from None
    if size == 0:
        raise FilmError(p, "empty file (0 bytes)")
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except PermissionError:
        raise FilmError(p, "permission denied") from None
    except OSError as exc:
        raise FilmError(p, f"cannot read the file ({exc.strerror or _short(exc)})") from None

    kind = sniff(head, p.suffix.lower())
    if kind == "dicom":
        from cxrviewer.film.dicom import read_dicom

        return read_dicom(p, limit, head)
    if kind == "raster":
        from cxrviewer.film.raster import read_raster

        return read_raster(p, limit)
    if p.suffix.lower() in DICOM_EXTENSIONS and _is_cut_preamble(head):
        raise FilmError(p, "truncated DICOM file (it ends inside the header)")
    if p.suffix.lower() in RASTER_EXTENSIONS:
        raise FilmError(p, f"not a {p.suffix.lstrip('.').upper()} image (unrecognised content)")
    raise FilmError(p, NOT_A_FILM)


def sniff(head: bytes, suffix: str = "") -> Optional[str]:
    """'dicom', 'raster' or None, from the first 132 bytes.

    The extension only matters for a DICOM dataset written without preamble: a file named like a
    raster image is not read as one (archives often name such files by UID, e.g. ``1.2.840...55``).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if raster_format(head):
        return "raster"
    if suffix not in RASTER_EXTENSIONS and _looks_like_raw_dicom(head):
        return "dicom"
    return None


def raster_format(head: bytes) -> Optional[str]:
    """The raster format whose signature starts ``head``, or None."""
    for magic, fmt in _RASTER_MAGIC:
        if head.startswith(magic):
            if fmt == "BMP" and (len(head) < 18 or head[14] not in (12, 16, 40, 52, 56, 64, 108, 124)):
                continue  # "BM" alone is too weak a signature (a text file may start with it)
            return fmt
    return None


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A dataset written without preamble starts with a low even group number, little or big endian.

    This keeps text files and other junk named ``.dcm`` from reaching pydicom's forgiving parser.
    """
    if len(head) < 8:
        return False
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    if head[1] == 0 and head[0] in (0x02, 0x04, 0x08, 0x10, 0x18, 0x20, 0x28):  # little endian
        return explicit or int.from_bytes(head[4:8], "little") < (1 << 24)
    if head[0] == 0 and head[1] in (0x02, 0x08):  # explicit VR big endian
        return explicit
    return False


def _is_cut_preamble(head: bytes) -> bool:
    """A file that stops inside (or right after) the 128-byte preamble of a Part 10 file."""
    if len(head) >= 132:
        return False
    if len(head) > 128:
        return b"DICM".startswith(head[128:])
    return head.count(0) == len(head)


def is_supported_path(path) -> bool:
    """Whether a file is a film candidate: a known extension, or no extension and a DICM preamble."""
    p = Path(path)
    name = p.name
    if not name or name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    suffix = p.suffix.lower()
    if suffix in SUPPORTED_EXTENSIONS:
        return True
    if suffix and not re.fullmatch(r"\.\d+", suffix):  # "1.2.840.113..." style names are extension-less
        return False
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_films(folder) -> Iterator[Path]:
    """Supported films under ``folder``, recursively, in natural order; hidden files/folders and DICOMDIR skipped.

    Natural order ("film2" before "film10") is what a reader walking a worklist expects.
    """
    root = Path(folder)
    if root.is_file():
        if is_supported_path(root):
            yield root
        return
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if is_supported_path(p):
                found.append(p)
    found.sort(key=lambda q: _natural_key(q.relative_to(root)))
    yield from found


def _natural_key(rel: Path) -> tuple:
    return tuple(
        tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", part)) for part in rel.parts
    )


def _short(exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."
