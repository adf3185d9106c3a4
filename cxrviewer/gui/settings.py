"""QSettings in one place: organisation "CXRViewer", application "CXR Viewer".

``CXRVIEWER_SETTINGS_DIR`` redirects them to an INI file in that folder (tests, portable installs) so a
test run never touches the reader's own settings.

A settings file that cannot be read as settings (garbage bytes, a half-written file, another encoding)
is moved aside (``<name>.corrupt``) and the settings start afresh: Qt would otherwise ignore it quietly
and, when its parser reports a format error, never save over it again. What the reader should be told
is left on the returned object as the dynamic property :data:`NOTICE` (the window shows it).
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

ORG = "CXRViewer"
APP = "CXR Viewer"
NOTICE = "cxrviewerNotice"  # QSettings.property(NOTICE): a message for the reader, or None


def make_settings() -> QSettings:
    folder = os.environ.get("CXRVIEWER_SETTINGS_DIR")
    if folder:
        path = os.path.join(folder, "cxrviewer.ini")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:  # a portable install on read-only media: read nothing, save nothing
            s = QSettings(path, QSettings.IniFormat)
            s.setProperty(NOTICE, f"Settings cannot be saved in {folder} ({exc.strerror or exc}); "
                                  f"this session uses the defaults.")
            return s
        return _checked(lambda: QSettings(path, QSettings.IniFormat))
    return _checked(lambda: QSettings(ORG, APP))


def read_int(s: QSettings, key: str, default: int, lo: int, hi: int) -> int:
    """An integer setting within [lo, hi]; a value a person or another version wrote that is not a number
    gives the default (Qt's own conversion would give 0), one out of range is clamped."""
    raw = s.value(key, default)
    try:
        value = int(round(float(str(raw).strip())))
    except (TypeError, ValueError, OverflowError):
        return default
    return min(hi, max(lo, value))


def read_choice(s: QSettings, key: str, choices, default):
    """One of ``choices`` (lower-case names), read case- and space-insensitively; anything else a person or
    another version wrote gives ``default``."""
    value = str(s.value(key, "", str) or "").strip().lower()
    return value if value in choices else default


def _checked(make) -> QSettings:
    s = make()
    path = s.fileName()
    if not _unreadable(s, path):
        return s
    del s  # Qt caches a file's contents per path while an object for it lives
    backup = path + ".corrupt"
    try:
        os.replace(path, backup)
    except OSError as exc:
        s = make()
        s.setProperty(NOTICE, f"The settings file {os.path.basename(path)} cannot be read and cannot be "
                              f"replaced ({exc.strerror or exc}); this session uses the defaults.")
        return s
    s = make()
    s.setProperty(NOTICE, f"The settings file could not be read, so the settings were reset to the defaults "
                          f"(the unreadable file was kept as {os.path.basename(backup)}).")
    return s


def _unreadable(s: QSettings, path: str) -> bool:
    """True for a settings file that is not text Qt can read back (the registry on Windows is not a file)."""
    if not path or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    if not data.strip():
        return False
    if b"\x00" in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    s.allKeys()
    return s.status() == QSettings.FormatError
