"""QSettings in one place: organisation "CXRViewer", application "CXR Viewer".

``CXRVIEWER_SETTINGS_DIR`` redirects them to an INI file in that folder (tests, portable installs) so a
test run never touches the reader's own settings.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

ORG = "CXRViewer"
APP = "CXR Viewer"


def make_settings() -> QSettings:
    folder = os.environ.get("CXRVIEWER_SETTINGS_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        return QSettings(os.path.join(folder, "cxrviewer.ini"), QSettings.IniFormat)
    return QSettings(ORG, APP)
