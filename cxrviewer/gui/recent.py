"""File ▸ Open Recent: the last films, folders and DICOMDIRs the reader opened, kept in QSettings.

Readers come back to the same folders (today's worklist, a teaching set), so the last ten things they
opened are one click away. Entries are what the reader opened (a folder stays one entry, not its 200
films); the worklist walk does not add entries. A file that has since gone (a USB stick unplugged, a
share unmounted) is shown greyed with "(missing)" rather than silently dropped, so the reader sees why
it cannot be opened; choosing one anyway removes it and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu

MAX_RECENT = 10
KEY = "recent/paths"


def _as_list(value) -> list:
    """QSettings returns a str for one-element lists in INI files, None for none."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v]


class RecentFiles(QObject):
    """The list and its menu. ``openRequested(path)`` fires for an existing entry; ``missing(path)`` for
    one that no longer exists (already removed from the list when it fires)."""

    openRequested = Signal(str)
    missing = Signal(str)

    def __init__(self, settings, persist: bool = True, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.persist = persist
        self._paths = _as_list(settings.value(KEY))[:MAX_RECENT]
        self.menu: Optional[QMenu] = None

    def paths(self) -> list:
        return list(self._paths)

    def add(self, items: Iterable) -> None:
        """Put ``items`` at the top (first item first), de-duplicated, at most ``MAX_RECENT`` kept."""
        new = [str(Path(p).expanduser().absolute()) for p in items]
        new = list(dict.fromkeys(new))[:MAX_RECENT]
        if not new:
            return
        self._paths = (new + [p for p in self._paths if p not in new])[:MAX_RECENT]
        self._save()

    def remove(self, path: str) -> None:
        if path in self._paths:
            self._paths.remove(path)
            self._save()

    def clear(self) -> None:
        self._paths = []
        self._save()

    def _save(self) -> None:
        if self.persist:
            self.settings.setValue(KEY, list(self._paths))
            self.settings.sync()
        if self.menu is not None:
            self.rebuild()

    # ------------------------------------------------------------------------------------- menu
    def build_menu(self, parent_menu: QMenu, title: str = "Open &Recent") -> QMenu:
        self.menu = parent_menu.addMenu(title)
        self.menu.aboutToShow.connect(self.rebuild)  # re-check which entries still exist
        self.rebuild()
        return self.menu

    def rebuild(self) -> None:
        menu = self.menu
        if menu is None:
            return
        menu.clear()
        if not self._paths:
            empty = menu.addAction("No recent films")
            empty.setEnabled(False)
        for i, path in enumerate(self._paths):
            exists = os.path.exists(path)
            p = Path(path)
            label = p.name or str(p)
            if p.name.upper() == "DICOMDIR" or p.is_dir():
                label = f"{p.parent.name}/{p.name}" if p.name.upper() == "DICOMDIR" else f"{p.name}/"
            text = f"&{(i + 1) % 10}  {label}" + ("" if exists else "  (missing)")
            act = QAction(text, menu)
            act.setToolTip(path)
            act.setStatusTip(path if exists else f"{path} no longer exists")
            act.setData(path)
            act.setEnabled(exists)
            act.triggered.connect(lambda _=False, q=path: self.trigger(q))
            menu.addAction(act)
        menu.addSeparator()
        if any(not os.path.exists(p) for p in self._paths):
            menu.addAction("Remove missing entries", self.remove_missing)
        clear = menu.addAction("Clear list", self.clear)
        clear.setEnabled(bool(self._paths))

    def remove_missing(self) -> None:
        gone = [p for p in self._paths if not os.path.exists(p)]
        self._paths = [p for p in self._paths if p not in gone]
        self._save()

    def trigger(self, path: str) -> None:
        if os.path.exists(path):
            self.add([path])  # opened again: back to the top
            self.openRequested.emit(path)
        else:
            self.remove(path)
            self.missing.emit(path)


def connect_window(recent: RecentFiles, open_paths: Callable, show_error: Callable) -> None:
    recent.openRequested.connect(lambda p: open_paths([p]))
    recent.missing.connect(lambda p: show_error(
        f"{Path(p).name} is no longer at {Path(p).parent}; removed from Open Recent.", "info"))
