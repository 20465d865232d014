"""Atomic files: write beside the target, fsync, rename into place, fsync the directory.

A reader sees the whole file or nothing, also after a crash. Used by the spool
(spool/publish.py builds its exactly-once `link_new` on these), the launchers' job files and
the engine's model snapshots; nothing here knows about spools or tickets.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def _tmp_path(tmp_dir: Path, target: Path) -> Path:
    # Unique per writer and host, so writers on several hosts never share a tmp file.
    # The target's name is cut so the tmp name stays under NAME_MAX (255) however long it is.
    return tmp_dir / f"{target.name[:100]}.{socket.gethostname()[:40]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tmp(tmp_dir: Path, target: Path, data: bytes) -> Path:
    """`data` in a new, fsynced file in `tmp_dir` named after `target`; its path."""
    tmp = _tmp_path(tmp_dir, target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_write(tmp_dir: Path, target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically, replacing any previous version. `tmp_dir` must
    be on `target`'s filesystem (rename does not cross filesystems)."""
    tmp = write_tmp(tmp_dir, target, data)
    try:
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
