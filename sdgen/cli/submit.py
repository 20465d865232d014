"""`sdgen submit`: validate a request (options or a YAML file) and publish it to the inbox."""

from __future__ import annotations

import argparse
import dataclasses
import re
import socket
import sys
import time
from pathlib import Path

from sdgen.batch.plan import plan_lines
from sdgen.batch.templates import check_request, expand_prompts, wildcards_dir
from sdgen.config import data_root
from sdgen.exceptions import RequestError, UserError
from sdgen.pngmeta import read_meta
from sdgen.spool.claim import pid_alive
from sdgen.spool.intake import read_request_file
from sdgen.spool.records import CorruptRecord, load_json_object
from sdgen.spool.request import ENGINES, MODELS, WEIGHTS, Request, request_digest, validate
from sdgen.spool.store import Spool, new_request_id

# option dest -> request key; several spellings (the original example's included) per key
OPTIONS = [
    (("--prompt",), "prompt", dict(action="append", metavar="TEXT", help="the prompt (repeat for several prompts)")),
    (("--negative-prompt",), "negative_prompt", dict(metavar="TEXT")),
    (("--images", "--total-batch-size"), "images", dict(type=int, metavar="N", help="images per prompt (default 9)")),
    (
        ("--batch-size", "--per-worker-batch-size"),
        "batch_size",
        dict(type=int, metavar="B", help="images per ticket (default 1)"),
    ),
    (("--steps", "--num-steps"), "steps", dict(type=int, metavar="S", help="diffusion steps (default 50)")),
    (("--width", "--image-width"), "width", dict(type=int, metavar="W", help="multiple of 128 (default 512)")),
    (("--height", "--image-height"), "height", dict(type=int, metavar="H", help="multiple of 128 (default 512)")),
    (("--guidance",), "guidance", dict(type=float, metavar="G", help="guidance scale (default 7.5)")),
    (("--seed",), "seed", dict(type=int, metavar="S", help="base seed: image i uses seed+i")),
    (("--model",), "model", dict(choices=MODELS)),
    (("--engine",), "engine", dict(choices=ENGINES)),
    (("--weights",), "weights", dict(choices=WEIGHTS)),
    (("--priority",), "priority", dict(type=int, metavar="P", help="higher runs first (default 0)")),
    (("--name", "--run-name"), "name", dict(metavar="NAME", help="a label for the request")),
    (("--experiment",), "experiment", dict(metavar="NAME", help="MLflow experiment")),
    (
        ("--id",),
        "id",
        dict(metavar="ID", help="your own id for it: the same id and content again queues nothing and prints its id"),
    ),
]


def add_request_options(p: argparse.ArgumentParser, with_file: bool = True) -> None:
    if with_file:
        p.add_argument("file", nargs="?", metavar="FILE.yaml", help="a request file instead of options")
        p.add_argument(
            "--from",
            dest="from_png",
            metavar="IMAGE.png",
            help="make that sdgen image again (options given too override its values)",
        )
    for flags, key, kw in OPTIONS:
        p.add_argument(*flags, dest=key, **kw)
    p.add_argument(
        "--plan",
        action="store_true",
        help="print what the request makes (prompts, combinations, images, tickets, GPU time) and queue nothing",
    )


def _as_option(message: str) -> str:
    """Name fields the way the user typed them: `batch_size ...` -> `--batch-size ...`."""

    def fix(part: str) -> str:
        return re.sub(
            r"^(\w+)",
            lambda m: "--" + m.group(1).replace("_", "-") if m.group(1) in {k for _, k, _ in OPTIONS} else m.group(1),
            part,
        )

    return "; ".join(fix(p) for p in message.split("; "))


def request_from_args(args: argparse.Namespace) -> Request:
    given = {key: getattr(args, key) for _, key, _ in OPTIONS if getattr(args, key, None) is not None}
    if getattr(args, "file", None):
        path = Path(args.file)
        if not path.exists():
            raise RequestError(f"{args.file} does not exist")
        # the file's own mistakes name it; its templates are checked against this data
        # directory's wildcards
        wildcards = wildcards_dir(data_root(getattr(args, "data", None)))
        request = read_request_file(path, check_name=False, wildcards=wildcards)
        if not given:
            return request
        # options override the file's values (`sdgen submit foxes.yaml --steps 3`); the
        # merged mapping is validated as a whole
        merged = {k: v for k, v in request.to_dict().items() if v is not None}
        if given.get("prompt"):
            for key in ("prompt", "prompts", "templates", "expansions"):
                merged.pop(key, None)
        given = {**merged, **given}
        if isinstance(given.get("prompt"), str):
            given["prompt"] = [given["prompt"]]
        elif "prompts" in given:
            given["prompt"] = list(given.pop("prompts"))
    if getattr(args, "from_png", None):
        meta = read_meta(Path(args.from_png))
        keys = ("negative_prompt", "steps", "guidance", "width", "height", "model", "weights", "engine", "seed")
        # The image's own settings (its combination's, in a sweep) and its expanded prompt,
        # recorded as expanded from its template: the prompt is never expanded again.
        record = {}
        if meta.get("template") and not given.get("prompt"):
            record = {"templates": [meta["template"]], "expansions": [1]}
        given = {
            "images": 1,
            **{k: meta[k] for k in keys},
            "prompt": given.get("prompt") or [meta["prompt"]],
            **record,
            **{k: v for k, v in given.items() if k != "prompt"},
        }
    prompts = given.pop("prompt", None)
    if prompts:
        given["prompt" if len(prompts) == 1 else "prompts"] = prompts[0] if len(prompts) == 1 else prompts
    try:
        request = validate(given)
    except RequestError as e:
        if "missing prompt" in str(e):
            raise RequestError("missing --prompt TEXT (or a request FILE.yaml)") from None
        raise RequestError(_as_option(str(e))) from None
    check_request(request, wildcards_dir(data_root(getattr(args, "data", None))))
    return request


def print_plan(args: argparse.Namespace, request: Request, seed_drawn: bool) -> int:
    """`--plan`: the expansion the daemon would make, and its counts; nothing queued."""
    expanded = expand_prompts(request, wildcards_dir(data_root(getattr(args, "data", None))))
    for line in plan_lines(expanded, seed_drawn):
        print(line)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    seed_drawn = request.seed is None
    if args.plan:
        return print_plan(args, request.with_seed(), seed_drawn)
    spool = Spool(data_root(args.data)).ensure()
    request_id, queued = queue(spool, request)
    print(request_id)
    if not queued:
        print(f"sdgen submit: id {request.id!r} was submitted before, same content: nothing queued", file=sys.stderr)
        return 0
    if not _daemon_seems_running(spool):
        # queued all the same (a daemon started later takes it), but a mistyped --data or a
        # forgotten daemon should not leave a request waiting in silence
        print(
            f"sdgen submit: note: no daemon runs on {spool.layout.root}: start "
            f"`sdgen daemon --data {spool.layout.root}` to process it",
            file=sys.stderr,
        )
    return 0


def queue(spool: Spool, request, seeded=None) -> tuple[str, bool]:
    """Submit `request` (seed not drawn yet; `seeded`: the same with the seed to use);
    (its request id, whether it was queued now).
    With an `id`, idempotent (docs/spool.md, "Idempotent submit"): the id is recorded first
    (with link: of two submitters one wins), then the file goes to the inbox under the
    recorded request id (with link: at most once); the same id and content again queues
    nothing and gives the first request's id; other content is refused."""
    if not request.id:
        return spool.submit((seeded or request.with_seed()), time.time()), True
    digest = request_digest(request)  # before the seed is drawn: "the same content" as given
    entry = spool.lookup_client_id(request.id)
    if entry is None:
        request_id = new_request_id()
        entry = spool.record_client_id(request.id, request_id, digest)
        if entry is None:
            return spool.submit((seeded or request.with_seed()), time.time(), request_id=request_id), True
    if entry["digest"] != digest:
        raise UserError(
            f"id {request.id!r} is request {entry['request_id']}, submitted with other content: "
            "give this request another id (or submit the same content to get that request's id)"
        )
    if not spool.request_exists(entry["request_id"]):
        # recorded by a submit that stopped before its file reached the inbox: finish it
        spool.submit((seeded or request.with_seed()), time.time(), request_id=entry["request_id"])
        return entry["request_id"], True
    return entry["request_id"], False


def _daemon_seems_running(spool: Spool) -> bool:
    """From spool/daemon.json (who took the daemon lock last), without touching the lock: a
    daemon starting this very moment must not find it held. Another host's daemon is taken
    to be running (its pid cannot be checked from here)."""
    try:
        info = load_json_object(spool.layout.daemon_info)
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, CorruptRecord, ValueError, KeyError, TypeError):  # none yet, or damaged: say so
        return False
    return host != socket.gethostname() or pid_alive(pid)


def cmd_resubmit(args: argparse.Namespace) -> int:
    """The accepted request.yaml of an earlier request (cancelled, failed, done) queued
    again as a new request: same seed, so the same images, unless --new-seed."""
    from sdgen.cli.status import _existing_spool, resolve

    spool = _existing_spool(args)
    old_id = resolve(spool, args.request_id)
    try:
        request = spool.read_request(old_id)
    except (CorruptRecord, FileNotFoundError) as e:
        raise RequestError(f"cannot read the request {old_id} ({e}): submit it again with options") from None
    if args.new_seed:
        request = dataclasses.replace(request, seed=None)
    # a new request: the old one's own id (idempotent submit) stays with the old one
    request = dataclasses.replace(request, id="").with_seed()
    request_id = spool.submit(request, time.time())
    print(request_id)
    print(f"sdgen resubmit: {request_id} is {old_id} again (seed {request.seed})", file=sys.stderr)
    if not _daemon_seems_running(spool):
        print(
            f"sdgen resubmit: note: no daemon runs on {spool.layout.root}: start "
            f"`sdgen daemon --data {spool.layout.root}` to process it",
            file=sys.stderr,
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("submit", help="queue a request", description=__doc__)
    add_request_options(p)
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser(
        "resubmit",
        help="queue an earlier request again as a new one (prints its id)",
        description="Submit the accepted request.yaml of REQUEST (a cancelled, failed "
        "or done one) again as a new request, with the same seed (so the same "
        "images) unless --new-seed.",
    )
    p.add_argument("request_id", metavar="REQUEST", help="id, unique id prefix or unique name")
    p.add_argument("--new-seed", action="store_true", help="draw a new base seed (other images)")
    p.set_defaults(func=cmd_resubmit)
