"""`sdgen export REQUEST_ID... --to DIR [--format imagefolder|webdataset]`: one dataset from
the finished images of several requests (sdgen/batch/dataset.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdgen import defaults
from sdgen.batch.dataset import FORMATS, export
from sdgen.cli.admin import _by_name
from sdgen.config import data_root
from sdgen.exceptions import UserError
from sdgen.spool.store import Spool
from sdgen.textsafe import printable


def _size(text: str) -> int:
    """'1G', '500M', '64k' or bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    try:
        if text[-1:].lower() in units:
            value = int(float(text[:-1]) * units[text[-1].lower()])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 1G, 500M or 1000000)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("a shard size is at least 1 byte")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    ids = [_by_name(spool, r) for r in args.request_ids]
    to = Path(args.to)
    if to.resolve().is_relative_to(spool.layout.root.resolve()):
        raise UserError(f"--to {to} is inside the data directory: export to a folder outside it")
    s = export(spool, ids, to, args.format, args.shard_size)
    how = f"{s.linked} hard-linked, {s.copied} copied" if args.format == "imagefolder" else f"{s.shards} shards"
    print(printable(f"{to}: {s.images} images from {s.requests} requests ({how}), {s.bytes:,} bytes"))
    for name in s.files:
        print(printable(f"  {to / name}"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="make one dataset (imagefolder or webdataset) from several requests")
    p.add_argument("request_ids", nargs="+", metavar="REQUEST_ID", help="request ids or names")
    p.add_argument("--to", required=True, metavar="DIR", help="a new or empty folder")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="imagefolder",
        help="imagefolder: <request id>/<file> + metadata.jsonl; webdataset: tar shards of <key>.png + <key>.json",
    )
    p.add_argument(
        "--shard-size",
        type=_size,
        default=defaults.EXPORT_SHARD_BYTES,
        metavar="BYTES",
        help="webdataset: a shard is cut before this size (1G, 500M, ...; default 1G)",
    )
    p.set_defaults(func=cmd_export)
