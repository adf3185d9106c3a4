"""Test-wide setup: headless Qt, and every test isolated from the user's real data folder and settings."""

import os
import sys
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


@pytest.fixture(autouse=True)
def _gui_thread_gc_per_test():
    """A window's job runner switches Python's automatic collection off for the GUI-thread collector;
    after the test (its widgets closed by then: autouse fixtures are torn down last) that garbage is
    collected here, on the main thread, and automatic collection is back for the tests that follow."""
    yield
    module = sys.modules.get("cxrviewer.gui.gui_thread_gc")
    if module is not None:
        module.uninstall()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module. Two cores shared by several jobs: OpenMP threads spinning
    against other processes made forwards 5-15x slower, and one thread is bit-reproducible; no
    result depends on it."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def shared_path(*parts) -> Path:
    """A path under ../shared/data, skipping the test when the shared data is not on this machine."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p
