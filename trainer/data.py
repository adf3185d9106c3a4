"""Data folders in, a decoded, split, fingerprinted training set out.

Three layouts are understood, the ways hospitals and public sets hand films over:

- a folder with one subfolder per class (nested folders inside a class are fine);
- a CSV of ``path,label[,patient]`` (a header naming ``path`` and ``label`` may carry other columns, such as
  the shared data's ``MANIFEST.csv``), paths relative to the CSV's folder;
- a folder already holding ``train/``, ``val/`` and optionally ``test/``, each with one subfolder per class.

Films are decoded with the viewer's own loader and rendered and fitted with the viewer's own
preprocessing (``cxrviewer.preprocess``), once, into a uint8 array at the model's input size: what the
model trains on is what the viewer will show it, and decoding is not repeated every epoch. A film that
cannot be read is skipped and listed, never fatal. Folders that cannot make a classifier (no films, one
class, a class with no films) are refused with a message that says what to fix.

Patients: the split keeps every patient's films on one side. The patient comes from the CSV's patient
column, else the user's file-name pattern, else the DICOM PatientID, else each film is its own patient.
Patient identifiers never leave this module in clear: the split file stores a short hash.

Nothing here writes into the data folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

SPLITS = ("train", "val", "test")
_FALLBACK_EXTS = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_PRESPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


class DataError(Exception):
    """A data folder that cannot be trained on; ``str()`` is the message shown to the user."""


@dataclass
class Sample:
    path: Path
    rel: str  # posix path relative to the data root: what reports and split files name
    label: int
    patient: Optional[str] = None  # from the CSV or the file-name pattern; DICOM IDs are added at decode time
    split: Optional[str] = None  # for pre-split folders


@dataclass
class DataSource:
    kind: str  # "folders", "csv" or "presplit"
    root: Path  # what relative paths are relative to
    origin: Path  # what the user gave (folder or CSV file)
    classes: list
    samples: list
    problems: list = field(default_factory=list)  # readable sentences: ignored files, pattern misses, ...

    def counts(self, split: Optional[str] = None) -> dict:
        out = {c: 0 for c in self.classes}
        for s in self.samples:
            if split is None or s.split == split:
                out[self.classes[s.label]] += 1
        return out


# --- discovery (cheap: no decoding) ---------------------------------------------------------------

def is_film_path(path: Path) -> bool:
    """A file the viewer's loader claims, or (until it is importable) a known film extension."""
    try:
        from cxrviewer.film.loader import is_supported_path
    except ImportError:  # the loader module is optional at import time for the cheap preview
        return path.suffix.lower() in _FALLBACK_EXTS
    return bool(is_supported_path(path))


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "_")) and p.name not in ("__MACOSX", "Thumbs.db")


def _films_under(folder: Path, problems: list, root: Path) -> list:
    films, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not _visible(p) or name.lower() in ("manifest.csv", "tags.txt", "readme.md", "readme.txt"):
                continue
            if is_film_path(p):
                if p.stat().st_size == 0:
                    problems.append(f"{p.relative_to(root).as_posix()}: empty file, skipped")
                    continue
                films.append(p)
            else:
                ignored.append(p.relative_to(root).as_posix())
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        problems.append(f"{len(ignored)} file(s) that are not films ignored: {shown}")
    return films


def _class_folders(folder: Path) -> list:
    return sorted((d for d in folder.iterdir() if d.is_dir() and _visible(d)), key=lambda d: d.name)


def _find_presplit(folder: Path) -> Optional[dict]:
    subs = {d.name.lower(): d for d in folder.iterdir() if d.is_dir()}
    found = {}
    for split, names in _PRESPLIT_ALIASES.items():
        for n in names:
            if n in subs:
                found[split] = subs[n]
                break
    if "train" in found and "val" in found:
        return found
    return None


def _apply_pattern(samples: list, pattern: Optional[str], problems: list) -> None:
    if not pattern:
        return
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(f"the patient pattern {pattern!r} is not a valid regular expression: {e}") from None
    misses = 0
    for s in samples:
        if s.patient:  # a CSV column wins over the pattern
            continue
        m = rx.search(s.path.name)
        if m is None:
            misses += 1
            continue
        if "patient" in rx.groupindex:
            s.patient = m.group("patient")
        elif rx.groups >= 1:
            s.patient = m.group(1)
        else:
            s.patient = m.group(0)
    if misses:
        problems.append(
            f"{misses} film name(s) did not match the patient pattern {pattern!r}; each of those is treated as its own patient"
        )


def discover(path, patient_pattern: Optional[str] = None, merge: Optional[str] = None) -> DataSource:
    """Find classes and films without decoding anything. Raises :class:`DataError` for unusable input.

    ``merge`` relabels without touching the data folder (see :func:`merge_classes`)."""
    origin = Path(path).expanduser()
    if not origin.exists():
        raise DataError(f"{origin} does not exist")
    problems: list = []
    if origin.is_file():
        if origin.suffix.lower() != ".csv":
            raise DataError(f"{origin.name} is a file; give a folder with one subfolder per class, or a CSV of path,label[,patient]")
        src = _read_csv(origin, problems)
    else:
        pre = _find_presplit(origin)
        if pre is not None:
            src = _read_presplit(origin, pre, problems)
        else:
            src = _read_folders(origin, problems)
    _apply_pattern(src.samples, patient_pattern, src.problems)
    if merge:
        src = merge_classes(src, merge)
    _refuse_unusable(src)
    return src


def parse_merge(spec: str) -> dict:
    """``"NEW=old1+old2;NEW2=old3"`` -> ``{"old1": "NEW", "old2": "NEW", "old3": "NEW2"}``.

    Papers pose the same films as different tasks (seed 004 merges the two pneumonia folders of seed 002's
    data into one class); a spelling on the command line keeps the run reproducible from its recorded
    command, with no relabelled copy of the data to keep in step."""
    mapping: dict = {}
    for part in (x.strip() for x in spec.split(";")):
        if not part:
            continue
        new, sep, olds = part.partition("=")
        new = new.strip()
        names = [o.strip() for o in olds.split("+") if o.strip()]
        if not sep or not new or not names:
            raise DataError(f"cannot read class merge {part!r}: write NEW=old1+old2, several separated by ';'")
        for o in names:
            if o in mapping:
                raise DataError(f"class {o!r} is merged twice in {spec!r}")
            mapping[o] = new
    if not mapping:
        raise DataError(f"class merge {spec!r} names no classes")
    return mapping


def merge_classes(src: DataSource, spec: str) -> DataSource:
    """Relabel ``src`` by a merge spec; classes not named keep their label. Unknown names are refused so
    a typo cannot silently train a different task."""
    mapping = parse_merge(spec)
    unknown = sorted(set(mapping) - set(src.classes))
    if unknown:
        raise DataError(f"cannot merge {', '.join(map(repr, unknown))}: the data's classes are "
                        f"{', '.join(src.classes)}")
    classes: list = []
    for c in src.classes:
        name = mapping.get(c, c)
        if name not in classes:
            classes.append(name)
    index = [classes.index(mapping.get(c, c)) for c in src.classes]
    samples = [replace(s, label=index[s.label]) for s in src.samples]
    groups = {new: [o for o in src.classes if mapping.get(o, o) == new] for new in classes}
    merged = "; ".join(f"{new} = {' + '.join(olds)}" for new, olds in groups.items() if olds != [new])
    problems = src.problems + [f"classes merged: {merged}"]
    return replace(src, classes=classes, samples=samples, problems=problems)


def _read_folders(root: Path, problems: list) -> DataSource:
    folders = _class_folders(root)
    loose = [p for p in root.iterdir() if p.is_file() and _visible(p) and is_film_path(p)]
    if loose:
        problems.append(f"{len(loose)} film(s) directly in {root.name}/ ignored: films must sit in a subfolder named after their class")
    classes = [d.name for d in folders]
    samples = []
    for ci, d in enumerate(folders):
        for p in _films_under(d, problems, root):
            samples.append(Sample(p, p.relative_to(root).as_posix(), ci))
    return DataSource("folders", root, root, classes, samples, problems)


def _read_presplit(root: Path, found: dict, problems: list) -> DataSource:
    classes: list = []
    for d in _class_folders(found["train"]):
        classes.append(d.name)
    samples = []
    for split in SPLITS:
        if split not in found:
            continue
        for d in _class_folders(found[split]):
            if d.name not in classes:
                problems.append(f"class folder {found[split].name}/{d.name}/ has no counterpart in {found['train'].name}/; ignored")
                continue
            ci = classes.index(d.name)
            for p in _films_under(d, problems, root):
                samples.append(Sample(p, p.relative_to(root).as_posix(), ci, split=split))
    if "test" not in found:
        problems.append("no test/ folder: the run will have no test split")
    return DataSource("presplit", root, root, classes, samples, problems)


def _read_csv(path: Path, problems: list) -> DataSource:
    root = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path.name}: {e}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path.name} is empty; expected rows of path,label[,patient]")
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head and "label" in head:
        ip, il = head.index("path"), head.index("label")
        ipat = head.index("patient") if "patient" in head else None
        body = rows[1:]
    else:
        ip, il, ipat = 0, 1, (2 if len(rows[0]) >= 3 else None)
        body = rows
    entries = []
    missing = []
    first: dict = {}  # the file (resolved) -> (line, label) where it was first listed
    conflicting: set = set()
    for n, r in enumerate(body, start=2 if body is not rows else 1):
        if len(r) <= max(ip, il):
            problems.append(f"{path.name} line {n}: expected path,label; skipped")
            continue
        rel, lab = r[ip].strip(), r[il].strip()
        if not rel or not lab:
            problems.append(f"{path.name} line {n}: empty path or label; skipped")
            continue
        p = Path(rel)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            missing.append(rel)
            continue
        key = p.resolve()
        if key in first:  # listed twice: once is enough; with two labels it would teach both answers
            line, label = first[key]
            if label == lab:
                problems.append(f"{path.name} line {n}: {rel} is listed again (line {line}); used once")
            else:
                conflicting.add(key)
                problems.append(f"{path.name} line {n}: {rel} is labelled {lab!r} here and {label!r} on line "
                                f"{line}; skipped, both times")
            continue
        first[key] = (n, lab)
        pat = r[ipat].strip() if ipat is not None and ipat < len(r) and r[ipat].strip() else None
        entries.append((p, key, lab, pat))
    entries = [e for e in entries if e[1] not in conflicting]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"{len(missing)} file(s) listed in {path.name} do not exist: {shown}")
    classes = sorted({lab for _, _, lab, _ in entries})
    samples = []
    root_resolved = root.resolve()
    for p, key, lab, pat in entries:
        try:
            rel = key.relative_to(root_resolved).as_posix()
        except ValueError:
            rel = p.as_posix()
        samples.append(Sample(p, rel, classes.index(lab), patient=pat))
    return DataSource("csv", root, path, classes, samples, problems)


def _refuse_unusable(src: DataSource) -> None:
    where = src.origin.name or str(src.origin)
    if not src.samples:
        if src.kind == "folders" and not src.classes:
            raise DataError(
                f"no films found in {where}: expected one subfolder per class (for example Normal/ and Pneumonia/) "
                "holding DICOM, PNG or JPEG films, a CSV of path,label, or train/ val/ test/ folders"
            )
        raise DataError(f"no films found in {where}: the class folders hold no DICOM, PNG or JPEG files")
    counts = src.counts()
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(repr(c) for c in empty)} "
            f"{'have' if len(empty) > 1 else 'has'} no films; add films or remove the folder"
        )
    if len(src.classes) < 2:
        raise DataError(
            f"only one class ({src.classes[0]!r}) found in {where}: a classifier needs at least two classes, each in its own subfolder"
        )
    if src.kind == "presplit":
        for split in ("train", "val"):
            if not any(s.split == split for s in src.samples):
                raise DataError(f"the {split}/ folder of {where} holds no films")


def scan_dataset(path, patient_pattern: Optional[str] = None) -> dict:
    """The training dialog's preview: classes, counts and problems, without decoding any film.

    Never raises for bad data: a refusal comes back as ``error`` (with ``ok`` False) so the dialog can show it
    next to the folder field.
    """
    out = {"ok": False, "path": str(path), "kind": None, "classes": [], "counts": {}, "total": 0,
           "split_counts": None, "problems": [], "error": None}
    try:
        src = discover(path, patient_pattern)
    except DataError as e:
        out["error"] = str(e)
        return out
    except OSError as e:
        out["error"] = f"cannot read {path}: {e}"
        return out
    out.update(ok=True, kind=src.kind, classes=list(src.classes), counts=src.counts(), total=len(src.samples),
               problems=list(src.problems))
    if src.kind == "presplit":
        out["split_counts"] = {s: src.counts(s) for s in SPLITS}
    counts = list(out["counts"].values())
    if counts and max(counts) > 3 * max(1, min(counts)):
        out["problems"].append(
            f"classes are imbalanced ({min(counts)} to {max(counts)} films); consider balance=weighted_loss or sampler"
        )
    return out


# --- decoding ---------------------------------------------------------------------------------------

@dataclass
class FilmSet:
    """Decoded films at the model's input size, in discovery order (skipped films removed)."""

    source: DataSource
    images: np.ndarray  # uint8 (N, S, S): the shared preprocessing's fitted square, before normalisation
    labels: np.ndarray  # int64 (N,)
    rels: list
    groups: list  # patient key per film (hashed when it came from a file; the rel path when unknown)
    file_hashes: list
    skipped: list  # (rel, reason)
    presplit: Optional[list] = None  # split name per film for pre-split folders

    @property
    def classes(self) -> list:
        return self.source.classes

    def fingerprint(self) -> str:
        """A hash of what was trained on: every film's relative path, label and content hash."""
        h = hashlib.sha256()
        for rel, lab, fh in sorted(zip(self.rels, self.labels.tolist(), self.file_hashes)):
            h.update(f"{rel}\t{self.classes[lab]}\t{fh}\n".encode())
        return h.hexdigest()


def _patient_key(raw: str) -> str:
    return "p:" + hashlib.sha256(str(raw).strip().encode()).hexdigest()[:16]


def _dicom_patient(film) -> Optional[str]:
    phi = getattr(film, "phi", None) or {}
    for k in ("PatientID", "patient_id", "Patient ID", "patient id"):
        v = phi.get(k)
        if v is not None and str(v).strip():
            return str(v).strip()
    return None


def decode_one(sample: Sample, size: int, resize: str):
    """One film -> (square uint8, content hash, DICOM patient or None); raises FilmError when unreadable."""
    from cxrviewer.film.display import render
    from cxrviewer.film.loader import load_film
    from cxrviewer.preprocess import fit_to_square

    with open(sample.path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    film = load_film(sample.path)
    square, _ = fit_to_square(render(film), size, resize)
    return square, digest, _dicom_patient(film)


def decode(src: DataSource, size: int, resize: str = "squash", workers: Optional[int] = None,
           on_progress: Optional[Callable[[int, int], None]] = None, require_all_classes: bool = True) -> FilmSet:
    """Decode every film once; unreadable ones are skipped with their reason.

    For training, a class left without any readable film is refused (``require_all_classes``); evaluation
    of a checkpoint may legitimately meet only some of the model's classes.
    """
    from cxrviewer.film.types import FilmError

    n = len(src.samples)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    results: list = [None] * n

    def work(i):
        s = src.samples[i]
        try:
            return i, decode_one(s, size, resize), None
        except FilmError as e:
            return i, None, str(e.reason if hasattr(e, "reason") else e)
        except (OSError, ValueError, MemoryError) as e:  # belt and braces: a loader bug must not stop training
            return i, None, f"{type(e).__name__}: {e}"

    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, res, err in pool.map(work, range(n)):
            results[i] = (res, err)
            done += 1
            if on_progress is not None and (done == n or done % 16 == 0):
                on_progress(done, n)
    images, labels, rels, groups, hashes, skipped, pre = [], [], [], [], [], [], []
    for s, (res, err) in zip(src.samples, results):
        if res is None:
            skipped.append((s.rel, err or "unreadable"))
            continue
        square, digest, dicom_pid = res
        images.append(square)
        labels.append(s.label)
        rels.append(s.rel)
        hashes.append(digest)
        raw = s.patient or dicom_pid
        groups.append(_patient_key(raw) if raw else "f:" + s.rel)
        pre.append(s.split)
    fs = FilmSet(src, np.stack(images) if images else np.zeros((0, size, size), np.uint8),
                 np.asarray(labels, dtype=np.int64), rels, groups, hashes, skipped,
                 pre if src.kind == "presplit" else None)
    counts = np.bincount(fs.labels, minlength=len(src.classes)) if len(fs.labels) else np.zeros(len(src.classes), int)
    empty = [c for c, k in zip(src.classes, counts) if k == 0]
    if not images:
        raise DataError(f"none of the {n} films could be read; first problem: {skipped[0][0]}: {skipped[0][1]}")
    if empty and require_all_classes:
        raise DataError(f"every film of class {', '.join(repr(c) for c in empty)} is unreadable; nothing to learn that class from")
    return fs


# --- splitting ----------------------------------------------------------------------------------------

def stratified_group_split(labels, groups, ratios=(0.7, 0.2, 0.1), seed: int = 0) -> np.ndarray:
    """Split id per film (0 train, 1 val, 2 test): patients never straddle splits; class shares follow ``ratios``.

    Greedy on patients in a seeded random order, largest first: each patient goes to the split where it
    most reduces the squared distance between the split's per-class counts and its target counts. With one
    film per patient this is an exact stratified split; with many films per patient it is as close as the
    grouping allows. Same labels, groups, ratios and seed -> same split, on every machine.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if len(labels) else 0
    ratios = np.asarray(ratios, dtype=np.float64)
    ratios = ratios / ratios.sum()
    uniq, ginv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    G = len(uniq)
    gcounts = np.zeros((G, k), dtype=np.float64)
    np.add.at(gcounts, (ginv, labels), 1.0)
    target = ratios[:, None] * np.bincount(labels, minlength=k)[None, :].astype(np.float64)
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(G)
    sizes = gcounts.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    alloc = np.zeros_like(target)
    gsplit = np.full(G, -1, dtype=np.int64)
    allowed = [s for s in range(3) if ratios[s] > 0]
    for g in order:
        c = gcounts[g]
        best, best_cost = None, None
        for s in allowed:
            before = ((alloc[s] - target[s]) ** 2).sum()
            after = ((alloc[s] + c - target[s]) ** 2).sum()
            cost = after - before
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = s, cost
        gsplit[g] = best
        alloc[best] += c
    return gsplit[ginv]


def split_films(fs: FilmSet, ratios, seed: int) -> np.ndarray:
    """Split ids for a decoded set: the folders' own split when pre-split, else the grouped stratified split."""
    if fs.presplit is not None:
        ids = np.asarray([SPLITS.index(s) for s in fs.presplit], dtype=np.int64)
        leaked = set(g for g, s in zip(fs.groups, ids) if s == 0 and not g.startswith("f:")) & set(
            g for g, s in zip(fs.groups, ids) if s != 0 and not g.startswith("f:"))
        if leaked:
            fs.source.problems.append(
                f"{len(leaked)} patient(s) have films in train and in val/test of the given split; results will be optimistic"
            )
        return ids
    ids = stratified_group_split(fs.labels, fs.groups, ratios, seed)
    check_split(fs, ids)
    return ids


def check_split(fs: FilmSet, ids: np.ndarray) -> None:
    """Refuse a split that cannot train; note a class missing from validation or test, whose metrics then
    say nothing about it (an empty test split is a choice of ratios, not a problem)."""
    k = len(fs.classes)
    for s, name in ((0, "train"), (1, "val"), (2, "test")):
        present = set(fs.labels[ids == s].tolist())
        if not present and name == "test":
            continue
        if not present:
            raise DataError(f"too few patients to make a {name} split; add films or change the split ratios")
        missing = [fs.classes[c] for c in range(k) if c not in present]
        if missing and name == "train":
            raise DataError(f"class {', '.join(map(repr, missing))} has no patient left for training; add films")
        if missing:
            fs.source.problems.append(f"the {name} split has no film of {', '.join(map(repr, missing))} (too few "
                                      "patients): its metrics say nothing about that class")


def split_to_json(fs: FilmSet, ids: np.ndarray, seed: int, ratios) -> dict:
    """The split as the run saves it: enough to reproduce it exactly, with patient keys hashed."""
    out = {"format": 1, "seed": int(seed), "ratios": [float(r) for r in ratios],
           "method": "presplit folders" if fs.presplit is not None else "stratified by class, grouped by patient (greedy, seeded)",
           "classes": list(fs.classes), "data_fingerprint": fs.fingerprint(),
           "counts": {}, "films": {}}
    for si, name in enumerate(SPLITS):
        sel = np.flatnonzero(ids == si)
        out["counts"][name] = {c: int((fs.labels[sel] == ci).sum()) for ci, c in enumerate(fs.classes)}
        out["films"][name] = [
            {"path": fs.rels[i], "label": fs.classes[fs.labels[i]], "patient": fs.groups[i] if not fs.groups[i].startswith("f:") else None}
            for i in sel
        ]
    return out


def split_from_json(fs: FilmSet, data: dict) -> np.ndarray:
    """Reuse a saved split. Every decoded film must be listed; a film the split names but that is gone is reported."""
    where = {}
    for si, name in enumerate(SPLITS):
        for rec in data.get("films", {}).get(name, []):
            where[rec["path"]] = si
    unknown = [r for r in fs.rels if r not in where]
    if unknown:
        raise DataError(
            f"{len(unknown)} film(s) are not in the given split file (for example {unknown[0]}); the data changed since the split was made"
        )
    gone = set(where) - set(fs.rels)
    if gone:
        fs.source.problems.append(f"{len(gone)} film(s) named in the split file are missing or unreadable now")
    ids = np.asarray([where[r] for r in fs.rels], dtype=np.int64)
    check_split(fs, ids)
    return ids


# --- tensors ---------------------------------------------------------------------------------------------

def dataset_mean_std(images: np.ndarray) -> tuple:
    """Grey mean and std of the training films on the 0..1 scale, as seed 003 normalises."""
    x = images.astype(np.float64) / 255.0
    m, s = float(x.mean()), float(x.std())
    return (m, m, m), (max(s, 1e-3),) * 3
