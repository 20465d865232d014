"""The spool on disk: every create, rename, rewrite and unlink under spool/ goes through a
`Spool` method named for its protocol step, with every path from `Layout` (docs/spool.md,
"Protocol steps"; tests/spool/test_one_writer.py keeps it so).

Ticket state changes are renames between the folders of spool/tickets/. A changed ticket
gets its new contents in place first (an atomic replace) and then moves with one rename, so
two copies never exist at once; two copies left by hand edits or older versions are
resolved by `reconcile`, by state precedence.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path

import yaml

from sdgen import defaults
from sdgen.exceptions import RequestError, SdgenError
from sdgen.spool.layout import REQUEST_ID, Layout, parse_ticket_name, ticket_name
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


# Folders whose tickets `sdgen priority` renames: waiting ones (the claim order) and ended
# ones that can be queued again (so their names follow the request's priority).
REPRIORITIZED = (
    TicketState.PENDING,
    TicketState.DEFERRED,
    TicketState.FAILED,
    TicketState.HELD,
    TicketState.CANCELLED,
)


class SplitProgress(str, enum.Enum):
    """Where `continue_split` stopped."""

    ALL_OUT = "all out"  # every ticket written; incoming file and cursor gone
    BUDGET_SPENT = "budget spent"  # the tick's intake time ran out: go on at once
    WINDOW_FULL = "window full"  # enough tickets wait; more when workers take them


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
        self._folded_cache: dict[str, tuple[tuple, frozenset[int]]] = {}
        self.layout = Layout(Path(root))

    # -- set-up -----------------------------------------------------------------------------
    def ensure(self) -> "Spool":
        for d in self.layout.all_dirs():
            d.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, target: Path, data: bytes) -> None:
        publish(self.layout.tmp, target, data)

    # -- submission -------------------------------------------------------------------------
    def submit(self, request: Request, now: float | None = None, request_id: str | None = None) -> str:
        """Publish a validated request into the inbox; the daemon accepts it from there.
        With `request_id` (an idempotent submit's recorded id) the file is published under
        that id at most once: a second call finds it there and does nothing."""
        data = yaml.safe_dump(request.to_dict(), sort_keys=False, allow_unicode=True).encode()
        # Dated back past the quiet-file rule: the file is complete when it appears.
        dated = time.time() - 2 * defaults.INBOX_SETTLE_SECONDS - 1
        if request_id is not None:
            link_new(self.layout.tmp, self.layout.inbox / f"{request_id}.yaml", data, mtime=dated)
            return request_id
        while True:
            request_id = new_request_id(now)
            # link, not rename: two submitters that drew the same id must not overwrite
            # each other; the loser simply draws again.
            if link_new(self.layout.tmp, self.layout.inbox / f"{request_id}.yaml", data, mtime=dated):
                return request_id

    # -- idempotent submit: the submitters' own ids (docs/spool.md, "Idempotent submit") ----
    def lookup_client_id(self, client_id: str) -> dict | None:
        """{request_id, digest} recorded for a submitter's id, or None (a damaged entry is
        moved aside and counts as none)."""
        path = self.layout.client_id_file(client_id)
        try:
            return require(path, load_json_object(path), request_id=str, digest=str)
        except FileNotFoundError:
            return None
        except CorruptRecord as e:
            self.quarantine(path, e.reason, time.time())
            return None

    def record_client_id(self, client_id: str, request_id: str, digest: str, replace: bool = False) -> dict | None:
        """Record that `client_id` is `request_id`: published with link, so of two submitters
        of one id exactly one records it. None when recorded; else the entry that was there
        first. `replace`: overwrite an entry whose request never arrived (a crash between
        recording and submitting)."""
        path = self.layout.client_id_file(client_id)
        data = json.dumps({"request_id": request_id, "digest": digest}).encode()
        if replace:
            self.write(path, data)
            return None
        if link_new(self.layout.tmp, path, data):
            return None
        return self.lookup_client_id(client_id) or {"request_id": request_id, "digest": digest}

    def request_exists(self, request_id: str) -> bool:
        """In the inbox, being accepted, accepted, or rejected: somewhere in the spool."""
        if self.layout.request_file(request_id).exists():
            return True
        if any((f / f"{request_id}.yaml").exists() for f in (self.layout.inbox, self.layout.incoming)):
            return True
        return any(self.layout.rejected.glob(f"*-{request_id}.yaml"))

    def discard_duplicate(self, path: Path) -> None:
        """Daemon: an inbox file that repeats an accepted request (same id, same content):
        an idempotent submit's no-op, so it is removed, not rejected."""
        path.unlink(missing_ok=True)

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

    def begin_accept(self, request_id: str, request: Request, source: str, now: float, user: str = "") -> Request:
        """First step of accepting incoming/<id>.yaml: the immutable request and its state
        (with `user`, its submitter, for the fair claim order). The tickets follow in slices
        (`continue_split`). Idempotent, so a daemon that died half-way simply runs it again
        for the same incoming file."""
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
            # Templates are expanded here, once, from the fixed seed (issue 18): request.yaml
            # records the expansions, so nothing after this needs the templates' library.
            from sdgen.batch.templates import expand_prompts, wildcards_dir

            request = expand_prompts(request.with_seed(), wildcards_dir(self.layout.root))
            rdir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(request.to_dict(), sort_keys=False, allow_unicode=True)
            self.write(rfile, text.encode())
        # state.json goes before the tickets, so that a reader who sees a ticket always
        # finds its request's totals; if it is already there, a crash interrupted us.
        if not self.layout.request_state(request_id).exists():
            self.write_state(request_id, self.initial_state(request_id, request, source, now, user))
        return request

    @staticmethod
    def initial_state(request_id: str, request: Request, source: str, now: float, user: str = "") -> dict:
        return {
            "id": request_id,
            "state": RequestState.PENDING,
            "source": source,
            "user": user,
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

    def continue_split(
        self, request_id: str, request: Request, deadline: float, room: int | None = None
    ) -> "SplitProgress":
        """Publish the request's next tickets until `deadline` (time.monotonic()) or until
        `room` more are out (None: no bound), whichever comes first. ALL_OUT once every
        ticket is out and the incoming file is gone.

        The daemon passes `room` = the split window less the request's pending tickets, so
        a request of 100,000 tickets keeps only a window of them on disk and writes more as
        workers take them: what waits costs a cursor, not a file per ticket (docs/spool.md).

        The cursor file names the slice being written before it is written, so a daemon
        killed mid-slice checks just that slice for tickets already out (and maybe claimed,
        or done) and never makes one twice."""
        total = ticket_count(request)
        cursor_path = self.layout.split_cursor(request_id)
        try:
            cursor = require(cursor_path, load_json_object(cursor_path), next=int, upto=int)
            start, upto = cursor["next"], cursor["upto"]
            if not 0 <= start <= upto <= total:
                # `next` past the end once made the split stop for good, its tickets never
                # written and the request "running" forever
                raise CorruptRecord(cursor_path, f"next {start}, upto {upto} outside 0 <= next <= upto <= {total}")
        except FileNotFoundError:
            start, upto = 0, total if self._any_ticket_of(request_id) else 0
        except CorruptRecord as e:
            self.quarantine(cursor_path, f"{e.reason}; every ticket is looked up again", time.time())
            start, upto = 0, total  # check every ticket: slow but exact
        start = max(0, min(start, total))
        if room is not None and room <= 0 and start < total and not self.is_cancelled(request_id):
            return SplitProgress.WINDOW_FULL
        limit = total if room is None else min(total, start + room)
        while start < limit and not self.is_cancelled(request_id):
            stop = min(limit, start + SPLIT_SLICE)
            self.write(cursor_path, json.dumps({"next": start, "upto": max(upto, stop)}).encode())
            for index in range(start, stop):
                # The deadline is looked at every ticket: on a busy disk one fsync can take
                # tens of milliseconds, and a slice must not hold the loop for seconds.
                if index > start and time.monotonic() >= deadline:
                    stop = index
                    break
                ticket = ticket_at(request_id, request, index)
                if index < upto and self._split_ticket_exists(ticket):
                    limit = min(total, limit + 1)  # found, not written: it takes no room
                    continue
                self.write(self.layout.ticket(TicketState.PENDING, ticket.name), ticket.to_json())
            upto = max(upto, stop)
            start = stop
            if start < total and (start >= limit or time.monotonic() >= deadline):
                # `upto` still names the slice as planned: tickets of it not written yet are
                # looked for first next time (none found: written then), which is exact.
                self.write(cursor_path, json.dumps({"next": start, "upto": upto}).encode())
                return SplitProgress.WINDOW_FULL if start >= limit else SplitProgress.BUDGET_SPENT
        (self.layout.incoming / f"{request_id}.yaml").unlink(missing_ok=True)
        cursor_path.unlink(missing_ok=True)
        return SplitProgress.ALL_OUT

    def _split_ticket_exists(self, ticket: Ticket) -> bool:
        """Is this ticket out already (a split interrupted mid-slice)? Under its name, or,
        once `sdgen priority` renamed tickets, under any priority."""
        if self.find_ticket(ticket.name, twice=True):
            return True
        if not self.layout.priority_marker(ticket.request_id).exists():
            return False
        suffix = f".{ticket.index:06d}.{ticket.request_id}"
        for states in (TICKET_STATES, tuple(reversed(TICKET_STATES))):  # twice, opposite orders
            if any(n.endswith(suffix) for s in states for n in self.ticket_names(s)):
                return True
        return False

    def unwritten_tickets(self, request_id: str, tickets_total: int) -> int:
        """Tickets of a request still only in its split cursor (not written yet): they
        count as pending. 0 once the split is over (no cursor file)."""
        path = self.layout.split_cursor(request_id)
        try:
            cursor = require(path, load_json_object(path), next=int, upto=int)
        except (FileNotFoundError, CorruptRecord):
            return 0
        return max(0, tickets_total - max(0, cursor["next"]))

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
            # The file name is the ticket's priority (`sdgen priority` renames tickets and
            # leaves their contents): only the request and index must agree.
            parsed = parse_ticket_name(name)
            if not parsed or (parsed[1], parsed[2]) != (ticket.index, ticket.request_id):
                raise CorruptRecord(path, f"holds ticket {ticket.name}, not {name}")
            ticket = dataclasses.replace(ticket, priority=parsed[0])
        return ticket

    def find_ticket(self, name: str, twice: bool = False) -> list[str]:
        """The folders holding ticket `name`. With `twice`, the folders are looked through
        two times: a ticket moved by a worker during one pass is seen in the other (a
        single move cannot hide it from both)."""
        found = [s for s in TICKET_STATES if self.layout.ticket(s, name).exists()]
        if twice and not found:
            found = [s for s in reversed(TICKET_STATES) if self.layout.ticket(s, name).exists()]
        if not found and self._folded_in_ledger(name):
            found = [TicketState.DONE]
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
        if self.is_done(name):
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
        if self.is_done(name):
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
        """Resolve tickets left in two folders (hand edits, older versions): the state of
        highest precedence wins. Returns a line per action taken, for the log.

        Workers of an earlier daemon may still be claiming while this runs, so the folder
        listings are not one snapshot: a claim (pending -> running) between the listing of
        pending/ and of running/ shows one ticket in both. Deleting its running copy lost
        the ticket (found by the soak's kill -9 trials over a 1M-ticket backlog, whose long
        pending/ listing widened the window). So a running copy is removed only beside a
        done-marker (final); any other pair with running/ is left to the lease (an expired
        lease moves the running copy back by a rename over the other), and a lower copy is
        removed only after its higher one is seen again."""
        seen: dict[str, str] = {}
        actions = []
        for state in PRECEDENCE:
            for name in self.ticket_names(state):
                if name in seen:
                    keep = seen[name]
                    if state == TicketState.RUNNING and keep != TicketState.DONE:
                        continue  # a claim racing the listings, or a stale copy: its lease decides
                    if not self.layout.ticket(keep, name).exists():
                        continue  # it moved on meanwhile: not two copies
                    self.layout.ticket(state, name).unlink(missing_ok=True)
                    actions.append(f"ticket {name}: in {keep} and {state}; kept {keep}")
                elif state not in (TicketState.DONE, TicketState.RUNNING) and self._folded_in_ledger(name):
                    self.layout.ticket(state, name).unlink(missing_ok=True)
                    actions.append(f"ticket {name}: folded as done and in {state}; kept done")
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

    # -- priority (`sdgen priority`) ----------------------------------------------------------
    def priority_of(self, request_id: str, default: int) -> int:
        """The request's priority: the last `sdgen priority`, else `default` (request.yaml's)."""
        path = self.layout.priority_marker(request_id)
        try:
            value = require(path, load_json_object(path), priority=int)["priority"]
        except (FileNotFoundError, NotADirectoryError, CorruptRecord):
            return default
        return max(-1000, min(1000, value))

    def set_priority(self, request_id: str, priority: int, now: float) -> int:
        """`sdgen priority`: record the new priority, then move the request's waiting tickets
        to their new names at once (`reprioritize`). Returns how many moved."""
        self._set_aside_if_odd(self.layout.priority_marker(request_id), now)
        self.write(self.layout.priority_marker(request_id), json.dumps({"priority": priority, "at": now}).encode())
        return self.reprioritize(request_id, priority)

    def reprioritize(self, request_id: str, priority: int, names: dict | None = None) -> int:
        """Rename the request's tickets outside running/ and done/ to `priority` (the claim
        order is the name order). Each is one rename: a worker claiming the old name at the
        same moment wins or loses it whole, so no ticket is lost or doubled. Running tickets
        keep their names until they leave running/ (the daemon renames them then).
        `names`: state -> names already listed (the daemon's tick), else listed here."""
        moved = 0
        for state in REPRIORITIZED:
            listed = names.get(state, []) if names is not None else self.ticket_names(state)
            for name in listed:
                parsed = parse_ticket_name(name)
                if not parsed or parsed[2] != request_id or parsed[0] == priority:
                    continue
                try:
                    os.rename(
                        self.layout.ticket(state, name),
                        self.layout.ticket(state, ticket_name(priority, parsed[1], request_id)),
                    )
                    moved += 1
                except FileNotFoundError:
                    pass  # claimed (or moved) meanwhile: it keeps its old name there
        return moved

    def _set_aside_if_odd(self, path: Path, now: float) -> bool:
        """A marker path holding a folder, a FIFO or a link (damage, or someone's doing)
        would make the command that replaces it fail on a staging file's name: it goes to
        corrupt/ first. True if it was set aside."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISREG(st.st_mode):
            return False
        return self.quarantine(path, "not a regular file; replaced", now) is not None

    def pause_marker_of(self, request_id: str) -> Path | None:
        """The marker that pauses this request (its own, else the whole queue's), or None."""
        for path in (self.layout.pause_marker(request_id), self.layout.pause_all_marker):
            if path.exists():
                return path
        return None

    def is_paused(self, request_id: str) -> bool:
        return self.pause_marker_of(request_id) is not None

    def pause_lets_tickets_finish(self, request_id: str) -> bool:
        """`sdgen pause --after-ticket`: running tickets finish the ticket, not just the image."""
        path = self.pause_marker_of(request_id)
        if path is None:
            return True
        try:
            return bool(load_json_object(path).get("after_ticket"))
        except (FileNotFoundError, CorruptRecord):
            return False

    def pause(self, request_id: str | None, now: float, after_ticket: bool = False) -> None:
        """`sdgen pause`: the marker of one request, or of the whole queue (None). Workers
        stop claiming its tickets and hand running ones back at the next image boundary
        (or at the end of the ticket with `after_ticket`)."""
        path = self.layout.pause_all_marker if request_id is None else self.layout.pause_marker(request_id)
        self._set_aside_if_odd(path, now)
        self.write(path, json.dumps({"at": now, "after_ticket": after_ticket}).encode())

    def resume(self, request_id: str | None) -> bool:
        """`sdgen resume`: remove one request's marker, or (None) the whole queue's and every
        request's. True if something was paused."""
        paths = [self.layout.pause_marker(request_id)] if request_id is not None else [self.layout.pause_all_marker]
        if request_id is None:
            paths += [self.layout.pause_marker(rid) for rid in self.request_ids()]
        was = False
        for path in paths:
            if os.path.lexists(path):
                was = True
                if not self._set_aside_if_odd(path, time.time()):
                    path.unlink(missing_ok=True)
        return was

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

    def write_notify_status(self, status: dict) -> None:
        """spool/notify.json: the notifier's health (daemon; never the webhook URL itself,
        which may carry a token: only scheme://host/...)."""
        self.write(self.layout.notify_status, json.dumps(status).encode())

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
                    if entry.is_dir(follow_symlinks=False):
                        # a request folder a prune moved here and did not finish removing
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    swept += 1
            except FileNotFoundError:
                pass
            except OSError as e:  # someone else's, read-only: never a reason to stop
                log.warning("cannot sweep spool/tmp/%s: %s", printable(entry.name, 80), e.strerror or e)
        return swept

    def event_names(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.layout.events) if e.endswith(".json"))
        except FileNotFoundError:
            return []

    def ticket_counts(
        self, junk: list[tuple[str, str]] | None = None, folded: bool = True
    ) -> dict[str, dict[str, list[int]]]:
        """request id -> state -> ticket indexes, from one listing of each ticket folder
        plus (with `folded`) the done tickets folded into each request's ledger. A ticket
        caught in two folders (mid-move) counts once, in the state that wins.
        Names that cannot be tickets are added to `junk` as (state, name)."""
        counts: dict[str, dict[str, list[int]]] = {}
        seen: set[tuple[str, int]] = set()
        if folded:
            for rid in self.request_ids():
                indexes = self.folded_indexes(rid)
                if indexes:
                    counts.setdefault(rid, {})[TicketState.DONE] = sorted(indexes)
                    seen.update((rid, i) for i in indexes)
        for state in PRECEDENCE:
            for name in self.ticket_names(state):
                parsed = parse_ticket_name(name)
                if not parsed:
                    if junk is not None:
                        junk.append((state, name))
                    continue
                _, index, rid = parsed
                if (rid, index) in seen:
                    continue
                seen.add((rid, index))
                counts.setdefault(rid, {}).setdefault(state, []).append(index)
        return counts

    # -- retention (`sdgen prune`) -----------------------------------------------------------
    def remove_request(self, request_id: str, outputs: bool = False) -> int:
        """Remove an ended request's spool records: its tickets in the ended folders (done,
        cancelled, failed, held), their leases and events, then its request folder (ledger,
        state, cursor, mlflow.json), and with `outputs` its images. Returns the bytes freed.
        The caller checks that it ended (`sdgen prune`); a ticket still pending, deferred or
        running is never touched here.

        The request folder is first renamed into spool/tmp/ (one rename): from then on a
        running daemon no longer sees the request, so it cannot derive it anew from its
        half-removed tickets and write a state.json back into a folder being removed (found
        by a prune beside a live daemon). A crash after that rename leaves the folder in
        tmp/, which the daemon's sweep removes, and tickets of a request no longer listed,
        which nothing reads."""
        if not REQUEST_ID.match(request_id):
            raise ValueError(f"not a request id: {request_id!r}")
        freed = 0
        try:
            client_id = self.read_request(request_id).id
        except (FileNotFoundError, CorruptRecord, RequestError):
            client_id = ""
        if client_id and (self.lookup_client_id(client_id) or {}).get("request_id") == request_id:
            self.layout.client_id_file(client_id).unlink(missing_ok=True)  # the id is free again

        def unlink(path: Path) -> None:
            nonlocal freed
            try:
                freed += os.lstat(path).st_blocks * 512
                path.unlink()
            except FileNotFoundError:
                pass

        folders = []
        aside = self.layout.tmp / f"removing-{request_id}-{secrets.token_hex(3)}"
        try:
            os.rename(self.layout.request_dir(request_id), aside)
            folders.append(aside)
        except FileNotFoundError:
            pass
        for state in (TicketState.DONE, TicketState.CANCELLED, TicketState.FAILED, TicketState.HELD):
            for name in self.ticket_names(state):
                if name.endswith("." + request_id):
                    unlink(self.layout.ticket(state, name))
                    unlink(self.layout.lease(name))
        for name in self.event_names():
            if f"-{request_id}-" in name:
                unlink(self.layout.events / name)
        if outputs:
            folders.insert(0, self.layout.output_dir(request_id))
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
                for name in filenames:
                    unlink(Path(dirpath) / name)
                for name in dirnames:
                    path = Path(dirpath) / name
                    if path.is_symlink():
                        unlink(path)
                    else:
                        path.rmdir()
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
        return freed

    # -- folding done-markers (docs/spool.md, "Folding done tickets") -----------------------
    def folded_indexes(self, request_id: str) -> frozenset[int]:
        """Ticket indexes of a request folded into its ledger (cached by the summary file's
        identity: a tick stats it instead of reading it)."""
        path = self.layout.folded(request_id)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return frozenset()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._folded_cache.get(request_id)
        if cached and cached[0] == key:
            return cached[1]
        try:
            ranges = require(path, load_json_object(path), ranges=list)["ranges"]
            indexes = _indexes_of(path, ranges, self._tickets_total(request_id))
        except CorruptRecord as e:
            # A damaged summary must not mark tickets done (claims drop a done ticket): it
            # is set aside and rebuilt from the ledger, which has every folded ticket.
            return self._rebuild_folded(request_id, e.reason)
        except FileNotFoundError:
            return frozenset()
        self._folded_cache[request_id] = (key, indexes)
        return indexes

    def _tickets_total(self, request_id: str) -> int:
        """The request's ticket count (state.json), else the most any request can have."""
        try:
            total = (self.read_state(request_id) or {}).get("tickets_total")
        except CorruptRecord:
            total = None
        return total if isinstance(total, int) and total > 0 else MAX_TICKETS

    def _rebuild_folded(self, request_id: str, reason: str) -> frozenset[int]:
        """Set a damaged or lying folded.json aside and write it again from the ledger."""
        path = self.layout.folded(request_id)
        self.quarantine(path, f"{reason}; written again from done.jsonl", time.time())
        total = self._tickets_total(request_id)
        indexes = frozenset(i for i in self._ledger_entries(request_id) if 0 <= i < total)
        self._folded_cache.pop(request_id, None)
        if indexes:
            self.write(path, json.dumps({"ranges": _ranges(sorted(indexes))}).encode())
        return indexes

    def _folded_in_ledger(self, name: str) -> bool:
        """Folded, and backed by the ledger: what a claim or reconcile trusts before it
        drops a copy of a ticket (a summary the ledger does not back is set aside)."""
        if not self._is_folded(name):
            return False
        _, index, request_id = parse_ticket_name(name)
        if index in self._ledger_entries(request_id):
            return True
        self._rebuild_folded(request_id, f"claims ticket {index} done, which done.jsonl does not hold")
        return False

    def _is_folded(self, name: str) -> bool:
        parsed = parse_ticket_name(name)
        return bool(parsed) and parsed[1] in self.folded_indexes(parsed[2])

    def is_done(self, name: str) -> bool:
        """Ticket `name` has its done-marker: in done/, or folded into its request's ledger."""
        # the ledger must back a folded one: every caller (claim, reclaim) drops a copy of a
        # done ticket, and a lying summary must never make one drop a ticket
        return self.layout.ticket(TicketState.DONE, name).exists() or self._folded_in_ledger(name)

    def fold_done(self, request_id: str, names: list[str]) -> int:
        """Daemon: fold done-markers of a request into requests/<id>/done.jsonl and remove
        them from done/, so that done/ (listed every tick) holds only recent work and a
        finished image costs a ledger line (~400 bytes) instead of a 4 KiB file.

        The caller passes only tickets with no other copy and no lease: nothing can bring
        them back (docs/spool.md). Order: ledger lines appended and fsynced, then the
        summary published, then the markers removed; a crash in between leaves a ticket in
        both places, and every reader counts it once."""
        lines, folded = [], []
        for name in names:
            parsed = parse_ticket_name(name)
            if not parsed or parsed[2] != request_id:
                continue
            try:
                marker = load_json_object(self.layout.ticket(TicketState.DONE, name))
            except FileNotFoundError:
                continue
            except CorruptRecord as e:
                self.quarantine(e.path, e.reason, time.time())
                continue
            lines.append(json.dumps(_ledger_line(name, marker), separators=(",", ":")) + "\n")
            folded.append(parsed[1])
        if not folded:
            return 0
        ledger = self.layout.done_ledger(request_id)
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, "".join(lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        indexes = sorted(self.folded_indexes(request_id) | set(folded))
        self.write(self.layout.folded(request_id), json.dumps({"ranges": _ranges(indexes)}).encode())
        for name in names:
            self.layout.ticket(TicketState.DONE, name).unlink(missing_ok=True)
        return len(folded)

    def _ledger_entries(self, request_id: str) -> dict[int, dict]:
        """index -> ledger line; a torn last line (a crash mid-append) is skipped."""
        out: dict[int, dict] = {}
        path = self.layout.done_ledger(request_id)
        try:
            raw = read_bytes(path, max_bytes=defaults.MAX_LEDGER_BYTES)
        except (FileNotFoundError, CorruptRecord):
            return out
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
                parsed = parse_ticket_name(entry["name"])
            except (ValueError, TypeError, KeyError):
                continue
            if parsed and parsed[2] == request_id:
                out.setdefault(parsed[1], entry)
        return out

    def done_markers(self, request_id: str) -> list[dict]:
        """Every done ticket's record of a request, folded or not, once each: dicts with at
        least `name` and `result` (outputs with file, sha256, indexes, seed)."""
        markers = {i: e for i, e in self._ledger_entries(request_id).items()}
        for name in self.ticket_names(TicketState.DONE):
            parsed = parse_ticket_name(name)
            if not parsed or parsed[2] != request_id or parsed[1] in markers:
                continue
            try:
                markers[parsed[1]] = dict(load_json_object(self.layout.ticket(TicketState.DONE, name)), name=name)
            except (FileNotFoundError, CorruptRecord):
                continue
        return [markers[i] for i in sorted(markers)]


# What a folded done-marker keeps: the outcome. The ticket's parameters are the request's
# (request.yaml) and are not repeated.
_LEDGER_FIELDS = ("attempt", "deaths", "attempts_before", "result")


def _ledger_line(name: str, marker: dict) -> dict:
    line = {"name": name}
    line.update((k, marker[k]) for k in _LEDGER_FIELDS if k in marker)
    if marker.get("history"):
        line["history"] = marker["history"]
    return line


def _ranges(indexes: list[int]) -> list[list[int]]:
    """Sorted indexes as half-open ranges: [0, 1, 2, 5] -> [[0, 3], [5, 6]]."""
    out: list[list[int]] = []
    for i in indexes:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


# The most tickets a request can have (a ticket holds at least one image).
MAX_TICKETS = 100_000


def _indexes_of(path: Path, ranges: list, total: int) -> frozenset[int]:
    """folded.json's ranges as indexes, or CorruptRecord: half-open [a, b) pairs of ints,
    sorted, within the request's tickets (a range of 10 million once marked a 600-ticket
    request done and dropped its pending tickets)."""
    out: set[int] = set()
    last = 0
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)):
            raise CorruptRecord(path, f"range {one_line(repr(r), 80)} is not a pair of integers")
        a, b = r
        if not (last <= a < b <= total):
            raise CorruptRecord(path, f"range [{a}, {b}) is out of order or outside the request's {total} tickets")
        out.update(range(a, b))
        last = b
    return frozenset(out)
