"""Reading a request file that anyone may have dropped: every check that must pass before
its bytes reach the YAML parser, and the rule for which inbox names are requests at all."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

from sdgen import defaults
from sdgen.batch.templates import check_request, is_template, wildcards_for_request_file
from sdgen.exceptions import RequestError
from sdgen.spool.records import CorruptKind, CorruptRecord, read_bytes
from sdgen.spool.request import Request, _clip, parse_request

# Letters, digits, spaces and the punctuation people's tools put in names ("my request (1).yml"),
# but nothing a shell, a terminal or a path would read as syntax: no '/', no control characters,
# no leading '.' or '-'.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _+\-()\[\],@=~#&]*(\.[A-Za-z0-9 _+\-()\[\],@=~#&]+)*$")

REQUEST_SUFFIXES = (".yaml", ".yml")


def is_candidate(name: str) -> bool:
    """Inbox entries that are (or claim to be) requests. Hidden names and `.part`/`.tmp`
    names are files still being written: publish by writing one of those, then renaming."""
    if name.startswith(".") or name.endswith((".part", ".tmp")):
        return False
    return name.endswith(REQUEST_SUFFIXES)


def is_stray(name: str) -> bool:
    """An inbox entry that will never be taken (no .yaml/.yml suffix, not a file being
    written): `sdgen status` names it so that it does not sit there unnoticed."""
    return not (is_candidate(name) or name.startswith(".") or name.endswith((".part", ".tmp")))


def owner_name(uid: int) -> str:
    """A uid's user name; the uid as text when the passwd database has no entry (a container
    without one, an NFS file of another host's user)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def file_owner(path: Path) -> str:
    """Who dropped a request file: its owner's name ("" if it cannot be looked at). `sdgen
    submit` writes the inbox file as the submitting user, and renames keep the owner."""
    try:
        return owner_name(os.lstat(path).st_uid)
    except OSError:
        return ""


def read_request_file(
    path: Path,
    max_bytes: int = defaults.MAX_REQUEST_BYTES,
    check_name: bool = True,
    wildcards: Path | None = None,
) -> Request:
    """Read and validate a request file: opened without blocking and without following
    links, checked on the open descriptor (so a file swapped for a FIFO or a link between a
    look and the open is still refused), size-capped, then parsed with the shape limits,
    then its templates expanded once to check them (`wildcards`: the data directory's
    wildcards folder; by default the one of the spool whose inbox/ or incoming/ holds it)."""
    name = path.name
    shown = _clip(name, 80)
    if check_name and (not SAFE_NAME.match(name) or ".." in name):
        raise RequestError(
            f"file name {shown!r} may only use letters, digits, spaces, '-', '_', '+', brackets and "
            "single dots: rename it"
        )
    try:
        raw = read_bytes(path, max_bytes)
    except FileNotFoundError:
        raise RequestError(f"{shown} does not exist") from None
    except CorruptRecord as e:
        if e.kind is CorruptKind.TOO_BIG:
            raise RequestError(
                f"{shown} is over {max_bytes} bytes; a request file may be at most {max_bytes} bytes: "
                "split it into several requests"
            ) from None
        if e.kind is CorruptKind.SYMLINK:
            raise RequestError(f"{shown} is a symbolic link: copy the request file itself into the inbox") from None
        if e.kind is CorruptKind.NOT_REGULAR:
            raise RequestError(f"{shown} is not a regular file: a request is a YAML text file") from None
        raise RequestError(f"{shown} {e.reason}") from None
    except OSError as e:
        raise RequestError(f"{shown} cannot be read ({e.strerror or e})") from None
    if not raw:
        raise RequestError(f"{shown} is empty: write at least `prompt: <text>`")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            f"{shown} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise RequestError(f"{shown} contains NUL bytes: a request is a YAML text file")
    try:
        request = parse_request(text)
        if request.version >= 2 and any(is_template(p) for p in request.prompts):
            check_request(request, wildcards or wildcards_for_request_file(path))
        return request
    except RequestError as e:
        raise RequestError(f"{shown}: {e}") from None
