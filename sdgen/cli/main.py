"""`sdgen` entry point: argument parsing, logging set-up, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys

from sdgen import __version__
from sdgen.exceptions import SdgenError, UserError
from sdgen.textsafe import printable


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from sdgen.cli import admin, adsp, cache, run, show, status, submit, ui, weights

    parser = _Parser(prog="sdgen", description="Batch text-to-image generation from a file spool.")
    parser.add_argument("--version", action="version", version=f"sdgen {__version__}")
    parser.add_argument("--data", metavar="DIR",
                        help="data directory (default: $SDGEN_DATA, else ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    submit.register(sub)
    status.register(sub)
    admin.register(sub)
    run.register(sub)
    weights.register(sub)
    cache.register(sub)
    show.register(sub)
    ui.register(sub)
    adsp.register(sub)
    adsp.register_bootstrap(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = args.command in ("submit", "status", "list", "cancel", "retry", "weights", "show", "adsp")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # messages quote user input (paths, names): inert, and one line, before printing
        print(f"sdgen {args.command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except SdgenError as e:
        print(f"sdgen {args.command}: {printable(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a full disk: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"sdgen {args.command}: error: {printable(e.strerror or e)}{printable(where)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
