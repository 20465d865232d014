"""One picture showing the thumbnails of a request's images, for a glance in the MLflow UI."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from PIL import Image

from sdgen.textsafe import printable

log = logging.getLogger(__name__)

MAX_THUMBS = 256
MAX_PIXELS = 4096 * 4096  # far above any sdgen image; a bigger one is not decoded (a bomb)


def contact_sheet(paths: list[Path], thumb: int = 128, columns: int = 16) -> Image.Image | None:
    paths = [p for p in paths if p.exists()][:MAX_THUMBS]
    if not paths:
        return None
    columns = min(columns, len(paths))
    rows = math.ceil(len(paths) / columns)
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), (24, 24, 24))
    for i, path in enumerate(paths):
        # outputs/ can be written by others: a file that is not a sane image leaves its
        # cell empty instead of failing the request's logging
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    continue
                img = img.convert("RGB")
                img.thumbnail((thumb, thumb))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for damaged files
            log.warning("contact sheet: skipped %s (%s)", printable(path.name), type(e).__name__)
            continue
        x, y = (i % columns) * thumb, (i // columns) * thumb
        sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
    return sheet
