"""Who may write, and which files may be served. Pure functions, no framework.

Everything the server reads is untrusted: a request id or file name in a URL names a file
only when it matches the protocol's own spelling, and a path is served only when it lies
inside the data directory and is not a symbolic link.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import stat
from pathlib import Path

from sdgen.spool.layout import REQUEST_ID

# An image name as workers write them (layout.image_file_name; a sweep's c<combination>- first).
IMAGE_NAME = re.compile(r"^(?:c\d{1,6}-)?\d{4,6}-\d{6,8}-\d{1,20}\.png$")


class Refused(Exception):
    """A one-line reason for a 4xx answer; `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether binding `host` reaches this machine only ("localhost", 127.x, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, "0.0.0.0", "": reachable from elsewhere (or unknown)


def token_matches(given: str | None, token: str) -> bool:
    """`given` is the token, compared in constant time (no early exit on the first wrong byte)."""
    if not given or not token:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def write_refusal(read_only: bool, token: str | None, loopback: bool, given: str | None) -> Refused | None:
    """Why a write must be refused, or None: read-only first, then the token rule (a token,
    when set, is always asked for; off loopback a write needs one)."""
    if read_only:
        return Refused(
            "this dashboard is read-only (sdgen web --read-only): use `sdgen` itself to change the queue", 403
        )
    if token:
        if not token_matches(given, token):
            what = "a wrong token" if given else "no token"
            return Refused(
                f"{what}: writes need the token sdgen web was started with (--token / SDGEN_WEB_TOKEN), "
                "as `Authorization: Bearer TOKEN` or through the page's token form",
                401,
            )
        return None
    if not loopback:
        return Refused(
            "writes are off: sdgen web listens beyond this machine without a token; restart it with "
            "--token or SDGEN_WEB_TOKEN set",
            403,
        )
    return None


def request_id(text: str) -> str:
    """`text` when it is a request id; else a 404 Refused (nothing is looked up with it)."""
    if not isinstance(text, str) or not REQUEST_ID.fullmatch(text):
        raise Refused(f"not a request id: {text[:40]!r} (ids look like 20261126-065149-a1b2c3)", 404)
    return text


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, every link in it resolved, lies inside `root` (resolved too)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def image_path(root: Path, output_dir: Path, rid: str, name: str) -> Path:
    """outputs/<rid>/<name> when `name` is an image name, the folder lies inside the data
    directory and the file is no symbolic link; else a 404 Refused."""
    request_id(rid)
    if not isinstance(name, str) or not IMAGE_NAME.fullmatch(name):
        raise Refused(f"not an image name: {name[:60]!r}", 404)
    path = output_dir / name
    if path.is_symlink() or not inside(root, path):
        raise Refused(f"no image {name} in request {rid}", 404)
    return path


def read_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, opened without following a link and without blocking (a
    FIFO swapped in), checked on the open descriptor, at most `limit` bytes; else Refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Refused(f"no file {path.name}", 404) from None
    except OSError as e:
        raise Refused(f"{path.name} cannot be read ({e.strerror or e})", 404) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path.name} is not a regular file", 404)
        if st.st_size > limit:
            raise Refused(f"{path.name} is over {limit} bytes", 413)
        chunks, size = [], 0
        while size <= limit:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            chunks.append(block)
            size += len(block)
        if size > limit:
            raise Refused(f"{path.name} is over {limit} bytes", 413)
        return b"".join(chunks)
    except OSError as e:
        raise Refused(f"{path.name} cannot be read ({e.strerror or e})", 404) from None
    finally:
        os.close(fd)
