"""DICOMDIR: the index file of a DICOM CD/DVD/USB export (PS3.10 "File-set").

Imaging media handed to patients and clinicians hold files with meaningless names (``IM000001`` in
``DICOM/PAT00001/STU00001/...``) and one ``DICOMDIR`` that says which files are images of which patient,
study and series. Opening the DICOMDIR therefore opens exactly the images it lists, in its patient /
study / series order, as a worklist; the other records (reports, presentation states, private files)
are left out because they are not films.

Qt-free; reads with pydicom's :class:`~pydicom.fileset.FileSet`. Every failure is a :class:`DicomdirError`
(a :class:`FilmError`, so its ``str()`` names the file and the reason); the media is never written to.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cxrviewer.film.types import FilmError, log_label

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: directory record types that reference an image a reader can look at
IMAGE_RECORDS = frozenset({"IMAGE", "PRIVATE"})  # PRIVATE only when it references an image SOP class below
# Image storage SOP classes start with 1.2.840.10008.5.1.4.1.1. and are not e.g. SR (.88.x),
# presentation states (.11.x), raw data (.66), waveforms (.9.x) or encapsulated documents (.104.x).
_NON_IMAGE_PREFIXES = tuple(f"1.2.840.10008.5.1.4.1.1.{n}." for n in (9, 11, 66, 67, 88, 104, 481))
_NON_IMAGE_EXACT = frozenset({"1.2.840.10008.5.1.4.1.1.66"})


class DicomdirError(FilmError):
    """A DICOMDIR that cannot be used: not one, unreadable, or listing no image."""


@dataclass
class DicomdirEntry:
    """One image the DICOMDIR lists; descriptive fields only (no patient identifiers)."""

    path: Path
    study: str = ""
    series: str = ""
    modality: str = ""
    instance: Optional[int] = None
    study_uid: str = ""


@dataclass
class Dicomdir:
    """The images of a DICOMDIR, in its order, and what was skipped (missing files, non-images)."""

    path: Path
    entries: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    skipped: int = 0

    def paths(self) -> list:
        return [str(e.path) for e in self.entries]

    def summary(self) -> str:
        studies = len({e.study_uid or e.study for e in self.entries})
        text = f"{len(self.entries)} image(s) in {studies} stud{'y' if studies == 1 else 'ies'}"
        if self.missing:
            text += f"; {len(self.missing)} listed file(s) missing from the media"
        return text


def looks_like_dicomdir(path) -> bool:
    """Cheap test by name, as the standard fixes it (PS3.10: the file ID is "DICOMDIR")."""
    return Path(path).name.upper() == "DICOMDIR"


def is_dicomdir(path) -> bool:
    """By name, or by content: a DICOM file whose Media Storage SOP Class is Media Storage Directory."""
    p = Path(path)
    if looks_like_dicomdir(p):
        return p.is_file()
    try:
        if not p.is_file() or p.stat().st_size < 132:
            return False
        with open(p, "rb") as fh:
            head = fh.read(132)
        if head[128:132] != b"DICM":
            return False
        import pydicom

        meta = pydicom.filereader.read_file_meta_info(p)
        return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY
    except Exception:  # noqa: BLE001  (anything unreadable is simply not a DICOMDIR)
        return False


def _is_image_sop(uid: str) -> bool:
    uid = str(uid or "")
    if not uid.startswith("1.2.840.10008.5.1.4.1.1.") or uid in _NON_IMAGE_EXACT:
        return False
    return not uid.startswith(_NON_IMAGE_PREFIXES)


def _text(value) -> str:
    return str(value).strip() if value not in (None, "") else ""


def read_dicomdir(path) -> Dicomdir:
    """The images a DICOMDIR lists, as absolute paths in the DICOMDIR's order.

    Raises :class:`DicomdirError` for a file that is not a DICOMDIR, cannot be parsed, or lists no image
    that exists on the media."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise DicomdirError(p, "no such file")
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.fileset import FileSet
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise DicomdirError(p, f"pydicom is not available ({exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about tolerable oddities of real media
            ds = pydicom.dcmread(p, force=False)
    except InvalidDicomError:
        raise DicomdirError(p, "not a DICOM file (no DICM marker); a DICOMDIR is a DICOM file") from None
    except Exception as exc:  # noqa: BLE001  (truncated, corrupt: one message)
        raise DicomdirError(p, f"unreadable DICOMDIR: {_short(exc)}") from None
    sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if sop != MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" not in ds:
        raise DicomdirError(p, "a DICOM file but not a DICOMDIR (no directory records); open it as a film")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs = FileSet(ds)  # drops records whose file is missing (logged by pydicom)
    except Exception as exc:  # noqa: BLE001  (broken record offsets, loops, bad file IDs)
        raise DicomdirError(p, f"damaged DICOMDIR: {_short(exc)}") from None

    result = Dicomdir(path=p)
    root = p.parent.resolve()
    for inst in fs:
        try:
            rtype = _text(inst.node.record_type)
            sop_class = _text(getattr(inst, "ReferencedSOPClassUIDInFile", ""))
            if rtype not in IMAGE_RECORDS or (sop_class and not _is_image_sop(sop_class)) or (
                    rtype == "PRIVATE" and not sop_class):
                result.skipped += 1
                continue
            file_path = Path(inst.path)
        except Exception as exc:  # noqa: BLE001  (a record without a usable file ID)
            log.debug("DICOMDIR %s: skipped a record (%s)", log_label(p), exc)
            result.skipped += 1
            continue
        if not file_path.is_file():
            continue  # reported by _add_unlisted
        entry = DicomdirEntry(path=file_path)
        entry.study, entry.series, entry.modality = _describe(inst)
        entry.study_uid = _text(_record_value(inst, "StudyInstanceUID") or "")
        number = _record_value(inst, "InstanceNumber")
        try:
            entry.instance = int(number) if number not in (None, "") else None
        except (TypeError, ValueError):
            entry.instance = None
        result.entries.append(entry)
    _add_unlisted(ds, root, result)
    if not result.entries:
        if result.missing:
            raise DicomdirError(p, f"none of the {len(result.missing)} image(s) it lists is on the media "
                                   f"(first: {Path(result.missing[0]).name})")
        raise DicomdirError(p, "lists no image" + (f" ({result.skipped} other record(s))" if result.skipped else ""))
    return result


def _add_unlisted(ds, root: Path, result: Dicomdir) -> None:
    """Image records pydicom's FileSet dropped because their file is not at the exact path: found
    case-insensitively they are added (media written by case-insensitive systems), else reported missing."""
    known = {str(e.path) for e in result.entries}
    for rec in ds.DirectoryRecordSequence:
        try:
            rtype = _text(rec.get("DirectoryRecordType", ""))
            file_id = rec.get("ReferencedFileID")
            if rtype not in IMAGE_RECORDS or file_id in (None, ""):
                continue
            sop_class = _text(rec.get("ReferencedSOPClassUIDInFile", ""))
            if (sop_class and not _is_image_sop(sop_class)) or (rtype == "PRIVATE" and not sop_class):
                continue
            parts = [str(file_id)] if isinstance(file_id, str) else [str(x) for x in file_id]
        except Exception:  # noqa: BLE001  (a malformed record: FileSet has judged it already)
            continue
        exact = root.joinpath(*parts)
        if exact.is_file():
            continue  # FileSet listed it (or skipped it deliberately)
        found = _resolve_case(exact, root)
        if found.is_file() and str(found) not in known:
            result.entries.append(DicomdirEntry(path=found, modality="", study_uid=""))
            known.add(str(found))
        elif not found.is_file():
            result.missing.append(str(exact))


def _record_value(inst, keyword: str):
    try:
        return getattr(inst, keyword)
    except AttributeError:
        return None


def _describe(inst) -> tuple:
    """Study and series in words (description, date, number), and the modality, from the parent records."""
    study = series = modality = ""
    node = inst.node
    while node is not None and getattr(node, "record_type", None) not in (None, "ROOT"):
        rec = node._record
        kind = _text(node.record_type)
        if kind == "SERIES":
            modality = _text(rec.get("Modality", ""))
            series = " ".join(x for x in (_text(rec.get("SeriesDescription", "")),
                                          f"#{_text(rec.get('SeriesNumber', ''))}" if rec.get("SeriesNumber", "") != "" else "") if x)
        elif kind == "STUDY":
            study = " ".join(x for x in (_text(rec.get("StudyDescription", "")), _text(rec.get("StudyDate", "")),
                                         _text(rec.get("StudyID", ""))) if x)
        node = node.parent
    return study, series, modality


def _resolve_case(path: Path, root: Path) -> Path:
    """Media written on Windows or ISO 9660 CDs may differ in letter case from the DICOMDIR's file IDs;
    find the file case-insensitively under the DICOMDIR's folder when the exact path does not exist."""
    if path.exists():
        return path
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        return path
    cur = root
    for part in rel.parts:
        try:
            names = {n.upper(): n for n in os.listdir(cur)}
        except OSError:
            return path
        hit = names.get(part.upper()) or names.get(part.upper().rstrip("."))
        if hit is None:
            return path
        cur = cur / hit
    return cur


def _short(exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."
