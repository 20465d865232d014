"""`sdgen show IMAGE.png`: the parameters an image was made with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdgen.worker.pngmeta import read_meta


def cmd_show(args: argparse.Namespace) -> int:
    meta = read_meta(Path(args.image))
    if args.json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return 0
    print(meta.pop("parameters"))
    for key in sorted(meta):
        print(f"{key}: {meta[key]}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("show", help="print the parameters stored in an sdgen PNG")
    p.add_argument("image", metavar="IMAGE.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
