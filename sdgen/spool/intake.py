"""Reading a request file that anyone may have dropped: every check that must pass before
its bytes reach the YAML parser, and the rule for which inbox names are requests at all."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from sdgen import defaults
from sdgen.exceptions import RequestError
from sdgen.spool.request import Request, parse_request

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _+-]*(\.[A-Za-z0-9 _+-]+)*$")


def is_candidate(name: str) -> bool:
    """Inbox entries that are (or claim to be) requests. Hidden names and `.part`/`.tmp`
    names are files still being written: publish by writing one of those, then renaming."""
    if name.startswith(".") or name.endswith((".part", ".tmp")):
        return False
    return name.endswith((".yaml", ".yml"))


def read_request_file(path: Path, max_bytes: int = defaults.MAX_REQUEST_BYTES,
                      check_name: bool = True) -> Request:
    """Read and validate a request file without following links or reading huge files."""
    name = path.name
    if check_name and (not SAFE_NAME.match(name) or ".." in name):
        raise RequestError(
            f"file name {name!r} may only use letters, digits, spaces, '-', '_' and single dots: rename it"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RequestError(f"{name} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise RequestError(f"{name} is a symbolic link: copy the request file itself into the inbox")
    if not stat.S_ISREG(st.st_mode):
        raise RequestError(f"{name} is not a regular file: a request is a YAML text file")
    if st.st_size == 0:
        raise RequestError(f"{name} is empty: write at least `prompt: <text>`")
    if st.st_size > max_bytes:
        raise RequestError(
            f"{name} is {st.st_size} bytes; a request file may be at most {max_bytes} bytes"
        )
    # O_NOFOLLOW: the file cannot be swapped for a link between the check and the open.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise RequestError(f"{name} is over {max_bytes} bytes; a request file may be at most that")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise RequestError(f"{name} contains NUL bytes: a request is a YAML text file")
    try:
        return parse_request(text)
    except RequestError as e:
        raise RequestError(f"{name}: {e}") from None
