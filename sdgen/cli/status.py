"""`sdgen status` and `sdgen list`: what every request is doing, read from the spool itself
(so it is true even while no daemon runs)."""

from __future__ import annotations

import argparse
import json
import os
import time

from sdgen.config import data_root
from sdgen.exceptions import RequestError, UserError
from sdgen.spool.intake import is_candidate, is_stray, read_request_file
from sdgen.spool.layout import REQUEST_ID
from sdgen.spool.progress import summarize
from sdgen.spool.records import CorruptRecord, load_json_object, one_line, read_bytes
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
            rows.append(_problem_row(request_id, "corrupt", f"{e}: the daemon moves it to spool/corrupt/ "
                                     "and rebuilds it from request.yaml"))
            continue
        if meta is None:
            continue  # being accepted right now
        row = summarize(meta, counts.get(request_id, {}), spool.is_cancelled(request_id))
        row["output_dir"] = str(layout.output_dir(request_id))
        if row["state"] == "failed":
            row["reason"] = meta.get("reason", "tickets failed or held")
        row["tracking_backlog"] = backlog.get(request_id, 0)
        failure = _request_tracking_failure(tracking, request_id)
        if tracking and not tracking.get("ok") and row["tracking_backlog"]:
            row["tracking_error"] = f"MLflow unreachable since {_when(tracking['down_since'])}: {tracking['error']}"
            row["tracking_outage"] = True
        elif failure:
            # this request's logging fails on its own (the others go on): say why
            row["tracking_error"] = (f"MLflow logging failed since {_when(failure.get('since'))} "
                                     f"({failure.get('attempts', 1)} tries, retrying): {failure.get('error', '?')}")
        if blocked and row["state"] in ("pending", "running"):
            row["launcher_error"] = blocked
        rows.append(row)
    for folder in (layout.inbox, layout.incoming):
        for entry in sorted(os.listdir(folder)) if folder.exists() else []:
            if not is_candidate(entry):
                continue
            stem = entry.rsplit(".", 1)[0]
            row = {"id": stem if REQUEST_ID.match(stem) else f"inbox/{entry}", "name": "",
                   "state": "pending", "priority": 0, "images_total": 0, "images_done": 0,
                   "tickets_total": 0}
            try:
                request = read_request_file(folder / entry, check_name=folder == layout.inbox)
                row.update(name=request.name, priority=request.priority,
                           images_total=request.images_total)
            except RequestError:
                pass  # the daemon will reject it with the reason
            if entry in stuck and folder == layout.inbox:
                row.update(state="stuck", reason=str(stuck[entry]))
            rows.append(row)
        for entry in sorted(os.listdir(folder)) if folder == layout.inbox and folder.exists() else []:
            if is_stray(entry):
                rows.append(_problem_row(f"inbox/{entry}", "ignored", "not a request file name: the "
                                         "daemon takes only *.yaml and *.yml (rename it to end in .yaml)"))
    for folder, state in ((layout.rejected, "rejected"), (layout.corrupt, "corrupt")):
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
    return {"id": row_id, "name": "", "state": state, "priority": 0, "images_total": 0,
            "images_done": 0, "tickets_total": 0, "reason": reason}


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
    for row in rows:
        if row["id"] == request_id or row["id"].split("/", 1)[-1] == request_id:
            return row
    raise UserError(f"unknown request id {request_id!r}: `sdgen list` shows the known ones")


def _table(rows: list[dict]) -> str:
    head = f"{'ID':<24} {'STATE':<9} {'PRI':>4} {'TICKETS p/r/d/f':>16} {'IMAGES':>13}  NAME"
    lines = [head]
    for r in rows:
        t = "/".join(str(r.get(f"tickets_{s}", 0) + (r.get("tickets_deferred", 0) if s == "pending" else 0)
                         + (r.get("tickets_held", 0) if s == "failed" else 0))
                     for s in ("pending", "running", "done", "failed"))
        images = f"{r['images_done']}/{r['images_total']}"
        # Names, ids of rejected files and reasons come from users: inert before printing.
        lines.append(f"{printable(r['id']):<24} {r['state']:<9} {r['priority']:>4} {t:>16} {images:>13}  "
                     f"{printable(r.get('name', ''))}")
        if r.get("reason") and r["state"] in ("failed", "rejected", "corrupt", "stuck", "ignored"):
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
        raise UserError(f"{what}no spool in {spool.layout.root}: check --data or SDGEN_DATA "
                        "(`sdgen submit` or `sdgen daemon` makes one)")
    return spool


def cmd_status(args: argparse.Namespace) -> int:
    spool = _existing_spool(args)
    rows = collect(spool)
    if args.request_id:
        rows = [find(rows, args.request_id)]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print("no requests yet: `sdgen submit --prompt ...` queues one")
    else:
        print(_table(rows))
        launcher = _read_json(spool.layout.launcher_status) or {}
        workers = launcher.get("workers") or {}
        if workers and any(r["state"] in ("pending", "running") for r in rows):
            print(f"workers ({launcher['launcher']}): " + ", ".join(f"{n} {what}" for what, n in sorted(workers.items())))
        if launcher.get("blocked"):
            print(f"launcher {printable(launcher['launcher'])} stopped launching workers at "
                  f"{_when(launcher['since'])}: {printable(launcher['blocked'])}")
        waiting = sum(r.get("tracking_backlog", 0) for r in rows)
        tracking = _tracking_status(spool)
        if tracking and not tracking.get("ok"):
            print(f"MLflow ({printable(tracking['uri'])}) unreachable since {_when(tracking['down_since'])}: "
                  f"{waiting} attempt(s) wait in spool/events and will be logged when it is back")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    spool = _existing_spool(args)
    for row in collect(spool):
        print(f"{printable(row['id'])}\t{row['state']}\t{printable(row.get('name', ''))}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("status", help="show requests and their progress")
    p.add_argument("request_id", nargs="?", metavar="REQUEST_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("list", help="list request ids and states")
    p.set_defaults(func=cmd_list)


