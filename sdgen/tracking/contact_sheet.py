"""One picture showing the thumbnails of a request's images, for a glance in the MLflow UI."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

MAX_THUMBS = 256


def contact_sheet(paths: list[Path], thumb: int = 128, columns: int = 16) -> Image.Image | None:
    paths = [p for p in paths if p.exists()][:MAX_THUMBS]
    if not paths:
        return None
    columns = min(columns, len(paths))
    rows = math.ceil(len(paths) / columns)
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), (24, 24, 24))
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((thumb, thumb))
            x, y = (i % columns) * thumb, (i // columns) * thumb
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
    return sheet
