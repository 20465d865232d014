"""`sdgen weights status|fetch`: the shared weight cache, file by file."""

from __future__ import annotations

import argparse
import sys

from sdgen.config import data_root
from sdgen.engine.weights import FILES, WeightCache, cache_dir, data_cache_dir
from sdgen.exceptions import EngineError, UserError


def _models(args) -> list[str]:
    return [args.model] if args.model else list(FILES)


def cmd_status(args: argparse.Namespace) -> int:
    cache = WeightCache(cache_dir(data_root(args.data)))
    print(f"weight cache: {cache.dir}")
    worst = 0
    for model in _models(args):
        for wf in FILES[model]:
            state = cache.status(wf, verify=not args.quick)
            size = f"{wf.size / 1e6:,.0f} MB" if wf.size else "size unknown"
            print(f"{model:6} {wf.name:30} {state:10} ({size})")
            worst = max(worst, 0 if state == "present" else 1)
    if worst:  # exit 1 stays (scripts and the Makefile test it); say what to do next
        print(
            "some weight files are not there: `sdgen weights fetch` downloads them (about 4 GB), or "
            "copy them into the folder above; without them, `--weights random` or `--engine dry-run` work",
            file=sys.stderr,
        )
    return worst


def cmd_fetch(args: argparse.Namespace) -> int:
    root = data_root(args.data)
    # --into data: jobs on hosts whose home is not this one's (ADSP, some clusters) find
    # the weights in the shared data directory, which is then used before the user cache
    cache = WeightCache(data_cache_dir(root) if args.into == "data" else cache_dir(root))
    for model in _models(args):
        try:
            cache.fetch(model, report=print)
        except OSError as e:
            raise UserError(
                f"could not download {model} weights ({e}): this machine needs internet "
                f"access, or copy the files into {cache.dir}"
            ) from None
        except EngineError as e:
            raise UserError(str(e)) from None
    return 0


def register(sub) -> None:
    p = sub.add_parser("weights", help="check or download model weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    s = wsub.add_parser("status", help="present / missing / corrupt, per file")
    s.add_argument("--model", choices=list(FILES))
    s.add_argument("--quick", action="store_true", help="do not hash files not yet verified")
    s.set_defaults(func=cmd_status)
    f = wsub.add_parser("fetch", help="download missing weights into the cache")
    f.add_argument("--model", choices=list(FILES))
    f.add_argument(
        "--into",
        choices=["default", "data"],
        default="default",
        help="default: $KERAS_HOME, else the data directory's cache if it has weights, "
        "else the per-user cache shared by every data directory; data: "
        "DATA/cache/keras/datasets, for jobs whose home is not shared (ADSP)",
    )
    f.set_defaults(func=cmd_fetch)
