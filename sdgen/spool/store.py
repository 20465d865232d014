"""The spool on disk: every write to spool/ goes through `Spool` (docs/spool.md).

Ticket state changes are renames between the folders of spool/tickets/; a changed ticket
is published at its new place first and removed from the old one second, so a crash leaves
at worst two copies, which `reconcile` resolves by state precedence.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

import yaml

from sdgen.spool.layout import REQUEST_ID, TICKET_STATES, Layout, parse_ticket_name
from sdgen.spool.publish import link_new, publish
from sdgen.spool.request import Request, validate
from sdgen.spool.ticket import Ticket

log = logging.getLogger(__name__)

# When a crash leaves one ticket in two folders, the first state here wins.
PRECEDENCE = ("done", "cancelled", "failed", "held", "pending", "deferred", "running")

REQUEST_STATES = ("pending", "running", "done", "failed", "cancelled", "rejected")


def new_request_id(now: float | None = None) -> str:
    """Ids sort by submission time (UTC, to the second), then by a random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


class Spool:
    def __init__(self, root: Path | str):
        self.layout = Layout(Path(root))

    # -- set-up -----------------------------------------------------------------------------
    def ensure(self) -> "Spool":
        for d in self.layout.all_dirs():
            d.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, target: Path, data: bytes) -> None:
        publish(self.layout.tmp, target, data)

    # -- submission -------------------------------------------------------------------------
    def submit(self, request: Request, now: float | None = None) -> str:
        """Publish a validated request into the inbox; the daemon accepts it from there."""
        data = yaml.safe_dump(request.to_dict(), sort_keys=False, allow_unicode=True).encode()
        while True:
            request_id = new_request_id(now)
            # link, not rename: two submitters that drew the same id must not overwrite
            # each other; the loser simply draws again.
            if link_new(self.layout.tmp, self.layout.inbox / f"{request_id}.yaml", data):
                return request_id

    # -- acceptance (daemon) ----------------------------------------------------------------
    def claim_inbox_file(self, path: Path, now: float) -> str | None:
        """Move a valid dropped file to incoming/<id>.yaml, fixing its id. None if it vanished."""
        stem = path.stem
        request_id = stem if REQUEST_ID.match(stem) else new_request_id(now)
        while (self.layout.request_dir(request_id).exists()
               or (self.layout.incoming / f"{request_id}.yaml").exists()):
            request_id = new_request_id(now)
        try:
            os.rename(path, self.layout.incoming / f"{request_id}.yaml")
        except FileNotFoundError:
            return None
        return request_id

    def accept(self, request_id: str, request: Request, source: str, now: float) -> Request:
        """Write the immutable request, publish its tickets and its state. Idempotent, so a
        daemon that died half-way through simply runs it again for the same incoming file."""
        from sdgen.spool.split import split_request

        rdir = self.layout.request_dir(request_id)
        rfile = self.layout.request_file(request_id)
        if rfile.exists():
            # Keep the seed chosen the first time: never re-roll a recorded seed.
            request = validate(yaml.safe_load(rfile.read_text()))
        else:
            request = request.with_seed()
            rdir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(request.to_dict(), sort_keys=False, allow_unicode=True)
            self.write(rfile, text.encode())
        tickets = split_request(request_id, request)
        # state.json goes before the tickets, so that a reader who sees a ticket always
        # finds its request's totals; if it is already there, a crash interrupted us.
        recovering = self.layout.request_state(request_id).exists()
        if not recovering:
            self.write_state(request_id, {
                "id": request_id, "state": "pending", "source": source, "accepted_at": now,
                "name": request.name, "priority": request.priority, "seed": request.seed,
                "prompts": len(request.prompts), "images": request.images,
                "batch_size": request.batch_size, "images_total": request.images_total,
                "tickets_total": len(tickets), "engine": request.engine, "model": request.model,
            })
        for ticket in tickets:
            if recovering and self.find_ticket(ticket.name):
                continue
            self.write(self.layout.ticket("pending", ticket.name), ticket.to_json())
        (self.layout.incoming / f"{request_id}.yaml").unlink(missing_ok=True)
        return request

    def reject(self, path: Path, reason: str, now: float) -> Path:
        """Quarantine a bad dropped file with a one-line reason file next to it."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip(".") or "unnamed"
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        target = self.layout.rejected / f"{stamp}-{secrets.token_hex(2)}-{safe}"
        try:
            os.rename(path, target)  # moves a symlink itself, never its target
        except FileNotFoundError:
            return target
        self.write(target.with_name(target.name + ".reason"), (reason.strip() + "\n").encode())
        log.warning("rejected %s: %s", path.name, reason)
        return target

    # -- tickets ----------------------------------------------------------------------------
    def ticket_names(self, state: str) -> list[str]:
        """Ticket names in a state, in claim order."""
        try:
            entries = os.listdir(self.layout.tickets(state))
        except FileNotFoundError:
            return []
        return sorted(e[:-5] for e in entries if e.endswith(".json"))

    def read_ticket(self, state: str, name: str) -> Ticket:
        return Ticket.from_json(self.layout.ticket(state, name).read_bytes())

    def find_ticket(self, name: str) -> list[str]:
        return [s for s in TICKET_STATES if self.layout.ticket(s, name).exists()]

    def move_ticket(self, name: str, src: str, dst: str, ticket: Ticket | None = None) -> bool:
        """Move a ticket between states, optionally with new contents. False if it was no
        longer in `src` (someone else moved it first)."""
        source = self.layout.ticket(src, name)
        target = self.layout.ticket(dst, name)
        if ticket is None:
            try:
                os.rename(source, target)
            except FileNotFoundError:
                return False
            return True
        if not source.exists():
            return False
        # New contents in place first, then one rename: there is never a second copy. (A copy
        # published in pending/ before the old one was removed could be claimed, renamed into
        # running/ and then deleted as the "old" copy: a lost ticket.)
        self.write(source, ticket.to_json())
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return False
        return True

    def reconcile(self) -> list[str]:
        """Resolve tickets left in two folders by a crash: the state of highest precedence
        wins. Returns a line per action taken, for the log."""
        seen: dict[str, str] = {}
        actions = []
        for state in PRECEDENCE:
            for name in self.ticket_names(state):
                if name in seen:
                    self.layout.ticket(state, name).unlink(missing_ok=True)
                    actions.append(f"ticket {name}: in {seen[name]} and {state}; kept {seen[name]}")
                else:
                    seen[name] = state
        return actions

    # -- requests ---------------------------------------------------------------------------
    def request_ids(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.layout.requests) if REQUEST_ID.match(e))
        except FileNotFoundError:
            return []

    def read_request(self, request_id: str) -> Request:
        return validate(yaml.safe_load(self.layout.request_file(request_id).read_text()))

    def read_state(self, request_id: str) -> dict | None:
        try:
            return json.loads(self.layout.request_state(request_id).read_bytes())
        except FileNotFoundError:
            return None

    def write_state(self, request_id: str, state: dict) -> None:
        self.write(self.layout.request_state(request_id), json.dumps(state, indent=1).encode())

    def is_cancelled(self, request_id: str) -> bool:
        return self.layout.cancel_marker(request_id).exists()

    def cancel(self, request_id: str, now: float) -> None:
        self.write(self.layout.cancel_marker(request_id), json.dumps({"at": now}).encode())

    # -- events (what happened to each attempt, for tracking) ----------------------------------
    def worker_count(self) -> int:
        """Workers the daemon has (running or coming, by spool/launcher.json); 1 when it does
        not say (no daemon, or an older one)."""
        try:
            workers = json.loads(self.layout.launcher_status.read_bytes()).get("workers") or {}
            return max(1, sum(int(n) for n in workers.values()))
        except (OSError, ValueError, TypeError, AttributeError):
            return 1

    def record_event(self, event: dict) -> None:
        """Publish one attempt's outcome for the tracker; it deletes the file once logged."""
        name = f"{time.time_ns():020d}-{event['request_id']}-{secrets.token_hex(3)}.json"
        self.write(self.layout.events / name, json.dumps(event).encode())

    def event_names(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.layout.events) if e.endswith(".json"))
        except FileNotFoundError:
            return []

    def ticket_counts(self) -> dict[str, dict[str, list[int]]]:
        """request id -> state -> ticket indexes, from one listing of each ticket folder.
        A ticket caught in two folders (mid-move) counts once, in the state that wins."""
        counts: dict[str, dict[str, list[int]]] = {}
        seen: set[str] = set()
        for state in PRECEDENCE:
            for name in self.ticket_names(state):
                if name in seen:
                    continue
                seen.add(name)
                parsed = parse_ticket_name(name)
                if parsed:
                    _, index, rid = parsed
                    counts.setdefault(rid, {}).setdefault(state, []).append(index)
        return counts
