"""Single instance: a second start (a double-click in the file manager) hands its films to the running window.

The running instance is this test process (a real InstanceServer attached to a real window); the second
start is a real subprocess of ``cxrviewer`` with a unique ``CXRVIEWER_INSTANCE_NAME``, so parallel test
runs and a reader's own viewer never collide.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")

from PySide6.QtCore import QDir  # noqa: E402
from PySide6.QtNetwork import QLocalSocket  # noqa: E402

from cxrviewer.gui.app import _single_instance_wanted, build_parser  # noqa: E402
from cxrviewer.gui.backend import Backend  # noqa: E402
from cxrviewer.gui.main_window import MainWindow  # noqa: E402
from cxrviewer.gui.single_instance import InstanceServer, attach_window, send_to_running  # noqa: E402
from gui_helpers import show_window  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# what `python -m cxrviewer` runs, plus a report of what the hand-over imported and how long it took
SECOND_START = """
import sys, time
t0 = time.perf_counter()
from cxrviewer.cli import main
rc = main(sys.argv[1:])
print("torch:", "torch" in sys.modules, "widgets:", "PySide6.QtWidgets" in sys.modules,
      "seconds: %.2f" % (time.perf_counter() - t0))
sys.exit(rc)
"""


class NoModel(Backend):
    def discover(self):
        return []


def _png(path, h=50, w=40):
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(((x + y) * 255 // (h + w)).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def instance_name(monkeypatch):
    name = f"cxrviewer-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CXRVIEWER_INSTANCE_NAME", name)
    return name


@pytest.fixture
def running(qtbot, instance_name):
    win = show_window(qtbot, NoModel(), size=(900, 600))
    server = InstanceServer(instance_name)
    assert server.listen()
    attach_window(server, win)
    yield win, server
    server.close()


def _second_start(args, cwd, name, module=False):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CXRVIEWER_INSTANCE_NAME=name,
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "cxrviewer", *args] if module else [sys.executable, "-c", SECOND_START, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_exit(qtbot, proc, timeout_ms=30000):
    """Keep this process's event loop running (it is the server) until the second start exits."""
    t0 = time.monotonic()
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=timeout_ms)
    out, err = proc.communicate()
    return proc.returncode, out, err, time.monotonic() - t0


def test_second_start_hands_its_film_over_without_loading_torch(qtbot, running, instance_name, tmp_path):
    win, _server = running
    film = _png(tmp_path / "double-clicked.png")
    # a relative path, as a file manager may pass: it must arrive absolute
    rc, out, err, took = _wait_exit(qtbot, _second_start(["double-clicked.png"], tmp_path, instance_name))
    assert rc == 0, err
    assert "torch: False widgets: False" in out  # no window, no torch: the hand-over is cheap
    assert took < 20
    qtbot.waitUntil(lambda: win.film is not None and win.current_path == str(film), timeout=10000)
    assert win.film.shape == (50, 40) and win.isVisible()


def test_python_dash_m_cxrviewer_hands_over_too(qtbot, running, instance_name, tmp_path):
    win, _server = running
    a, b = _png(tmp_path / "a.png", 30, 30), _png(tmp_path / "b.png", 44, 30)
    rc, _out, err, _took = _wait_exit(qtbot, _second_start([str(a), str(b)], tmp_path, instance_name, module=True))
    assert rc == 0, err
    qtbot.waitUntil(lambda: win.worklist.count() == 2 and win.film is not None, timeout=10000)
    assert [Path(p).name for p in win.worklist.paths()] == ["a.png", "b.png"]


def test_without_a_running_viewer_nothing_answers(instance_name):
    t0 = time.monotonic()
    assert send_to_running(["/tmp/x.png"], name=instance_name) is False
    assert time.monotonic() - t0 < 3


def test_a_malformed_message_is_refused_and_opens_nothing(qtbot, running, instance_name):
    win, server = running
    got = []
    server.pathsReceived.connect(got.append)
    sock = QLocalSocket()
    sock.connectToServer(instance_name)
    assert sock.waitForConnected(2000)
    sock.write(b'{"paths": "not a list"}\n')
    sock.flush()
    qtbot.waitUntil(lambda: sock.bytesAvailable() > 0 or sock.state() == QLocalSocket.UnconnectedState, timeout=5000)
    assert bytes(sock.readAll()).strip() == b"error"
    qtbot.wait(50)
    assert got == [] and win.current_path is None


@pytest.mark.skipif(os.name == "nt", reason="stale socket files exist on Unix only")
def test_a_stale_socket_file_from_a_crash_is_replaced(qtbot, instance_name, tmp_path):
    path = os.path.join(QDir.tempPath(), instance_name)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody listens on: what a crashed viewer leaves behind
    stale.close()
    assert os.path.exists(path)
    try:
        server = InstanceServer(instance_name)
        assert server.listen()
        got = []
        server.pathsReceived.connect(got.append)
        film = _png(tmp_path / "f.png")
        proc = _second_start([str(film)], tmp_path, instance_name)
        rc, _out, err, _took = _wait_exit(qtbot, proc)
        assert rc == 0, err
        assert got == [[str(film)]]
        server.close()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_screenshot_and_new_instance_runs_never_hand_over():
    p = build_parser()
    assert _single_instance_wanted(p.parse_args(["film.dcm"]))
    assert _single_instance_wanted(p.parse_args([]))
    assert not _single_instance_wanted(p.parse_args(["--new-instance", "film.dcm"]))
    assert not _single_instance_wanted(p.parse_args(["--screenshot", "out.png", "film.dcm"]))
    assert not _single_instance_wanted(p.parse_args(["--model", "m", "film.dcm"]))


def test_macos_file_open_events_open_the_film(qtbot, tmp_path):
    """Finder sends files to a running app as QFileOpenEvent; they open like a hand-over."""
    from PySide6.QtGui import QFileOpenEvent
    from PySide6.QtWidgets import QApplication

    from cxrviewer.gui.single_instance import install_file_open_filter

    win = MainWindow(backend=NoModel(), persist_settings=False)
    qtbot.addWidget(win)
    win.show()
    filt = install_file_open_filter(QApplication.instance(), win)
    try:
        film = _png(tmp_path / "from-finder.png", 36, 28)
        QApplication.sendEvent(QApplication.instance(), QFileOpenEvent(str(film)))
        qtbot.waitUntil(lambda: win.film is not None, timeout=10000)
        assert win.current_path == str(film) and win.film.shape == (36, 28)
    finally:
        QApplication.instance().removeEventFilter(filt)
