"""`sdgen status` and `sdgen list`: what every request is doing, read from the spool itself
(so it is true even while no daemon runs)."""

from __future__ import annotations

import argparse
import json
import os
import time

from sdgen import defaults
from sdgen.config import data_root
from sdgen.exceptions import RequestError, UserError
from sdgen.spool.intake import file_owner, is_candidate, is_stray, read_request_file
from sdgen.spool.layout import REQUEST_ID, ticket_name
from sdgen.spool.progress import summarize
from sdgen.spool.records import CorruptRecord, load_json_object, one_line, read_bytes
from sdgen.spool.states import RequestState, TicketState
from sdgen.spool.store import Spool
from sdgen.textsafe import printable


def collect(spool: Spool) -> list[dict]:
    """One summary per request: accepted ones, ones still in the inbox, rejected files."""
    layout = spool.layout
    counts = spool.ticket_counts()
    backlog: dict[str, int] = {}
    for name in spool.event_names():
        rid = name.split("-", 1)[1][:22]
        backlog[rid] = backlog.get(rid, 0) + 1
    tracking = _tracking_status(spool)
    blocked = (_read_json(layout.launcher_status) or {}).get("blocked")
    stuck = (_read_json(layout.intake_status) or {}).get("stuck") or {}
    if not isinstance(stuck, dict):
        stuck = {}
    rows = []
    for request_id in spool.request_ids():
        try:
            meta = spool.read_state(request_id)
        except CorruptRecord as e:
            rows.append(
                _problem_row(
                    request_id,
                    RequestState.CORRUPT,
                    f"{e}: the daemon moves it to spool/corrupt/ and rebuilds it from request.yaml",
                )
            )
            continue
        if meta is None:
            continue  # being accepted right now
        row = summarize(meta, counts.get(request_id, {}), spool.is_cancelled(request_id), spool.is_paused(request_id))
        row["priority"] = spool.priority_of(request_id, row["priority"])  # `sdgen priority`, daemon or not
        row["output_dir"] = str(layout.output_dir(request_id))
        if row["state"] == RequestState.FAILED:
            row["reason"] = meta.get("reason", "tickets failed or held")
        row["tracking_backlog"] = backlog.get(request_id, 0)
        failure = _request_tracking_failure(tracking, request_id)
        if tracking and not tracking.get("ok") and row["tracking_backlog"]:
            row["tracking_error"] = f"MLflow unreachable since {_when(tracking['down_since'])}: {tracking['error']}"
            row["tracking_outage"] = True
        elif failure:
            # this request's logging fails on its own (the others go on): say why
            row["tracking_error"] = (
                f"MLflow logging failed since {_when(failure.get('since'))} "
                f"({failure.get('attempts', 1)} tries, retrying): {failure.get('error', '?')}"
            )
        if blocked and row["state"] in (RequestState.PENDING, RequestState.RUNNING):
            row["launcher_error"] = blocked
        rows.append(row)
    accepted = {row["id"] for row in rows}
    for folder in (layout.inbox, layout.incoming):
        for entry in sorted(os.listdir(folder)) if folder.exists() else []:
            if not is_candidate(entry):
                continue
            stem = entry.rsplit(".", 1)[0]
            if folder == layout.incoming and stem in accepted:
                continue  # accepted, its tickets still being written: its row is above
            row = {
                "id": stem if REQUEST_ID.match(stem) else f"inbox/{entry}",
                "name": "",
                "user": file_owner(folder / entry),  # who the daemon will record
                "state": RequestState.PENDING,
                "priority": 0,
                "images_total": 0,
                "images_done": 0,
                "tickets_total": 0,
            }
            try:
                request = read_request_file(folder / entry, check_name=folder == layout.inbox)
                row.update(name=request.name, priority=request.priority, images_total=request.images_total)
            except RequestError:
                pass  # the daemon will reject it with the reason
            if entry in stuck and folder == layout.inbox:
                row.update(state=RequestState.STUCK, reason=str(stuck[entry]))
            rows.append(row)
        for entry in sorted(os.listdir(folder)) if folder == layout.inbox and folder.exists() else []:
            if is_stray(entry):
                rows.append(
                    _problem_row(
                        f"inbox/{entry}",
                        RequestState.IGNORED,
                        "not a request file name: the daemon takes only *.yaml and *.yml (rename it to end in .yaml)",
                    )
                )
    for folder, state in ((layout.rejected, RequestState.REJECTED), (layout.corrupt, RequestState.CORRUPT)):
        for entry in sorted(os.listdir(folder)) if folder.exists() else []:
            if entry.endswith(".reason"):
                continue
            try:
                reason = read_bytes(folder / f"{entry}.reason", 64 * 1024).decode("utf-8", "replace").strip()
            except (FileNotFoundError, CorruptRecord):
                reason = state
            rows.append(_problem_row(f"{folder.name}/{entry}", state, one_line(reason)))
    return rows


def _problem_row(row_id: str, state: str, reason: str) -> dict:
    """A row for something that is not a request (yet): a rejected, damaged or stuck file."""
    return {
        "id": row_id,
        "name": "",
        "user": "",
        "state": state,
        "priority": 0,
        "images_total": 0,
        "images_done": 0,
        "tickets_total": 0,
        "reason": reason,
    }


def _tracking_status(spool: Spool) -> dict | None:
    return _read_json(spool.layout.tracking_status)


def _request_tracking_failure(tracking: dict | None, request_id: str) -> dict | None:
    failures = tracking.get("requests") if isinstance(tracking, dict) else None
    failure = failures.get(request_id) if isinstance(failures, dict) else None
    return failure if isinstance(failure, dict) else None


def _read_json(path) -> dict | None:
    """A status file the daemon writes, or None when it is missing or damaged (status
    must answer whatever the spool holds)."""
    try:
        return load_json_object(path)
    except (FileNotFoundError, CorruptRecord):
        return None


def _when(t: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"
    except (TypeError, ValueError, OverflowError, OSError):  # a damaged status file
        return "?"


def find(rows: list[dict], request_id: str) -> dict:
    """The row a user means by `request_id`: an exact id (or inbox/... name), else the
    request's `name` when one request has it, else a unique id prefix. Several matches are
    an error listing them: acting on a guess could cancel the wrong request."""
    text = request_id.strip()
    for row in rows:
        if row["id"] == text or row["id"].split("/", 1)[-1] == text:
            return row
    for how, match in (
        ("named", [r for r in rows if text and r.get("name") == text]),
        ("with an id starting", [r for r in rows if text and r["id"].startswith(text)]),
    ):
        if len(match) == 1:
            return match[0]
        if match:
            shown = ", ".join(f"{r['id']} ({r['name']})" if r.get("name") else r["id"] for r in match[:10])
            more = f" and {len(match) - 10} more" if len(match) > 10 else ""
            raise UserError(f"{len(match)} requests {how} {text!r}: {shown}{more}; give the whole id")
    raise UserError(f"unknown request {text!r} (not an id, an id prefix or a name): `sdgen list` shows the known ones")


def resolve(spool: Spool, request_id: str) -> str:
    """The id of the accepted request the user named (id, unique name or unique id prefix)."""
    row = find(collect(spool), request_id)
    rid = row["id"]
    if not REQUEST_ID.match(rid) or not spool.layout.request_file(rid).exists():
        raise UserError(
            f"request {rid} has not been accepted yet ({row['state']}): wait for the daemon to take it (`sdgen daemon`)"
        )
    return rid


_TICKET_PROBLEMS = (TicketState.FAILED, TicketState.HELD, TicketState.DEFERRED)


def detail(spool: Spool, row: dict) -> dict:
    """Everything about one request: its row, the accepted request's fields and why each
    failed, held or deferred ticket is there (from the ticket files)."""
    out = dict(row)
    rid = row["id"]
    if not REQUEST_ID.match(rid) or not spool.layout.request_file(rid).exists():
        return out
    try:
        request = spool.read_request(rid)
    except (CorruptRecord, FileNotFoundError) as e:
        out["request_error"] = one_line(str(e))
        return out
    out.update(
        prompts=list(request.prompts),
        negative_prompt=request.negative_prompt,
        images_per_prompt=request.images,
        seed=request.seed,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance=request.guidance,
        engine=request.engine,
        model=request.model,
        weights=request.weights,
        batch_size=request.batch_size,
        experiment=request.experiment,
        templates=list(request.templates),
        sweep={name: list(values) for name, values in request.sweep},
        zip=[list(group) for group in request.zip],
        combinations=request.combinations,
    )
    out.setdefault("output_dir", str(spool.layout.output_dir(rid)))
    tickets = []
    counts = spool.ticket_counts().get(rid, {})
    for state in _TICKET_PROBLEMS:
        for index in counts.get(state, []):
            name = ticket_name(spool.priority_of(rid, request.priority), index, rid)
            entry = {"ticket": index, "state": state}
            try:
                ticket = spool.read_ticket(state, name)
                entry.update(attempts=ticket.attempt_number - 1, reason=ticket.reason)
            except FileNotFoundError:
                continue  # moved on meanwhile
            except CorruptRecord as e:
                entry["reason"] = one_line(str(e))
            tickets.append(entry)
    out["problem_tickets"] = tickets
    return out


def _detail_text(d: dict) -> str:
    """The detail view of `sdgen status ID`. User text (prompts, names, reasons) is made
    inert before printing."""
    lines = [f"request   {printable(d['id'])}" + (f"  ({printable(d['name'])})" if d.get("name") else "")]
    counts = ", ".join(
        f"{d[k]} {k[len('tickets_') :]}"
        for k in (
            "tickets_pending",
            "tickets_deferred",
            "tickets_running",
            "tickets_done",
            "tickets_failed",
            "tickets_held",
            "tickets_cancelled",
        )
        if d.get(k)
    )
    lines.append(
        f"state     {d['state']}: {d['images_done']}/{d['images_total']} images, "
        f"{d['tickets_total']} tickets" + (f" ({counts})" if counts else "")
    )
    if d.get("user"):
        lines.append(f"user      {printable(d['user'])} (submitted it: takes turns with other users' requests)")
    if d.get("reason"):
        lines.append(f"reason    {printable(d['reason'])}")
    if "prompts" in d:
        for i, template in enumerate(d.get("templates") or []):
            lines.append(f"template {i:<2} {printable(template)}")
        # An expanded template may make thousands of prompts: the first few, then a count
        # (`sdgen status ID --json` has them all).
        shown = d["prompts"][:_PROMPTS_SHOWN]
        for i, prompt in enumerate(shown):
            lines.append(f"prompt {i:<2} {printable(prompt)}")
        if len(d["prompts"]) > len(shown):
            lines.append(f"          ... {len(d['prompts']) - len(shown)} more prompt(s) (`--json` lists them all)")
        for name, values in (d.get("sweep") or {}).items():
            shown_values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
            lines.append(f"sweep     {name}: {printable(shown_values)}")
        if d.get("zip"):
            lines.append(f"zip       {printable('; '.join(' + '.join(g) for g in d['zip']))} (move together)")
        if d.get("combinations", 1) > 1:
            n = d["combinations"]
            lines.append(f"          {n} combinations; size, steps and guidance below are the base values")
        if d["negative_prompt"]:
            lines.append(f"negative  {printable(d['negative_prompt'])}")
        lines += [
            f"images    {d['images_per_prompt']} per prompt"
            + (" and combination" if d.get("combinations", 1) > 1 else "")
            + f", batch size {d['batch_size']}, priority {d['priority']}",
            f"seed      {d['seed']} (image i of a prompt uses seed+i)",
            f"size      {d['width']}x{d['height']}, {d['steps']} steps, guidance {d['guidance']:g}",
            f"model     {d['model']}, engine {d['engine']}, weights {d['weights']}",
            f"output    {printable(d['output_dir'])} (index.csv: file -> prompt, seed)",
        ]
        if d.get("experiment"):
            lines.append(f"mlflow    experiment {printable(d['experiment'])}")
    if d.get("request_error"):
        lines.append(f"request.yaml: {printable(d['request_error'])}")
    for t in d.get("problem_tickets", []):
        tries = f", {t['attempts']} attempt(s)" if "attempts" in t else ""
        lines.append(f"ticket {t['ticket']}: {t['state']}{tries}: {printable(t.get('reason') or '?')}")
    if d.get("problem_tickets"):
        lines.append(f"          `sdgen retry {d['id']}` queues failed, held and deferred tickets again")
    for key in ("tracking_error", "launcher_error"):
        if d.get(key):
            lines.append(f"{key.split('_')[0]}: {printable(d[key])}")
    return "\n".join(lines)


# Prompts the detail view prints before it says how many more there are.
_PROMPTS_SHOWN = 20

# Rows whose reason the table prints under them.
_WITH_REASON = (
    RequestState.FAILED,
    RequestState.REJECTED,
    RequestState.CORRUPT,
    RequestState.STUCK,
    RequestState.IGNORED,
)


def user_cell(user: str, width: int) -> str:
    """A submitter's name in a column of `width`: cut with `~` when longer (user names come
    from the system, but a uid without a passwd entry or a long LDAP name must not shift
    the table)."""
    text = printable(user or "-")
    return text if len(text) <= width else text[: width - 1] + "~"


def _table(rows: list[dict]) -> str:
    uw = min(defaults.STATUS_USER_WIDTH, max([4] + [len(printable(r.get("user") or "-")) for r in rows]))
    head = f"{'ID':<24} {'STATE':<9} {'PRI':>4} {'TICKETS p/r/d/f':>16} {'IMAGES':>13}  {'USER':<{uw}}  NAME"
    lines = [head]
    for r in rows:
        # p/r/d/f: deferred tickets count as pending, held ones as failed
        t = "/".join(
            str(
                r.get(f"tickets_{s.value}", 0)
                + (r.get(f"tickets_{TicketState.DEFERRED.value}", 0) if s == TicketState.PENDING else 0)
                + (r.get(f"tickets_{TicketState.HELD.value}", 0) if s == TicketState.FAILED else 0)
            )
            for s in (TicketState.PENDING, TicketState.RUNNING, TicketState.DONE, TicketState.FAILED)
        )
        images = f"{r['images_done']}/{r['images_total']}"
        # Names, ids of rejected files and reasons come from users: inert before printing.
        lines.append(
            f"{printable(r['id']):<24} {r['state']:<9} {r['priority']:>4} {t:>16} {images:>13}  "
            f"{user_cell(r.get('user', ''), uw):<{uw}}  {printable(r.get('name', ''))}".rstrip()
        )
        if r.get("reason") and r["state"] in _WITH_REASON:
            lines.append(f"{'':<24} reason: {printable(r['reason'])}")
        if r.get("tracking_error") and not r.get("tracking_outage"):
            # an outage is said once below the table; this request's own failure is said here
            lines.append(f"{'':<24} tracking_error: {printable(r['tracking_error'])}")
    return "\n".join(lines)


def _existing_spool(args: argparse.Namespace) -> Spool:
    """The spool of --data / $SDGEN_DATA; a folder without one is an error naming it, not
    an empty list: a mistyped --data must not look like a queue with nothing in it."""
    spool = Spool(data_root(args.data))
    if not spool.layout.spool.is_dir():
        what = f"unknown request id {args.request_id}: " if getattr(args, "request_id", None) else ""
        raise UserError(
            f"{what}no spool in {spool.layout.root}: check --data or SDGEN_DATA "
            "(`sdgen submit` or `sdgen daemon` makes one)"
        )
    return spool


def daemon_state(spool: Spool) -> dict:
    """{running, pid, host, since} from spool/daemon.json (who took the daemon lock last)
    and whether spool/daemon.lock is held now: daemon.json stays behind when a daemon dies,
    and its pid may belong to another process by now, so only the lock says it runs."""
    info = _read_json(spool.layout.daemon_info) or {}
    out = {"running": False, "pid": info.get("pid"), "host": info.get("host"), "since": info.get("started")}
    if not info or not spool.layout.daemon_lock.exists():
        return out  # no daemon ever ran here: no need to touch the lock
    from filelock import FileLock, Timeout

    lock = FileLock(str(spool.layout.daemon_lock), timeout=0)
    try:
        # held for microseconds: a daemon starting in that instant is refused and says so
        lock.acquire()
    except Timeout:
        out["running"] = True
    except OSError:  # a read-only spool: judge by the pid, on this host only
        import socket

        from sdgen.spool.claim import pid_alive

        try:
            out["running"] = info.get("host") != socket.gethostname() or pid_alive(int(info.get("pid")))
        except (TypeError, ValueError):
            pass
    else:
        lock.release()
    return out


def _daemon_line(d: dict, spool: Spool) -> str:
    if d["running"]:
        return f"daemon: running (pid {printable(d['pid'])} on {printable(d['host'])} since {_when(d['since'])})"
    return f"daemon: not running — start `sdgen daemon --data {printable(spool.layout.root)}`"


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch and (args.request_id or args.json):
        raise UserError("--watch shows every request as a live table: leave out REQUEST and --json")
    if args.interval is not None and not args.watch:
        raise UserError("--interval is the refresh of --watch: add --watch")
    spool = _existing_spool(args)
    if args.watch:
        from sdgen.cli.watch import watch

        return watch(spool, args.interval or defaults.WATCH_INTERVAL_SECONDS)
    rows = collect(spool)
    daemon = daemon_state(spool)
    if args.request_id:
        d = detail(spool, find(rows, args.request_id))
        d["daemon"] = daemon
        print(json.dumps(d, indent=1) if args.json else _detail_text(d) + "\n" + _daemon_line(daemon, spool))
        return 0
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no requests yet: `sdgen submit --prompt ...` queues one")
    else:
        print(_table(rows))
    print("\n".join(footer_lines(spool, rows, daemon)))
    return 0


def footer_lines(spool: Spool, rows: list[dict], daemon: dict) -> list[str]:
    """The lines under the table (plain and --watch): the daemon, its workers, a blocked
    launcher, the MLflow backlog. Inert: user text passed through printable."""
    lines = [_daemon_line(daemon, spool)]
    launcher = _read_json(spool.layout.launcher_status) or {}
    workers = launcher.get("workers") or {}
    # launcher.json is the daemon's last word: once it is gone the counts are stale
    if daemon["running"] and workers and any(r["state"] in (RequestState.PENDING, RequestState.RUNNING) for r in rows):
        lines.append(
            f"workers ({printable(launcher.get('launcher', '?'))}): "
            + ", ".join(f"{n} {printable(what)}" for what, n in sorted(workers.items()))
        )
    if launcher.get("blocked"):  # why the last daemon stopped launching: worth saying after it exits too
        lines.append(
            f"launcher {printable(launcher.get('launcher', '?'))} stopped launching workers at "
            f"{_when(launcher.get('since'))}: {printable(launcher['blocked'])}"
        )
    waiting = sum(r.get("tracking_backlog", 0) for r in rows)
    tracking = _tracking_status(spool)
    if tracking and not tracking.get("ok"):
        lines.append(
            f"MLflow ({printable(tracking.get('uri', '?'))}) unreachable since {_when(tracking.get('down_since'))}: "
            f"{waiting} attempt(s) wait in spool/events and will be logged when it is back"
        )
    lines += _notify_lines(_read_json(spool.layout.notify_status))
    return lines


def _notify_lines(status: dict | None) -> list[str]:
    """Notification failures (--on-done, --webhook) from spool/notify.json: per channel,
    that it fails now, and the request ends it gave up on."""
    channels = status.get("channels") if isinstance(status, dict) else None
    lines = []
    for entry in channels.values() if isinstance(channels, dict) else ():
        if not isinstance(entry, dict):
            continue
        what = printable(entry.get("target", "?"))
        if entry.get("failing_since"):
            lines.append(
                f"notifications: {what} failing since {_when(entry['failing_since'])}: "
                f"{printable(entry.get('error', '?'))}"
            )
        last = entry.get("last_not_notified")
        if entry.get("not_notified") and isinstance(last, dict):
            lines.append(
                f"notifications: {what} gave up on {printable(entry['not_notified'])} request end(s), "
                f"last {printable(last.get('request', '?'))} at {_when(last.get('at'))}: "
                f"{printable(last.get('error', '?'))}"
            )
    return lines


# The words `sdgen list --state` takes: every RequestState (status-only rows included).
STATES = tuple(state.value for state in RequestState)


def cmd_list(args: argparse.Namespace) -> int:
    spool = _existing_spool(args)
    rows = [
        r
        for r in collect(spool)
        if (not args.state or r["state"] in args.state)
        and (not args.name or args.name.casefold() in (r.get("name") or "").casefold())
        and (args.user is None or r.get("user", "") == args.user)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        # tab-separated for scripts (`cut -f1`); no trailing tab when there is no name
        print(f"{printable(row['id'])}\t{row['state']}\t{printable(row.get('name', ''))}".rstrip("\t"))
    return 0


def _state(text: str) -> str:
    if text not in STATES:
        import difflib

        near = difflib.get_close_matches(text, STATES, 1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise argparse.ArgumentTypeError(f"unknown state {text!r}: {hint}one of {', '.join(STATES)}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):  # nan and inf too: a look must come
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "status",
        help="show requests and their progress, or one request in detail",
        description="Without REQUEST: every request with its state, tickets and images, "
        "and whether a daemon runs. With REQUEST (an id, a unique id prefix or a unique "
        "name): its prompts, parameters, output folder and why tickets failed.",
    )
    p.add_argument("request_id", nargs="?", metavar="REQUEST", help="id, id prefix or name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep watching: a live table on a terminal (Ctrl-C ends it), a line per change elsewhere",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        metavar="S",
        help=f"seconds between looks at the spool with --watch (default {defaults.WATCH_INTERVAL_SECONDS:g})",
    )
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "list", help="list request ids and states", description="One line per request: id, state, name (tab-separated)."
    )
    p.add_argument(
        "--state",
        action="append",
        type=_state,
        metavar="STATE",
        help=f"only requests in this state (repeatable): {', '.join(STATES)}",
    )
    p.add_argument("--name", metavar="TEXT", help="only requests whose name contains TEXT (any case)")
    p.add_argument(
        "--user",
        metavar="NAME",
        help="only requests NAME submitted (their request file's owner; a uid where it has no name)",
    )
    p.add_argument("--json", action="store_true", help="a JSON list of the requests' status rows")
    p.set_defaults(func=cmd_list)
