"""Test-wide setup: headless Qt, and every test isolated from the user's real data folder and settings."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """User data and settings go to a fresh temporary folder, never the real profile."""
    home = tmp_path_factory.mktemp("userdata")
    monkeypatch.setenv("CXRVIEWER_DATA", str(home / "data"))
    monkeypatch.setenv("CXRVIEWER_SETTINGS_DIR", str(home / "settings"))
    yield


def shared_path(*parts) -> Path:
    """A path under ../shared/data, skipping the test when the shared data is not on this machine."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p
