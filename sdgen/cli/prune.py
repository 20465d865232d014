"""`sdgen prune --older-than AGE [--outputs] [--dry-run]`: forget requests that ended long
ago (sdgen/daemon/retention.py decides which; `Spool.remove_request` removes)."""

from __future__ import annotations

import argparse
import time

from sdgen.cli.cache import _size, older_than
from sdgen.cli.status import _existing_spool
from sdgen.daemon.retention import prune
from sdgen.textsafe import printable


def cmd_prune(args: argparse.Namespace) -> int:
    spool = _existing_spool(args)
    now = time.time()
    pruned = prune(spool, now, args.older_than, outputs=args.outputs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    what = "records and outputs" if args.outputs else "records"
    for p in pruned:
        ended = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.finished_at))
        print(f"{verb} {printable(p.request_id)} ({p.state} {ended}, {_size(p.bytes)})")
    if not pruned:
        print("nothing to remove: no request ended that long ago")
        return 0
    freed = sum(p.bytes for p in pruned)
    print(
        f"{verb} the {what} of {len(pruned)} request(s); "
        f"{'would free' if args.dry_run else 'freed'} {_size(freed)} ({freed} bytes)"
        + ("" if args.outputs else "; images kept (--outputs removes them too)")
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="remove the spool records of requests that ended long ago",
        description="Remove the spool records (state, tickets, ledger, events) of requests that "
        "ended (done, failed, cancelled) more than AGE ago; their images too with --outputs. "
        "MLflow runs stay. A request with tickets still to run is never touched.",
    )
    p.add_argument(
        "--older-than",
        type=older_than,
        required=True,
        metavar="AGE",
        help="ended at least this long ago: a number and a unit, s, m, h, d or w (30d, 12h, 90m, 3600s)",
    )
    p.add_argument("--outputs", action="store_true", help="also remove their images (outputs/<id>/)")
    p.add_argument("--dry-run", action="store_true", help="say what would go and how much, remove nothing")
    p.set_defaults(func=cmd_prune)
