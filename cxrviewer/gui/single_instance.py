"""One viewer per user: a second start hands its films to the running window and exits.

A double-click on a film in the file manager starts ``cxrviewer FILE``. Without this, every double-click
would open another window and load torch and the model again (seconds, and hundreds of MB each). So the
first instance listens on a local socket (a Unix domain socket / a Windows named pipe, via
QLocalServer) named per user; a later start connects, sends its paths as JSON (absolute: the two
processes need not share a working folder), waits for the acknowledgement and exits 0. The client side
needs only QtNetwork: no QApplication, no window, no torch, so the hand-over takes a fraction of a second.

Protocol: one UTF-8 JSON line ``{"version": 1, "paths": [...]}``, answered by the line ``ok``.

A crash leaves the socket file behind on Unix; ``listen`` then fails with "address in use" although
nobody answers. That is told apart from a live server by trying to connect first, and only then is the
stale name removed (``QLocalServer.removeServer``) and listening retried.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

ENV_NAME = "CXRVIEWER_INSTANCE_NAME"
PROTOCOL_VERSION = 1
MAX_MESSAGE = 1 << 20  # 1 MiB of paths is plenty; a larger message is not ours


def server_name() -> str:
    """The per-user name (``cxrviewer-<uid>``); ``CXRVIEWER_INSTANCE_NAME`` overrides it (tests)."""
    env = os.environ.get(ENV_NAME, "").strip()
    if env:
        return env
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        return f"cxrviewer-{getuid()}"
    user = "".join(c for c in getpass.getuser() if c.isalnum() or c in "-_") or "user"
    return f"cxrviewer-{user}"  # Windows: named pipes are per session, the user name keeps users apart


def encode_message(paths: Iterable) -> bytes:
    absolute = [str(Path(p).expanduser().absolute()) for p in paths]
    return (json.dumps({"version": PROTOCOL_VERSION, "paths": absolute}) + "\n").encode("utf-8")


def decode_message(data: bytes) -> list:
    """The paths in a message; ValueError for anything that is not one (wrong version, not JSON)."""
    msg = json.loads(data.decode("utf-8"))
    if not isinstance(msg, dict) or msg.get("version") != PROTOCOL_VERSION:
        raise ValueError("not a CXR Viewer message")
    paths = msg.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError("paths must be a list of strings")
    return paths


def send_to_running(paths: Iterable, name: Optional[str] = None, timeout_ms: int = 2000) -> bool:
    """Hand ``paths`` to a running viewer; True when it acknowledged them (this process may exit).

    False when none is running or it did not answer in time (then this process becomes the viewer)."""
    sock = QLocalSocket()
    sock.connectToServer(name or server_name())
    if not sock.waitForConnected(min(timeout_ms, 1000)):
        return False
    try:
        sock.write(encode_message(paths))
        if not sock.waitForBytesWritten(timeout_ms):
            return False
        reply = b""
        while b"\n" not in reply:
            if not sock.waitForReadyRead(timeout_ms):
                return False
            reply += bytes(sock.readAll())
        return reply.strip() == b"ok"
    finally:
        sock.abort()


class InstanceServer(QObject):
    """The running viewer's end: emits ``pathsReceived`` (absolute paths) for each second start."""

    pathsReceived = Signal(list)

    def __init__(self, name: Optional[str] = None, parent=None):
        super().__init__(parent)
        self.name = name or server_name()
        self.server = QLocalServer(self)
        # only this user may connect: on Unix the socket file is created with the user's permissions
        self.server.setSocketOptions(QLocalServer.UserAccessOption)
        self.server.newConnection.connect(self._accept)
        self._buffers: dict = {}

    def listen(self) -> bool:
        """Become the instance. False if another live instance holds the name (the caller hands over).

        A name that is in use but where nobody answers is a stale socket from a crash: removed, retried."""
        if self.server.listen(self.name):
            return True
        if self.server.serverError() == QLocalSocket.AddressInUseError or _socket_file_exists(self.name):
            probe = QLocalSocket()
            probe.connectToServer(self.name)
            alive = probe.waitForConnected(300)
            probe.abort()
            if alive:
                return False
            log.info("removing stale single-instance socket %s", self.name)
            QLocalServer.removeServer(self.name)
            if self.server.listen(self.name):
                return True
        log.warning("single instance: cannot listen on %s: %s", self.name, self.server.errorString())
        return False

    def full_name(self) -> str:
        return self.server.fullServerName()

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            self._buffers[sock] = b""
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(lambda s=sock: self._forget(s))

    def _forget(self, sock) -> None:
        self._buffers.pop(sock, None)
        sock.deleteLater()

    def _read(self, sock) -> None:
        buf = self._buffers.get(sock, b"") + bytes(sock.readAll())
        if len(buf) > MAX_MESSAGE:
            sock.abort()
            return
        self._buffers[sock] = buf
        if b"\n" not in buf:
            return
        line = buf.split(b"\n", 1)[0]
        try:
            paths = decode_message(line)
        except ValueError as exc:  # includes JSON and Unicode errors
            log.warning("single instance: ignored a malformed message (%s)", exc)
            sock.write(b"error\n")
            sock.flush()
            sock.disconnectFromServer()
            return
        sock.write(b"ok\n")
        sock.flush()
        sock.disconnectFromServer()
        self.pathsReceived.emit(paths)


def _socket_file_exists(name: str) -> bool:
    if os.name == "nt":
        return False
    from PySide6.QtCore import QDir

    path = name if os.path.isabs(name) else os.path.join(QDir.tempPath(), name)
    return os.path.exists(path)


def bring_to_front(win) -> None:
    """Raise and activate the window (un-minimising it); window managers may only flash it instead."""
    from PySide6.QtCore import Qt

    if win.windowState() & Qt.WindowMinimized:
        win.setWindowState((win.windowState() & ~Qt.WindowMinimized) | Qt.WindowActive)
    win.show()
    win.raise_()
    win.activateWindow()


def attach_window(server: InstanceServer, win, open_paths: Optional[Callable] = None) -> None:
    """Films sent by later starts open in ``win`` (as if dropped on it), and it comes to the front."""
    opener = open_paths or win.open_paths

    def received(paths: list) -> None:
        if paths:
            opener(paths)
        bring_to_front(win)

    server.pathsReceived.connect(received)
    win._instance_server = server  # keeps it alive as long as the window


class FileOpenFilter(QObject):
    """macOS: Finder hands files to a running app as QFileOpenEvent (a double-click, a drop on the Dock
    icon), never as a second process; this routes them to the same opener as the socket hand-over."""

    def __init__(self, win, parent=None):
        super().__init__(parent or win)
        self.win = win

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        from PySide6.QtCore import QEvent

        if event.type() == QEvent.FileOpen:
            path = event.file() or event.url().toLocalFile()
            if path:
                self.win.open_paths([path])
                bring_to_front(self.win)
                return True
        return False


def install_file_open_filter(app, win) -> FileOpenFilter:
    filt = FileOpenFilter(win)
    app.installEventFilter(filt)
    return filt
