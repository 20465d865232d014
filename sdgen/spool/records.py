"""Reading any file of the spool as untrusted input: the one place that opens spool records.

Anything under spool/ may be damaged, truncated, huge, deeply nested, a FIFO, a symlink or
someone else's. Every reader goes through `read_bytes` (opened without blocking and without
following links, checked on the open descriptor, size-capped) and `load_json_object`, and
meets exactly two outcomes besides success: FileNotFoundError (the file moved on: the
protocol's normal race) or `CorruptRecord` (a one-line reason and a `CorruptKind`; the
daemon moves the file to spool/corrupt/, Postfix style, and carries on).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from enum import Enum
from pathlib import Path

from sdgen import defaults
from sdgen.exceptions import SdgenError


class CorruptKind(Enum):
    """What is wrong with a corrupt record, for callers that answer each case in their own
    words (a request file's author is told to split it, copy it, ...) without parsing
    `reason`, which is worded for people and may change."""

    TOO_BIG = "too big"  # over the size cap, or grew past it while being read
    SYMLINK = "symbolic link"
    NOT_REGULAR = "not a regular file"  # a FIFO, device, socket or folder
    UNREADABLE = "unreadable"  # permission denied, a file above it in the path, a read error
    BAD_CONTENT = "bad content"  # read whole, but not what its place promises (JSON, shape, fields)


class CorruptRecord(SdgenError):
    """A spool file that cannot be read or does not hold what its place promises."""

    def __init__(self, path: Path | str, reason: str, kind: CorruptKind = CorruptKind.BAD_CONTENT):
        self.path = Path(path)
        self.reason = one_line(reason)
        self.kind = kind
        super().__init__(f"{self.path.name}: {self.reason}")


def one_line(text: str, limit: int = defaults.MAX_REASON_CHARS) -> str:
    """A reason fit for a log line, a `.reason` file or `sdgen status`: one line, bounded."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"


def read_bytes(path: Path, max_bytes: int = defaults.MAX_RECORD_BYTES) -> bytes:
    """The bytes of a regular file, or CorruptRecord. Never blocks on a FIFO or device,
    never follows a link, never reads more than max_bytes + 1."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptRecord(path, "is a symbolic link, not a file", CorruptKind.SYMLINK) from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise CorruptRecord(
                path, "cannot be read (permission denied): check its owner and mode", CorruptKind.UNREADABLE
            ) from None
        if e.errno in (errno.ENXIO, errno.EISDIR):
            raise CorruptRecord(path, "is not a regular file", CorruptKind.NOT_REGULAR) from None
        if e.errno == errno.ENOTDIR:
            raise CorruptRecord(path, "cannot be: a folder above it is a file", CorruptKind.UNREADABLE) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptRecord(path, "is not a regular file", CorruptKind.NOT_REGULAR)
        if st.st_size > max_bytes:
            raise CorruptRecord(
                path, f"is {st.st_size} bytes; at most {max_bytes} are expected here", CorruptKind.TOO_BIG
            )
        chunks, left = [], max_bytes + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except BlockingIOError:  # a non-blocking read of a regular file cannot block; be safe
                raise CorruptRecord(path, "cannot be read without blocking", CorruptKind.UNREADABLE) from None
            except OSError as e:
                raise CorruptRecord(path, f"cannot be read ({e.strerror})", CorruptKind.UNREADABLE) from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise CorruptRecord(path, f"grew past {max_bytes} bytes while being read", CorruptKind.TOO_BIG)
        return data
    finally:
        os.close(fd)


def parse_json(path: Path, data: bytes):
    """JSON from bytes; every way it can be wrong is a CorruptRecord (deep nesting included:
    json's recursion ends in RecursionError, not ValueError)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        what = "is nested too deeply" if isinstance(e, RecursionError) else f"is not valid JSON ({e})"
        raise CorruptRecord(path, what, CorruptKind.BAD_CONTENT) from None


def load_json(path: Path, max_bytes: int = defaults.MAX_RECORD_BYTES):
    return parse_json(path, read_bytes(path, max_bytes))


def load_json_object(path: Path, max_bytes: int = defaults.MAX_RECORD_BYTES) -> dict:
    value = load_json(path, max_bytes)
    if not isinstance(value, dict):
        raise CorruptRecord(path, f"holds a JSON {type(value).__name__}, not an object", CorruptKind.BAD_CONTENT)
    return value


def require(path: Path, record: dict, **fields: type | tuple[type, ...]) -> dict:
    """Check that `record` has each field with the given type(s); bool never passes as int."""
    for name, kind in fields.items():
        value = record.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if value is None and type(None) in kinds:
            continue
        if isinstance(value, bool) and bool not in kinds:
            raise CorruptRecord(path, f"field {name!r} is a boolean, not {kinds[0].__name__}", CorruptKind.BAD_CONTENT)
        if not isinstance(value, kinds):
            raise CorruptRecord(
                path, f"field {name!r} is missing or not a {kinds[0].__name__}", CorruptKind.BAD_CONTENT
            )
    return record
