"""`sdgen show IMAGE.png`: the parameters an image was made with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdgen.batch.sweep import describe
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
    # a batch program's image: where its prompt and settings came from (issue 18)
    template = meta.pop("template", None)
    if template is not None:
        print(f"template: {printable(template)}")
        print(f"expansion: {printable(meta['prompt'])}")
    combination = meta.pop("combination", None)
    if combination:
        index = meta.pop("combination_index", None)
        where = f" (combination {index} of the sweep)" if index is not None else ""
        print(f"combination: {printable(describe(combination))}{where}")
    for key in sorted(meta):
        print(f"{printable(key)}: {printable(meta[key])}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("show", help="print the parameters stored in an sdgen PNG")
    p.add_argument("image", metavar="IMAGE.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
