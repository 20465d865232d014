"""Gallery thumbnails: made once per image, on first view, and kept under
<data>/cache/thumbnails/<size>/<request id>/<image>.jpg (a file per image, written whole then
renamed into place). A data directory that cannot be written (read-only mount) still gets
thumbnails, made at each view."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image

from sdgen import defaults
from sdgen.pngmeta import MAX_PNG_BYTES
from sdgen.web.guard import Refused, image_path, inside, read_file

log = logging.getLogger(__name__)

# Pixels of a source image the server decodes at most (far above any sdgen image): a planted
# huge PNG is refused, not decoded (a decompression bomb).
MAX_SOURCE_PIXELS = 4096 * 4096


def thumbnail_file(root: Path, rid: str, name: str, size: int) -> Path:
    return root / "cache" / "thumbnails" / str(size) / rid / (name[: -len(".png")] + ".jpg")


def make_thumbnail(data: bytes, size: int, quality: int | None = None) -> bytes:
    """A JPEG of at most `size` pixels a side from PNG bytes; Refused for what cannot be one."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise Refused("not a PNG image", 415)
            w, h = image.size
            if w * h > MAX_SOURCE_PIXELS:
                raise Refused(f"image of {w}x{h} pixels is too large to preview", 413)
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.convert("RGB").save(
                out, format="JPEG", quality=quality or defaults.WEB_THUMBNAIL_QUALITY, optimize=True
            )
            return out.getvalue()
    except Refused:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise Refused(f"the image cannot be read ({type(e).__name__})", 415) from None


def thumbnail(root: Path, output_dir: Path, rid: str, name: str, size: int | None = None) -> bytes:
    """The cached thumbnail of outputs/<rid>/<name>, made now if missing."""
    size = size or defaults.WEB_THUMBNAIL_SIZE
    source = image_path(root, output_dir, rid, name)
    target = thumbnail_file(root, rid, name, size)
    cache_ok = inside(root, target.parent) if target.parent.exists() else inside(root, root / "cache")
    if cache_ok:
        try:
            return read_file(target, MAX_PNG_BYTES)
        except Refused:
            pass  # not made yet (or damaged: made again)
    data = make_thumbnail(read_file(source, MAX_PNG_BYTES), size)
    if cache_ok:
        store_file(root, target, data)
    return data


def store_file(root: Path, target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not inside(root, target.parent):  # a link planted in the cache path
            return
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(part, target)
    except OSError as e:  # read-only or full: serve it unkept
        log.debug("cannot keep thumbnail %s: %s", target, e)
