"""Atomic publish: write in spool/tmp, fsync, rename into place, fsync the directory.

A reader either sees the whole file or nothing. `link_new` publishes only if the target
does not exist yet (the exactly-once primitive behind done-markers).
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


def publish(tmp_dir: Path, target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically, replacing any previous version."""
    tmp = write_tmp(tmp_dir, target, data)
    try:
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def link_new(tmp_dir: Path, target: Path, data: bytes, mtime: float | None = None) -> bool:
    """Publish `data` at `target` only if nothing is there yet. True if this call won.
    `mtime` dates the file (the inbox's quiet-file rule: a complete file dated back is taken
    at once)."""
    tmp = write_tmp(tmp_dir, target, data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return True
