"""X/Y grids of a request's finished images (A1111's X/Y plot): one axis per column, one per
row, labelled; a third swept axis makes one grid per value. Also the tracker's contact
sheet of a sweep: a row per combination, labelled with its settings.

An axis is a swept field (a zipped group moves as one axis: `guidance=5, steps=25`), the
prompt or the image index. A grid shows one image per cell: the fields that are on no axis
stay at their first value (prompt 0, image 0, a fourth swept field's first value), so that
a row or column differs only in what its label says.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sdgen import defaults
from sdgen.batch.outputs import Finished
from sdgen.batch.sweep import axes as sweep_axes
from sdgen.batch.sweep import describe
from sdgen.exceptions import UserError
from sdgen.spool.request import Request
from sdgen.textsafe import printable

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
MISSING_FILL = (224, 224, 224)
MISSING_INK = (110, 110, 110)
MAX_LABEL_LINES = 3
# The label bands are at most this big, so cells scaled for `max_side` minus these always fit.
MAX_LEFT, MAX_TOP = 320, 160
MAX_PIXELS = 4096 * 4096  # far above any sdgen image; a bigger one is not decoded (a bomb)
PAD = 6


@dataclass(frozen=True)
class Axis:
    name: str  # how --x/--y name it: a swept field (its group's first), "prompt" or "image"
    fields: tuple[str, ...]  # the swept fields moving together on it; () for prompt, image
    labels: tuple[str, ...]  # one per position

    def __len__(self) -> int:
        return len(self.labels)


def request_axes(request: Request) -> list[Axis]:
    """Every axis a grid of `request` can use: the sweep's axes in its order, then prompt
    and image."""
    values = dict(request.sweep)
    out = []
    for group in sweep_axes(request.sweep, request.zip):
        rows = list(zip(*(values[f] for f in group)))
        out.append(Axis(group[0], group, tuple(describe(dict(zip(group, row))) for row in rows)))
    out.append(Axis("prompt", (), tuple(printable(p) for p in request.prompts)))
    out.append(Axis("image", (), tuple(f"image {i}" for i in range(request.images))))
    return out


def _positions(request: Request, axes: list[Axis], image: Finished) -> tuple[int, ...]:
    """The image's position on every axis (the order of `request_axes`)."""
    index = image.ticket.combination_index
    swept = [a for a in axes if a.fields]
    out = [0] * len(swept)
    for k in reversed(range(len(swept))):  # the last axis moves fastest (sweep.combination_at)
        index, out[k] = divmod(index, len(swept[k]))
    return (*out, image.spec.prompt_index, image.spec.image_index)


def choose_axes(request: Request, x: str | None, y: str | None) -> tuple[Axis, Axis, Axis | None]:
    """(x, y, z) for `sdgen grid --x X --y Y`; one-line UserErrors for what cannot be a grid.
    Defaults: x the first swept axis, y the second (else prompt when there are several, else
    image); z the next swept axis on neither, one grid per value."""
    axes = request_axes(request)
    by_name = {f: a for a in axes for f in (a.fields or (a.name,))}
    swept = [a for a in axes if a.fields]
    if not swept and x is None and y is None:
        raise UserError("the request has no sweep: name the axes, e.g. --x image --y prompt")

    def named(option: str, name: str) -> Axis:
        if name not in by_name:
            raise UserError(
                f"unknown field {printable(name)!r} for {option}: this request's grids take {', '.join(by_name)}"
            )
        return by_name[name]

    ax = named("--x", x) if x is not None else None
    ay = named("--y", y) if y is not None else None
    if ax is not None and ay is not None and ax == ay:
        raise UserError(f"--x {x} and --y {y} are one axis (zipped fields move together): name two axes")

    def first_free(taken: Axis | None) -> Axis:
        for a in swept:
            if a != taken:
                return a
        prompt, image = axes[-2], axes[-1]
        if len(prompt) > 1 and prompt != taken:
            return prompt
        return image if image != taken else prompt

    if ax is None:
        ax = first_free(ay)
    if ay is None:
        ay = first_free(ax)
    z = next((a for a in swept if a not in (ax, ay)), None)
    return ax, ay, z


@dataclass
class Grid:
    image: Image.Image
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    title: str
    left: int  # the row-label band's width
    top: int  # the column-label band's height
    cell: tuple[int, int]
    missing: int  # cells with no finished image


def request_grids(
    request: Request,
    images: list[Finished],
    x: str | None = None,
    y: str | None = None,
    max_side: int = defaults.GRID_MAX_SIDE,
) -> tuple[list[tuple[str | None, Grid]], str]:
    """The request's grids: [(the z value's label or None, grid)], and a line saying which
    fields stay at their first value."""
    if not images:
        raise UserError("the request has no finished images yet: see `sdgen status`")
    ax, ay, az = choose_axes(request, x, y)
    axes = request_axes(request)
    by_position = {}
    for image in images:
        by_position.setdefault(_positions(request, axes, image), image)
    fixed = [a for a in axes if a not in (ax, ay, az) and len(a) > 1]
    note = ", ".join(f"{a.name} at {a.labels[0]}" if a.fields else f"{a.name} 0" for a in fixed)
    size = max((im.ticket.width, im.ticket.height) for im in images)
    out = []
    for zi in range(len(az) if az else 1):
        rows = []
        for yi in range(len(ay)):
            row = []
            for xi in range(len(ax)):
                key = [0] * len(axes)
                key[axes.index(ax)], key[axes.index(ay)] = xi, yi
                if az is not None:
                    key[axes.index(az)] = zi
                found = by_position.get(tuple(key))
                row.append(found.path if found else None)
            rows.append(row)
        title = f"x: {ax.name}\ny: {ay.name}" + (f"\n{az.labels[zi]}" if az else "")
        grid = draw_grid(rows, ax.labels, ay.labels, title, size, max_side)
        out.append((az.labels[zi] if az else None, grid))
    return out, note


def sweep_sheet(request: Request, images: list[Finished], thumb: int = 128, columns: int = 16) -> Grid | None:
    """The contact sheet of a sweep: one row per combination, labelled with its settings,
    its images (prompt x image, at most `columns`) across; at most 256 thumbnails."""
    if not images:
        return None
    labels = tuple(describe(request.combination(c)) for c in range(request.combinations))
    pairs = [(p, i) for p in range(len(request.prompts)) for i in range(request.images)][:columns]
    rows_max = max(1, 256 // len(pairs))
    cells: dict[tuple[int, int, int], Path] = {}
    for image in images:
        cells.setdefault((image.ticket.combination_index, image.spec.prompt_index, image.spec.image_index), image.path)
    shown = labels[:rows_max]
    rows = [[cells.get((c, p, i)) for p, i in pairs] for c in range(len(shown))]
    x_labels = tuple(f"prompt {p}, image {i}" if len(request.prompts) > 1 else f"image {i}" for p, i in pairs)
    return draw_grid(rows, x_labels, shown, "combinations", (thumb, thumb), defaults.GRID_MAX_SIDE)


# -- drawing ----------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ayg")
    return int(bottom - top) + 4


def _wrap(text: str, font, width: int, lines_max: int) -> list[str]:
    """`text` in lines of at most `width` pixels (words, or characters of a long word), at
    most `lines_max` of them, the last cut with '...' when more would follow."""
    out: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            out.append(current)
        current = ""
        for ch in word:  # a word wider than the band: cut it where it must
            if font.getlength(current + ch) > width and current:
                out.append(current)
                current = ""
            current += ch
    if current:
        out.append(current)
    if len(out) > lines_max:
        last = out[lines_max - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        out = out[: lines_max - 1] + [last + "..."]
    return out or [""]


def _open_cell(path: Path, size: tuple[int, int]) -> Image.Image | None:
    # outputs/ can be written by others: a file that is not a sane image is drawn as missing
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img = img.convert("RGB")
            img.thumbnail(size)
            return img
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for damaged files
        log.warning("grid: skipped %s (%s)", printable(path.name), type(e).__name__)
        return None


def draw_grid(
    rows: list[list[Path | None]],
    x_labels: tuple[str, ...],
    y_labels: tuple[str, ...],
    title: str,
    cell: tuple[int, int],
    max_side: int = defaults.GRID_MAX_SIDE,
) -> Grid:
    """Cells of `cell` pixels (scaled down so the whole grid stays within `max_side` a
    side), a band of column labels on top, of row labels on the left, `title` in the
    corner; a cell with no image (None, or unreadable) is grey with 'missing'."""
    columns, count = len(x_labels), len(y_labels)
    scale = min(1.0, (max_side - MAX_LEFT) / (columns * cell[0]), (max_side - MAX_TOP) / (count * cell[1]))
    cw, ch = max(8, int(cell[0] * scale)), max(8, int(cell[1] * scale))
    font = _font(max(12, min(32, cw // 16)))
    lh = _line_height(font)
    left = max(160, min(MAX_LEFT, cw))
    x_text = [_wrap(label, font, cw - 2 * PAD, MAX_LABEL_LINES) for label in x_labels]
    title_lines = title.split("\n")
    lines = max(max(len(t) for t in x_text), min(len(title_lines), MAX_LABEL_LINES))
    top = min(MAX_TOP, 2 * PAD + lines * lh)
    sheet = Image.new("RGB", (left + columns * cw, top + count * ch), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(title_lines[:MAX_LABEL_LINES]):
        draw.text((PAD, PAD + k * lh), _wrap(line, font, left - 2 * PAD, 1)[0], fill=INK, font=font)
    for xi, text in enumerate(x_text):
        for k, line in enumerate(text):
            x = left + xi * cw + (cw - font.getlength(line)) / 2
            draw.text((x, PAD + k * lh), line, fill=INK, font=font)
    row_lines = max(1, min(6, (ch - 2 * PAD) // lh))
    for yi, label in enumerate(y_labels):
        text = _wrap(label, font, left - 2 * PAD, row_lines)
        y0 = top + yi * ch + (ch - len(text) * lh) / 2
        for k, line in enumerate(text):
            draw.text((PAD, y0 + k * lh), line, fill=INK, font=font)
    missing = 0
    for yi, row in enumerate(rows):
        for xi, path in enumerate(row):
            x, y = left + xi * cw, top + yi * ch
            img = _open_cell(path, (cw, ch)) if path is not None else None
            if img is None:
                missing += 1
                draw.rectangle((x + 1, y + 1, x + cw - 2, y + ch - 2), fill=MISSING_FILL)
                word = "missing"
                draw.text((x + (cw - font.getlength(word)) / 2, y + (ch - lh) / 2), word, fill=MISSING_INK, font=font)
                continue
            sheet.paste(img, (x + (cw - img.width) // 2, y + (ch - img.height) // 2))
    return Grid(sheet, tuple(x_labels), tuple(y_labels), title, left, top, (cw, ch), missing)


def value_slug(label: str) -> str:
    """A z value as a file-name part: `size=768x512` -> `768x512`, `guidance=5.0, steps=25`
    -> `5.0-25`."""
    values = [part.split("=", 1)[-1] for part in label.split(", ")]
    slug = re.sub(r"[^A-Za-z0-9._]+", "_", "-".join(values)).strip("._") or "value"
    return slug[:60]
