"""Atomic publish: write in spool/tmp, fsync, rename into place, fsync the directory
(sdgen/fsutil.py).

A reader either sees the whole file or nothing. `link_new` publishes only if the target
does not exist yet (the exactly-once primitive behind done-markers).
"""

from __future__ import annotations

import os
from pathlib import Path

# The atomic-file helpers live in sdgen/fsutil.py (the engine's snapshots use them too);
# `publish` is the spool's name for atomic_write.
from sdgen.fsutil import atomic_write as publish  # noqa: F401
from sdgen.fsutil import fsync_dir, write_tmp


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
