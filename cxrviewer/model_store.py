"""Finding models (bundled with the program, installed by the user, opened from a file) and keeping the
loaded ones in memory.

Listing reads only checkpoint headers (:func:`cxrviewer.checkpoint.read_card`), so the selector fills
instantly even with large models; a damaged or foreign file becomes a line in the problems list rather
than an exception, because one bad file in a folder must not hide the good ones. :class:`ModelCache`
loads a checkpoint once per device and hands the same :class:`~cxrviewer.inference.Predictor` to every
caller, so switching films never reloads and switching back to a model is instant.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from cxrviewer import paths
from cxrviewer.atomic import atomic_path
from cxrviewer.checkpoint import (
    PICKLE_SUFFIXES,
    SUFFIX,
    CheckpointError,
    load_checkpoint,
    read_card,
)

SOURCES = ("bundled", "user", "opened")


@dataclass
class ModelEntry:
    """A model the viewer can offer: where it is, where it came from, and its (validated) card."""

    name: str
    display_name: str
    path: Path
    source: str  # "bundled" | "user" | "opened"
    arch: str
    classes: tuple
    card: dict = field(repr=False)

    @property
    def is_default(self) -> bool:
        return bool(self.card.get("default", False))

    def label(self) -> str:
        """What the selector shows: name, classes and origin."""
        return f"{self.display_name} — {', '.join(self.classes)} ({self.source})"


def entry_for(path, source: str = "opened") -> ModelEntry:
    """Read one checkpoint's header into an entry (raises CheckpointError for a bad file)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    path = Path(path)
    card = read_card(path)
    return ModelEntry(
        name=card["name"], display_name=card["display_name"], path=path, source=source, arch=card["arch"],
        classes=tuple(card["classes"]), card=card,
    )


def _candidates(folder: Path) -> list:
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() == SUFFIX or p.suffix.lower() in PICKLE_SUFFIXES:
            out.append(p)
    return out


def discover_models(extra_paths: Iterable = ()) -> tuple:
    """All usable models and the files that could not be used: ``(entries, [(path, message), ...])``.

    Order: bundled (the default first), then the user's, then ``extra_paths`` (opened files). Pickled
    ``.pt``/``.pth`` files in the model folders are reported as problems with the reason, since a user
    who dropped one there expects to see why it is not offered."""
    entries, problems = [], []
    seen = set()
    for source, folder in (("bundled", paths.bundled_models_dir()), ("user", paths.user_models_dir())):
        found = []
        for p in _candidates(Path(folder)):
            try:
                found.append(entry_for(p, source))
            except CheckpointError as e:
                problems.append((p, str(e)))
            seen.add(_key(p))
        found.sort(key=lambda e: (not e.is_default, e.display_name.lower()))
        entries.extend(found)
    for p in extra_paths:
        p = Path(p)
        if _key(p) in seen:
            continue
        seen.add(_key(p))
        try:
            entries.append(entry_for(p, "opened"))
        except CheckpointError as e:
            problems.append((p, str(e)))
    return entries, problems


def _key(p: Path) -> str:
    try:
        return os.path.normcase(str(Path(p).resolve()))
    except OSError:
        return os.path.normcase(str(p))


def default_model_entry(entries: Optional[list] = None) -> Optional[ModelEntry]:
    """The bundled model whose card says ``"default": true``, else the first bundled one, else the first
    user model (a build shipped without models still has one once the user installs one), else None."""
    if entries is None:
        entries, _ = discover_models()
    bundled = [e for e in entries if e.source == "bundled"]
    for e in bundled:
        if e.is_default:
            return e
    if bundled:
        return bundled[0]
    users = [e for e in entries if e.source == "user"]
    return users[0] if users else None


def find_model(name_or_path, entries: Optional[list] = None) -> ModelEntry:
    """Resolve ``--model``: an existing file path (opened), else a model name, display name or file stem
    (case-insensitive). A user model shadows a bundled one of the same name: installing a retrained copy
    is how a user replaces it. Raises LookupError listing what exists."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return entry_for(p, "opened")
    if entries is None:
        entries, _ = discover_models()
    want = s.strip().lower()
    order = sorted(entries, key=lambda e: {"opened": 0, "user": 1, "bundled": 2}[e.source])
    for attr in ("name", "display_name"):
        for e in order:
            if getattr(e, attr).lower() == want:
                return e
    for e in order:
        if e.path.stem.lower() == want:
            return e
    if p.suffix or os.sep in s or (os.altsep and os.altsep in s):
        raise LookupError(f"model file not found: {p.name}")
    names = ", ".join(e.name for e in entries) or "none installed"
    raise LookupError(f"no model named {s!r}; available: {names}")


def _safe_filename(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return stem[:120] + SUFFIX


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_model(src_path, overwrite: bool = False) -> ModelEntry:
    """Copy a checkpoint into the user's models folder after checking it completely (card and weights
    against the architecture), so nothing unusable is ever installed. The copy is atomic. Installing the
    same file again is a no-op; a different model under the same name needs ``overwrite=True``."""
    src = Path(src_path)
    load_checkpoint(src, "cpu")  # full validation; raises CheckpointError
    card = read_card(src)
    dest_dir = paths.user_models_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / _safe_filename(card["name"])
    if dest.exists():
        if _key(dest) == _key(src) or _digest(dest) == _digest(src):
            return entry_for(dest, "user")
        if not overwrite:
            raise CheckpointError(src, f"a different model named {card['name']!r} is already installed "
                                       f"({dest.name}); remove it or install with overwrite")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return entry_for(dest, "user")


class ModelCache:
    """Loaded predictors, one per (checkpoint file, device), shared by every caller and thread.

    Two threads asking for the same model wait for one load; different models load in parallel. The
    file's size and modification time are part of the key, so a checkpoint replaced on disk (retrained,
    reinstalled) is loaded afresh. ``max_models`` bounds memory: the least recently used is dropped."""

    def __init__(self, max_models: int = 4, loader: Optional[Callable] = None):
        from cxrviewer.inference import Predictor

        self.max_models = max(1, int(max_models))
        self._loader = loader or (lambda path, device: Predictor.from_checkpoint(path, device))
        self._lock = threading.Lock()
        self._items: "OrderedDict[tuple, object]" = OrderedDict()
        self._loading: dict = {}  # key -> Lock held while that key loads
        self.loads = 0  # how many times a file was actually loaded (tests and the status bar use it)

    @staticmethod
    def _make_key(path, device) -> tuple:
        p = Path(path)
        st = p.stat()
        dev = "auto" if device is None else str(device)
        return (_key(p), st.st_size, st.st_mtime_ns, dev)

    def get(self, model, device=None):
        """The Predictor for ``model`` (a ModelEntry or a path) on ``device`` (None: automatic)."""
        path = model.path if isinstance(model, ModelEntry) else Path(model)
        try:
            key = self._make_key(path, device)
        except OSError as e:
            raise CheckpointError(path, f"cannot read the file ({e.strerror or e})") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                predictor = self._loader(path, device)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.loads += 1
                self._items[key] = predictor
                while len(self._items) > self.max_models:
                    self._items.popitem(last=False)
            return predictor

    def cached(self, model, device=None):
        """The predictor if already loaded, else None (never loads: for the UI thread)."""
        path = model.path if isinstance(model, ModelEntry) else Path(model)
        try:
            key = self._make_key(path, device)
        except OSError:
            return None
        with self._lock:
            return self._items.get(key)

    def evict(self, path=None) -> None:
        """Forget one file's predictors (all devices), or everything."""
        with self._lock:
            if path is None:
                self._items.clear()
                return
            k = _key(Path(path))
            for key in [key for key in self._items if key[0] == k]:
                del self._items[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
