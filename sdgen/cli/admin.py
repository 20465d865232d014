"""`sdgen cancel`, `retry`, `pause` and `resume`."""

from __future__ import annotations

import argparse
import time

from sdgen.config import data_root
from sdgen.exceptions import UserError
from sdgen.spool.layout import REQUEST_ID, ticket_name
from sdgen.spool.progress import request_state
from sdgen.spool.states import REQUEST_TERMINAL, TicketState
from sdgen.spool.store import Spool
from sdgen.spool.ticket import after_retry


def _known(spool: Spool, request_id: str) -> str:
    """'accepted', 'inbox' or raise: where this id is."""
    if not REQUEST_ID.match(request_id):
        raise UserError(f"{request_id!r} is not a request id (like 20261126-065149-a1b2c3): see `sdgen list`")
    if spool.layout.request_file(request_id).exists():
        return "accepted"
    for folder in (spool.layout.inbox, spool.layout.incoming):
        if any((folder / f"{request_id}{ext}").exists() for ext in (".yaml", ".yml")):
            return "inbox"
    raise UserError(f"unknown request id {request_id!r}: `sdgen list` shows the known ones")


def _by_name(spool: Spool, text: str) -> str:
    """A request's id from its name or a unique id prefix (as `sdgen status` takes them);
    an id, or text that names nothing, is returned as given for `_known` to judge."""
    if REQUEST_ID.match(text):
        return text
    from sdgen.cli.status import collect, find

    rows = [r for r in collect(spool) if REQUEST_ID.match(r["id"])]
    if not any(r.get("name") == text or r["id"].startswith(text) for r in rows if text):
        return text
    return find(rows, text)["id"]  # several matches: one line listing them


def cmd_cancel(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    print(cancel_request(spool, _by_name(spool, args.request_id)))
    return 0


def cancel_request(spool: Spool, request_id: str) -> str:
    """Cancel a request (`sdgen cancel`, a second Ctrl-C in `sdgen run`); what happened, in
    one line. Raises UserError for an id that is not known."""
    where = _known(spool, request_id)
    if where == "accepted":
        # From the tickets, not state.json: the daemon records a request's state a tick after
        # its last ticket moved, and a cancel in between must not turn a done request into a
        # cancelled one.
        meta = spool.read_state(request_id) or {}
        counts = spool.ticket_counts().get(request_id, {})
        total = meta.get("tickets_total") or sum(len(v) for v in counts.values())
        state = request_state(counts, total, spool.is_cancelled(request_id))
        if state in REQUEST_TERMINAL:
            return f"request {request_id} is already {state}; nothing to cancel"
    # Not accepted yet (in the inbox): the marker waits in the request folder and the
    # daemon cancels every ticket the moment it accepts the request.
    spool.cancel(request_id, time.time(), before_acceptance=where == "inbox")
    return f"cancelled {request_id}: pending tickets will not run, running ones stop at the next image"


def cmd_retry(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    args.request_id = _by_name(spool, args.request_id)
    if _known(spool, args.request_id) != "accepted":
        raise UserError(f"request {args.request_id} has not been accepted yet: nothing to retry")
    if spool.is_cancelled(args.request_id):
        raise UserError(
            f"request {args.request_id} was cancelled: `sdgen resubmit {args.request_id}` "
            "queues it again as a new request"
        )
    meta = spool.read_state(args.request_id) or {}
    counts = spool.ticket_counts().get(args.request_id, {})
    moved = 0
    now = time.time()
    for state in (TicketState.FAILED, TicketState.HELD, TicketState.DEFERRED):
        for index in counts.get(state, []):
            name = ticket_name(spool.priority_of(args.request_id, meta.get("priority", 0)), index, args.request_id)
            try:
                ticket = spool.read_ticket(state, name)
            except FileNotFoundError:
                continue
            if spool.retry(name, state, after_retry(ticket, now)):
                moved += 1
    print(
        f"{moved} ticket(s) of {args.request_id} queued again"
        if moved
        else f"request {args.request_id} has no failed or held tickets"
    )
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    how = "running tickets finish their ticket" if args.after_ticket else "running tickets stop at the next image"
    if args.all:
        if args.request_ids:
            raise UserError("give request ids or --all, not both")
        spool.pause(None, time.time(), after_ticket=args.after_ticket)
        print(f"paused the whole queue: nothing is claimed until `sdgen resume --all`; {how}")
        return 0
    if not args.request_ids:
        raise UserError("name the requests to pause (ids, prefixes or names), or --all for the whole queue")
    for text in args.request_ids:
        request_id = _by_name(spool, text)
        if _known(spool, request_id) == "inbox":
            raise UserError(f"request {request_id} is not accepted yet: pause it once `sdgen status` lists it")
        state = _derived_state(spool, request_id)
        if state in REQUEST_TERMINAL:
            print(f"request {request_id} is already {state}; nothing to pause")
            continue
        spool.pause(request_id, time.time(), after_ticket=args.after_ticket)
        print(f"paused {request_id}: its pending tickets wait, {how}; `sdgen resume {request_id}` goes on")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    if args.all:
        if args.request_ids:
            raise UserError("give request ids or --all, not both")
        was = spool.resume(None)
        print("resumed the whole queue" if was else "nothing was paused")
        return 0
    if not args.request_ids:
        raise UserError("name the requests to resume (ids, prefixes or names), or --all")
    for text in args.request_ids:
        request_id = _by_name(spool, text)
        _known(spool, request_id)
        was = spool.resume(request_id)
        if spool.layout.pause_all_marker.exists():
            print(f"resumed {request_id}, but the whole queue is paused: `sdgen resume --all`")
        else:
            print(f"resumed {request_id}" if was else f"request {request_id} was not paused")
    return 0


def cmd_priority(args: argparse.Namespace) -> int:
    spool = Spool(data_root(args.data)).ensure()
    if not -1000 <= args.priority <= 1000:
        raise UserError(f"priority must be between -1000 and 1000, got {args.priority}")
    request_id = _by_name(spool, args.request_id)
    if _known(spool, request_id) == "inbox":
        raise UserError(f"request {request_id} is not accepted yet: set its priority once `sdgen status` lists it")
    meta = spool.read_state(request_id) or {}
    before = spool.priority_of(request_id, meta.get("priority", 0))
    state = _derived_state(spool, request_id)
    moved = spool.set_priority(request_id, args.priority, time.time())
    ended = f" (it is {state}: the priority counts if it is retried)" if state in REQUEST_TERMINAL else ""
    print(f"request {request_id}: priority {before} -> {args.priority}; {moved} waiting ticket(s) reordered{ended}")
    return 0


def _derived_state(spool: Spool, request_id: str) -> str:
    meta = spool.read_state(request_id) or {}
    counts = spool.ticket_counts().get(request_id, {})
    total = meta.get("tickets_total") or sum(len(v) for v in counts.values())
    return request_state(counts, total, spool.is_cancelled(request_id))


def register(sub) -> None:
    p = sub.add_parser("cancel", help="cancel a request")
    p.add_argument("request_id", metavar="REQUEST", help="id, unique id prefix or unique name")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("retry", help="queue a request's failed and held tickets again")
    p.add_argument("request_id", metavar="REQUEST", help="id, unique id prefix or unique name")
    p.set_defaults(func=cmd_retry)
    p = sub.add_parser("pause", help="stop claiming a request's tickets (or the whole queue's) until resumed")
    p.add_argument("request_ids", nargs="*", metavar="REQUEST", help="ids, unique id prefixes or unique names")
    p.add_argument("--all", action="store_true", help="pause the whole queue (new requests too)")
    p.add_argument(
        "--after-ticket",
        action="store_true",
        help="let running tickets finish their ticket (default: handed back at the next image)",
    )
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("priority", help="change the claim order of a request's waiting tickets")
    p.add_argument("request_id", metavar="REQUEST", help="id, unique id prefix or unique name")
    p.add_argument("priority", type=int, metavar="N", help="-1000..1000; higher runs first")
    p.set_defaults(func=cmd_priority)
    p = sub.add_parser("resume", help="go on with paused requests (or the whole queue)")
    p.add_argument("request_ids", nargs="*", metavar="REQUEST", help="ids, unique id prefixes or unique names")
    p.add_argument("--all", action="store_true", help="resume the whole queue and every paused request")
    p.set_defaults(func=cmd_resume)
