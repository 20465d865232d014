"""`sdgen grid REQUEST_ID [--x FIELD] [--y FIELD] [--out FILE]`: an X/Y grid PNG of a
request's finished images (sdgen/batch/grid.py)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from sdgen.batch.grid import request_grids, value_slug
from sdgen.batch.outputs import accepted_request, finished_images
from sdgen.cli.admin import _by_name
from sdgen.config import data_root
from sdgen.exceptions import UserError
from sdgen.fsutil import atomic_write
from sdgen.spool.store import Spool
from sdgen.textsafe import printable


def cmd_grid(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    request_id = _by_name(spool, args.request_id)
    request = accepted_request(spool, request_id)
    images = finished_images(spool, request_id, request)
    if not images:
        raise UserError(f"request {request_id} has no finished images yet: see `sdgen status {request_id}`")
    grids, fixed = request_grids(request, images, args.x, args.y)
    # Not in outputs/<id>/ by default: a PNG there without a metadata.jsonl line would stop
    # `datasets` loading the folder as an imagefolder.
    out = Path(args.out) if args.out else Path(f"grid-{request_id}.png")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name, e.g. {out / 'grid.png'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    stem = out.name[: -len(out.suffix)] if out.suffix.lower() == ".png" else out.name
    for value, grid in grids:
        path = out if value is None else out.with_name(f"{stem}-{value_slug(value)}.png")
        atomic_write(path.parent, path, _png(grid.image))
        w, h = grid.image.size
        cells = f"{len(grid.x_labels)} x {len(grid.y_labels)}"
        what = f"{grid.title.splitlines()[0]}, {grid.title.splitlines()[1]}" + (f", {value}" if value else "")
        gaps = f", {grid.missing} missing" if grid.missing else ""
        print(printable(f"{path}: {cells} cells ({what}), {w}x{h} px{gaps}"))
    if fixed:
        print(printable(f"the other fields stay at their first value: {fixed}"))
    return 0


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def register(sub) -> None:
    p = sub.add_parser("grid", help="write an X/Y grid PNG of a request's images, with labels")
    p.add_argument("request_id", metavar="REQUEST_ID", help="a request id or name (as sdgen status takes)")
    p.add_argument(
        "--x", metavar="FIELD", help="the columns: a swept field, prompt or image (default: the first swept field)"
    )
    p.add_argument(
        "--y",
        metavar="FIELD",
        help="the rows (default: the second swept field, else prompt when there are several, else image)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the PNG (default: grid-<request id>.png here); a third swept field writes FILE-<value>.png per value",
    )
    p.set_defaults(func=cmd_grid)
