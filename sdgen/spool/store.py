"""The spool on disk: every create, rename, rewrite and unlink under spool/ goes through a
`Spool` method named for its protocol step, with every path from `Layout` (docs/spool.md,
"Protocol steps"; tests/spool/test_one_writer.py keeps it so).

Ticket state changes are renames between the folders of spool/tickets/. A changed ticket
gets its new contents in place first (an atomic replace) and then moves with one rename, so
two copies never exist at once; two copies left by hand edits or older versions are
resolved by `reconcile`, by state precedence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

import yaml

from sdgen import defaults
from sdgen.exceptions import RequestError, SdgenError
from sdgen.spool.layout import REQUEST_ID, Layout, parse_ticket_name
from sdgen.spool.publish import link_new, publish
from sdgen.spool.records import CorruptRecord, load_json_object, one_line, read_bytes, require
from sdgen.spool.request import Request, parse_request
from sdgen.spool.split import ticket_at, ticket_count
from sdgen.spool.states import (
    PRECEDENCE,
    TICKET_STATES,
    RequestState,  # noqa: F401
    TicketState,
    ticket_state,
)
from sdgen.spool.ticket import Ticket
from sdgen.textsafe import printable

log = logging.getLogger(__name__)

# Tickets written per step of a split before the deadline is looked at again.
SPLIT_SLICE = defaults.SPLIT_SLICE_TICKETS


class StuckEntry(SdgenError):
    """An inbox entry that can be neither accepted nor rejected: it cannot be moved."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, one_line(reason)
        super().__init__(f"{path.name}: {self.reason}")


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
        # Dated back past the quiet-file rule: the file is complete when it appears.
        dated = time.time() - 2 * defaults.INBOX_SETTLE_SECONDS - 1
        while True:
            request_id = new_request_id(now)
            # link, not rename: two submitters that drew the same id must not overwrite
            # each other; the loser simply draws again.
            if link_new(self.layout.tmp, self.layout.inbox / f"{request_id}.yaml", data, mtime=dated):
                return request_id

    # -- acceptance (daemon) ----------------------------------------------------------------
    def _id_is_free(self, request_id: str) -> bool:
        """Unused, or used only by a `sdgen cancel` that came before acceptance (the folder
        then holds nothing but the cancel marker, which the acceptance honours)."""
        if (self.layout.incoming / f"{request_id}.yaml").exists():
            return False
        try:
            entries = set(os.listdir(self.layout.request_dir(request_id)))
        except FileNotFoundError:
            return True
        except NotADirectoryError:
            return False
        return entries <= {"cancel"}

    def claim_inbox_file(self, path: Path, now: float) -> str | None:
        """Move a valid dropped file to incoming/<id>.yaml, fixing its id. None if it vanished.
        Raises StuckEntry if it cannot be moved (no permission on it or the folder)."""
        stem = path.stem
        request_id = stem if REQUEST_ID.match(stem) else new_request_id(now)
        while not self._id_is_free(request_id):
            request_id = new_request_id(now)
        try:
            os.rename(path, self.layout.incoming / f"{request_id}.yaml")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StuckEntry(path, f"cannot be moved out of the inbox ({e.strerror or e})") from None
        return request_id

    def begin_accept(self, request_id: str, request: Request, source: str, now: float) -> Request:
        """First step of accepting incoming/<id>.yaml: the immutable request and its state.
        The tickets follow in slices (`continue_split`). Idempotent, so a daemon that died
        half-way simply runs it again for the same incoming file."""
        rdir = self.layout.request_dir(request_id)
        rfile = self.layout.request_file(request_id)
        recorded = None
        if rfile.exists():
            # Keep the seed chosen the first time: never re-roll a recorded seed.
            try:
                recorded = self.read_request(request_id)
            except (CorruptRecord, RequestError) as e:
                self.quarantine(rfile, f"unreadable request.yaml ({e}); written again from the incoming file", now)
        if recorded is not None:
            request = recorded
        else:
            request = request.with_seed()
            rdir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(request.to_dict(), sort_keys=False, allow_unicode=True)
            self.write(rfile, text.encode())
        # state.json goes before the tickets, so that a reader who sees a ticket always
        # finds its request's totals; if it is already there, a crash interrupted us.
        if not self.layout.request_state(request_id).exists():
            self.write_state(request_id, self.initial_state(request_id, request, source, now))
        return request

    @staticmethod
    def initial_state(request_id: str, request: Request, source: str, now: float) -> dict:
        return {
            "id": request_id,
            "state": RequestState.PENDING,
            "source": source,
            "accepted_at": now,
            "name": request.name,
            "priority": request.priority,
            "seed": request.seed,
            "prompts": len(request.prompts),
            "images": request.images,
            "batch_size": request.batch_size,
            "images_total": request.images_total,
            "tickets_total": ticket_count(request),
            "engine": request.engine,
            "model": request.model,
        }

    def continue_split(self, request_id: str, request: Request, deadline: float) -> bool:
        """Publish the request's next tickets until `deadline` (time.monotonic()); True once
        all are out and the incoming file is gone. The cursor file names the slice being
        written before it is written, so a daemon killed mid-slice checks just that slice
        for tickets already out (and maybe claimed, or done) and never makes one twice."""
        total = ticket_count(request)
        cursor_path = self.layout.split_cursor(request_id)
        try:
            cursor = require(cursor_path, load_json_object(cursor_path), next=int, upto=int)
            start, upto = cursor["next"], cursor["upto"]
        except FileNotFoundError:
            start, upto = 0, total if self._any_ticket_of(request_id) else 0
        except CorruptRecord:
            start, upto = 0, total  # check every ticket: slow but exact
        start = max(0, min(start, total))
        while start < total and not self.is_cancelled(request_id):
            stop = min(total, start + SPLIT_SLICE)
            self.write(cursor_path, json.dumps({"next": start, "upto": max(upto, stop)}).encode())
            for index in range(start, stop):
                # The deadline is looked at every ticket: on a busy disk one fsync can take
                # tens of milliseconds, and a slice must not hold the loop for seconds.
                if index > start and time.monotonic() >= deadline:
                    stop = index
                    break
                ticket = ticket_at(request_id, request, index)
                if index < upto and self.find_ticket(ticket.name, twice=True):
                    continue
                self.write(self.layout.ticket(TicketState.PENDING, ticket.name), ticket.to_json())
            upto = max(upto, stop)
            start = stop
            if time.monotonic() >= deadline and start < total:
                # `upto` still names the slice as planned: tickets of it not written yet are
                # looked for first next time (none found: written then), which is exact.
                self.write(cursor_path, json.dumps({"next": start, "upto": upto}).encode())
                return False
        (self.layout.incoming / f"{request_id}.yaml").unlink(missing_ok=True)
        cursor_path.unlink(missing_ok=True)
        return True

    def _any_ticket_of(self, request_id: str) -> bool:
        """A crash between state.json and the first cursor: were any tickets written?"""
        return any(name.endswith(request_id) for state in TICKET_STATES for name in self.ticket_names(state))

    def accept(self, request_id: str, request: Request, source: str, now: float) -> Request:
        """Accept a request whole (tests and tools; the daemon splits across ticks)."""
        request = self.begin_accept(request_id, request, source, now)
        self.continue_split(request_id, request, deadline=float("inf"))
        return request

    def reject(self, path: Path, reason: str, now: float) -> Path:
        """Quarantine a bad dropped file with a one-line reason file next to it. Raises
        StuckEntry when the file cannot be moved (the caller reports it once and skips it)."""
        target = self._aside_name(self.layout.rejected, path.name, now)
        try:
            os.rename(path, target)  # moves a symlink itself, never its target
        except FileNotFoundError:
            return target
        except OSError as e:
            raise StuckEntry(
                path, f"cannot be moved to rejected/ ({e.strerror or e}): {one_line(reason, 300)}"
            ) from None
        self.write(target.with_name(target.name + ".reason"), (one_line(reason) + "\n").encode())
        log.warning("rejected %s: %s", printable(path.name), printable(one_line(reason)))
        return target

    def quarantine(self, path: Path, reason: str, now: float) -> Path | None:
        """Move an unreadable or malformed spool file (or folder) to spool/corrupt/ with a
        one-line reason: nothing sdgen cannot read is deleted, and the rest goes on."""
        try:
            rel = path.relative_to(self.layout.spool)
        except ValueError:
            rel = Path(path.name)
        target = self._aside_name(self.layout.corrupt, "_".join(rel.parts), now)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        self.write(target.with_name(target.name + ".reason"), (f"{rel}: {one_line(reason)}\n").encode())
        log.error(
            "moved damaged spool file %s to %s: %s",
            printable(str(rel)),
            printable(target.name),
            printable(one_line(reason)),
        )
        return target

    @staticmethod
    def _aside_name(folder: Path, name: str, now: float) -> Path:
        """<stamp>-<rand>-<name>: a name cut so that it and its `.reason` stay under NAME_MAX."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "unnamed"
        if len(safe) > 150:
            safe = f"{safe[:120]}...{hashlib.sha1(name.encode('utf-8', 'replace')).hexdigest()[:10]}"
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        return folder / f"{stamp}-{secrets.token_hex(2)}-{safe}"

    # -- tickets ----------------------------------------------------------------------------
    def ticket_names(self, state: TicketState) -> list[str]:
        """Ticket names in a state, in claim order."""
        try:
            entries = os.listdir(self.layout.tickets(state))
        except FileNotFoundError:
            return []
        return sorted(e[:-5] for e in entries if e.endswith(".json"))

    def read_ticket(self, state: TicketState, name: str) -> Ticket:
        """FileNotFoundError if it moved on, CorruptRecord if it cannot be a ticket."""
        path = self.layout.ticket(state, name)
        record = load_json_object(path)
        try:
            ticket = Ticket.from_dict(record)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptRecord(path, f"is not a ticket ({type(e).__name__}: {e})") from None
        if ticket.name != name:
            raise CorruptRecord(path, f"holds ticket {ticket.name}, not {name}")
        return ticket

    def find_ticket(self, name: str, twice: bool = False) -> list[str]:
        """The folders holding ticket `name`. With `twice`, the folders are looked through
        two times: a ticket moved by a worker during one pass is seen in the other (a
        single move cannot hide it from both)."""
        found = [s for s in TICKET_STATES if self.layout.ticket(s, name).exists()]
        if twice and not found:
            found = [s for s in reversed(TICKET_STATES) if self.layout.ticket(s, name).exists()]
        return found

    def move_ticket(self, name: str, src: TicketState, dst: TicketState, ticket: Ticket | None = None) -> bool:
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

    # -- protocol steps on tickets (docs/spool.md, "Protocol steps") -----------------------
    def claim(self, name: str, lease: bytes) -> bool:
        """Worker: take pending/<name> (the rename decides between claimers on any host) and
        publish its lease. False if another worker won it, or it was done meanwhile (a late
        writer finished it after a hand-back: the running copy is dropped). A lease that
        cannot be written gives the ticket back by rename (needs no space) and raises."""
        running = self.layout.ticket(TicketState.RUNNING, name)
        try:
            os.rename(self.layout.ticket(TicketState.PENDING, name), running)
        except FileNotFoundError:
            return False  # another worker won this one
        if self.layout.ticket(TicketState.DONE, name).exists():
            running.unlink(missing_ok=True)
            return False
        try:
            self.write(self.layout.lease(name), lease)
        except OSError:
            os.rename(running, self.layout.ticket(TicketState.PENDING, name))
            raise
        return True

    def renew_lease(self, name: str, lease: bytes) -> None:
        """Worker heartbeat: the lease republished with a higher beat."""
        self.write(self.layout.lease(name), lease)

    def release_lease(self, name: str) -> None:
        """Remove a lease (its holder is done with the ticket, or the ticket was set aside)."""
        self.layout.lease(name).unlink(missing_ok=True)

    def finish(self, name: str, marker: bytes) -> bool:
        """Worker: publish the done-marker with link(2): at most one per ticket, ever. True
        if this call won. The running copy and the lease stay until `retire`."""
        return link_new(self.layout.tmp, self.layout.ticket(TicketState.DONE, name), marker)

    def retire(self, name: str) -> None:
        """Worker, after its marker is out and the ticket is still its own: remove the
        running copy, then the lease."""
        self.layout.ticket(TicketState.RUNNING, name).unlink(missing_ok=True)
        self.release_lease(name)

    def leave_running(self, name: str, to: TicketState, ticket: Ticket | None = None) -> bool:
        """Move a running ticket out of running/ (failed, deferred, held, handed back,
        cancelled, reclaimed), optionally with new contents. THE safety rule lives here:
        the lease goes before the ticket leaves running/, because once it is pending another
        worker may claim it at once and write its own lease, which must then survive."""
        self.release_lease(name)
        return self.move_ticket(name, TicketState.RUNNING, ticket_state(to), ticket)

    def reclaim(self, name: str, to: TicketState, ticket: Ticket) -> bool:
        """Daemon: take back the ticket of a worker that died, lease first (`leave_running`).
        True when it was taken back (or moved on by itself meanwhile); False when its
        done-marker exists: then only the lease and the running copy go."""
        if self.layout.ticket(TicketState.DONE, name).exists():
            self.release_lease(name)
            self.layout.ticket(TicketState.RUNNING, name).unlink(missing_ok=True)
            return False
        self.leave_running(name, to, ticket)
        return True

    def stamp_due(self, name: str, ticket: Ticket) -> None:
        """Daemon, first sight of a deferred ticket: its `not_before` stamped in place (only
        the daemon writes deferred tickets once they are there)."""
        self.write(self.layout.ticket(TicketState.DEFERRED, name), ticket.to_json())

    def undefer(self, name: str) -> bool:
        """Daemon: a deferred ticket whose `not_before` passed goes back to pending."""
        return self.move_ticket(name, TicketState.DEFERRED, TicketState.PENDING)

    def cancel_ticket(self, name: str, state: TicketState) -> bool:
        """Daemon: a pending or deferred ticket of a cancelled request."""
        return self.move_ticket(name, ticket_state(state), TicketState.CANCELLED)

    def retry(self, name: str, state: TicketState, ticket: Ticket) -> bool:
        """`sdgen retry`: a failed, held or deferred ticket queued again with its counters
        reset; a `.reason` file a person or an older version left next to it goes too."""
        if not self.move_ticket(name, ticket_state(state), TicketState.PENDING, ticket):
            return False
        self.layout.ticket_reason(state, name).unlink(missing_ok=True)
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
    def request_ids(self, junk: list[Path] | None = None) -> list[str]:
        """Ids of the request folders. Entries that cannot be one (a file or a link under a
        request id's name, or any other name) are added to `junk`."""
        ids = []
        try:
            entries = list(os.scandir(self.layout.requests))
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if REQUEST_ID.match(entry.name) and is_folder:
                ids.append(entry.name)
            elif junk is not None:
                junk.append(Path(entry.path))
        return sorted(ids)

    def read_request(self, request_id: str) -> Request:
        """The accepted request; CorruptRecord if request.yaml is damaged."""
        path = self.layout.request_file(request_id)
        raw = read_bytes(path, defaults.MAX_REQUEST_BYTES * 2)
        try:
            return parse_request(raw.decode("utf-8"))
        except (UnicodeDecodeError, RequestError) as e:
            raise CorruptRecord(path, f"is not a valid request ({e})") from None

    def read_state(self, request_id: str) -> dict | None:
        """state.json, checked for the fields readers use; None while not written yet,
        CorruptRecord when damaged."""
        path = self.layout.request_state(request_id)
        try:
            record = load_json_object(path)
        except FileNotFoundError:
            return None
        return require(
            path,
            record,
            id=str,
            state=str,
            priority=int,
            images=int,
            batch_size=int,
            images_total=int,
            tickets_total=int,
            name=(str, type(None)),
        )

    def rebuild_state(self, request_id: str, reason: str, now: float) -> dict | None:
        """A damaged state.json goes to corrupt/ and is made again from request.yaml (its
        state is re-derived from the tickets on the next tick). A request whose request.yaml
        is damaged too goes to corrupt/ whole. Returns the new state, or None."""
        self.quarantine(self.layout.request_state(request_id), reason, now)
        try:
            request = self.read_request(request_id)
        except FileNotFoundError:
            return None
        except CorruptRecord as e:
            self.quarantine(self.layout.request_dir(request_id), f"request.yaml and state.json damaged: {e}", now)
            return None
        state = self.initial_state(request_id, request, "rebuilt", now)
        self.write_state(request_id, state)
        return state

    def write_state(self, request_id: str, state: dict) -> None:
        self.write(self.layout.request_state(request_id), json.dumps(state, indent=1).encode())

    def is_cancelled(self, request_id: str) -> bool:
        return self.layout.cancel_marker(request_id).exists()

    def cancel(self, request_id: str, now: float, before_acceptance: bool = False) -> None:
        """`sdgen cancel`: the cancel marker. Before acceptance the request folder is made
        for it: the marker waits there and the daemon honours it when it accepts the request."""
        if before_acceptance:
            self.layout.request_dir(request_id).mkdir(parents=True, exist_ok=True)
        self.write(self.layout.cancel_marker(request_id), json.dumps({"at": now}).encode())

    def write_mlflow_record(self, request_id: str, record: dict) -> None:
        """The tracker's record of a request's parent run (requests/<id>/mlflow.json)."""
        self.write(self.layout.mlflow_record(request_id), json.dumps(record).encode())

    # -- events (what happened to each attempt, for tracking) ----------------------------------
    def worker_count(self) -> int:
        """Workers the daemon has (running or coming, by spool/launcher.json); 1 when it does
        not say (no daemon, or an older one)."""
        try:
            workers = load_json_object(self.layout.launcher_status).get("workers") or {}
            return max(1, sum(int(n) for n in workers.values()))
        except (OSError, ValueError, TypeError, AttributeError, CorruptRecord):
            return 1

    def record_event(self, event: dict) -> None:
        """Publish one attempt's outcome for the tracker; it deletes the file once logged."""
        name = f"{time.time_ns():020d}-{event['request_id']}-{secrets.token_hex(3)}.json"
        self.write(self.layout.event(name), json.dumps(event).encode())

    publish_event = record_event

    def rewrite_event(self, name: str, event: dict) -> None:
        """The tracker writes a child run's id back into its event before logging into it."""
        self.write(self.layout.event(name), json.dumps(event).encode())

    def remove_event(self, name: str) -> bool:
        """An event logged (or drained with tracking off) is deleted. unlink never follows a
        symlink; a folder named like an event is left to a person (False)."""
        try:
            os.unlink(self.layout.event(name))
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            return False
        return True

    def set_aside_event(self, name: str) -> None:
        """An event that can never be logged, renamed to <name>.corrupt (when there is no
        quarantine to move it to)."""
        path = self.layout.event(name)
        try:
            os.rename(path, path.with_name(path.name[: -len(".json")] + ".corrupt"))
        except FileNotFoundError:
            pass

    # -- status and bookkeeping files ---------------------------------------------------------
    def write_tracking_status(self, status: dict) -> None:
        """spool/tracking.json: the tracker's health (daemon)."""
        self.write(self.layout.tracking_status, json.dumps(status).encode())

    def write_intake_status(self, stuck: dict) -> None:
        """spool/intake.json: inbox entries that can be neither accepted nor rejected."""
        self.write(self.layout.intake_status, json.dumps({"stuck": stuck}).encode())

    def write_launcher_status(self, status: dict) -> None:
        """spool/launcher.json: workers by state, and why launching stopped (daemon)."""
        self.write(self.layout.launcher_status, json.dumps(status).encode())

    def write_daemon_info(self, info: dict) -> None:
        """spool/daemon.json: who holds daemon.lock (written once the lock is taken)."""
        self.write(self.layout.daemon_info, json.dumps(info).encode())

    def save_jobs(self, launcher: str, data: bytes) -> None:
        """spool/<launcher>-jobs.json: the workers a launcher started and has not reaped,
        saved before each submission (a crash right after it cannot lose a job)."""
        self.write(self.layout.jobs_file(launcher), data)

    def sweep_tmp(self, now: float, older_than: float) -> int:
        """Remove staging files in spool/tmp/ older than `older_than` seconds (left by writers
        that died mid-write). Returns how many."""
        swept = 0
        for entry in os.scandir(self.layout.tmp):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                    os.unlink(entry.path)
                    swept += 1
            except FileNotFoundError:
                pass
        return swept

    def event_names(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.layout.events) if e.endswith(".json"))
        except FileNotFoundError:
            return []

    def ticket_counts(self, junk: list[tuple[str, str]] | None = None) -> dict[str, dict[str, list[int]]]:
        """request id -> state -> ticket indexes, from one listing of each ticket folder.
        A ticket caught in two folders (mid-move) counts once, in the state that wins.
        Names that cannot be tickets are added to `junk` as (state, name)."""
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
                elif junk is not None:
                    junk.append((state, name))
        return counts
