"""Where bundled resources and the user's own files live.

Resources sit at the repository top level (``resources/``) in a source or editable install and beside
the executable in a PyInstaller bundle; ``CXRVIEWER_RESOURCES`` overrides both, which tests use.
User files (installed models, trainer runs, settings backups) go to the platform's data folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "CXRViewer"
APP_AUTHOR = "CXRViewer"


def resources_dir() -> Path:
    env = os.environ.get("CXRVIEWER_RESOURCES")
    if env:
        return Path(env)
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def bundled_models_dir() -> Path:
    return resources_dir() / "models"


def samples_dir() -> Path:
    return resources_dir() / "samples"


def icons_dir() -> Path:
    return resources_dir() / "icons"


def user_data_dir() -> Path:
    """The user's data folder (``CXRVIEWER_DATA`` overrides it); not created here."""
    env = os.environ.get("CXRVIEWER_DATA")
    if env:
        return Path(env)
    from platformdirs import user_data_dir as _udd

    return Path(_udd(APP_NAME, APP_AUTHOR))


def user_models_dir() -> Path:
    return user_data_dir() / "models"


def user_runs_dir() -> Path:
    return user_data_dir() / "runs"
