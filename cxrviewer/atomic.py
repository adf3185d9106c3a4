"""Atomic file replacement: a reader (or a crash) sees the old file or the new one, never half of either.

Checkpoints, the trainer's resume state and installed models are all written this way, so killing the
process mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _default_mode(tmp)  # after the caller wrote: some writers (safetensors) replace the file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _default_mode(tmp) -> None:
    """mkstemp makes the file private (0600); a checkpoint or report should get the permissions any new file
    gets (0666 less the umask), so a model installed for a shared workstation is readable by its users."""
    if os.name != "posix":
        return
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(tmp, 0o666 & ~mask)
    except OSError:
        pass


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(d) -> None:
    """Make a rename durable. Directories cannot be opened for fsync on Windows, where os.replace is atomic."""
    if os.name != "posix":
        return
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
