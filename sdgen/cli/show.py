"""`sdgen show IMAGE.png`: the parameters an image was made with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdgen.pngmeta import read_meta
from sdgen.textsafe import printable


def cmd_show(args: argparse.Namespace) -> int:
    meta = read_meta(Path(args.image))
    if args.json:
        print(json.dumps(meta, indent=1, sort_keys=True))  # ensure_ascii: controls come out escaped
        return 0
    # Everything in a PNG is whoever made it's text: no control reaches the terminal.
    for line in meta.pop("parameters").split("\n"):
        print(printable(line))
    for key in sorted(meta):
        print(f"{printable(key)}: {printable(meta[key])}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("show", help="print the parameters stored in an sdgen PNG")
    p.add_argument("image", metavar="IMAGE.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
