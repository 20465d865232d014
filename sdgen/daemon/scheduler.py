"""One scheduling step, `Scheduler.tick(now)`: intake, cancels, reaping, request states,
launches. The service calls it in a loop; tests call it directly with a chosen `now`."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable

from sdgen import defaults
from sdgen.daemon.policy import StartupGuard, foldable_done, lease_expired, workers_wanted
from sdgen.exceptions import RequestError
from sdgen.launchers.base import ExitedWorker, Launcher
from sdgen.spool.claim import Lease, pid_alive
from sdgen.spool.intake import file_owner, is_candidate, read_request_file
from sdgen.spool.layout import REQUEST_ID, parse_ticket_name, ticket_name
from sdgen.spool.progress import request_state
from sdgen.spool.records import CorruptRecord, one_line, read_bytes
from sdgen.spool.request import Request, request_digest
from sdgen.spool.states import REQUEST_TERMINAL, RequestState, TicketState
from sdgen.spool.store import REPRIORITIZED, SplitProgress, Spool, StuckEntry
from sdgen.spool.ticket import after_death, attempt_event, due_at
from sdgen.textsafe import printable


def printable_lines(text: str) -> str:
    """A traceback for the log: line by line inert (it quotes file contents)."""
    return "\n".join(printable(line) for line in text.splitlines())


log = logging.getLogger(__name__)

TERMINAL = REQUEST_TERMINAL

# Errors that concern the whole spool (the disk), not one file: the tick stops and the
# service retries it; any other error stays inside the step that met it.
SPOOL_WIDE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


@dataclass
class TickReport:
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    pending: int = 0
    running: int = 0
    deferred: int = 0
    waiting_files: int = 0
    splitting: int = 0  # accepted requests whose tickets are still being written
    open_requests: int = 0  # accepted requests not yet done, failed or cancelled
    wake_in: float | None = None  # the next moment a tick has something to do

    @property
    def idle(self) -> bool:
        # Ticket listings race with workers moving tickets; a request's state is derived
        # from all its tickets at once, and a ticket caught mid-move keeps it open.
        return not (
            self.pending or self.running or self.deferred or self.waiting_files or self.splitting or self.open_requests
        )


def inbox_file_in_use(path) -> bool:
    """Whether a process of this host holds the file open for writing: a read lease is
    refused then (fcntl F_SETLEASE). False where leases are not supported (NFS, another
    owner without CAP_LEASE): the quiet-time rule alone decides there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EBUSY)
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        launcher: Launcher | None,
        lease_timeout: float = defaults.LEASE_TIMEOUT_SECONDS,
        settle: float = defaults.INBOX_SETTLE_SECONDS,
        budget: float = defaults.INTAKE_BUDGET_SECONDS,
        split_window: int = defaults.SPLIT_WINDOW_TICKETS,
        fold_after: float = defaults.FOLD_AFTER_SECONDS,
        on_request_end: Callable[[str, dict, dict], None] | None = None,
    ):
        self.spool = spool
        # Called with (request id, state.json as just written, its tickets by state) when a
        # request's end is recorded; set, ends are also recorded as owed (daemon/notify.py).
        self.on_request_end = on_request_end
        self.launcher = launcher
        self.lease_timeout = lease_timeout
        self.settle = settle
        self.budget = budget
        self.split_window = split_window
        self.fold_after = fold_after
        self._done_seen: dict[str, float] = {}  # done/ name -> first seen (monotonic)
        self.launching = True
        self.host = socket.gethostname()
        self._leases: dict[str, tuple[bytes | None, float]] = {}
        self._meta: dict[str, dict] = {}
        self._splitting: dict[str, Request] = {}  # accepted, tickets still being written
        self._pending_of: dict[str, int] | None = None  # request id -> pending tickets, last listing
        self._inbox_seen: dict[str, tuple[tuple, float]] = {}  # name -> (signature, first seen)
        self._stuck: dict[str, tuple[str, float]] = {}  # inbox name -> (reason, when last tried)
        self._stuck_written: dict | None = None
        self._phase_errors: dict[str, str] = {}
        self.startup = StartupGuard()  # start-up crash streak, backoff, "blocked" (policy.py)
        self._summary_written: dict | None = None
        self.busy_workers: set[str] = set()

    # -- the step ---------------------------------------------------------------------------
    def tick(self, now: float, mono: float | None = None) -> TickReport:
        """One step. `now` is the wall clock (stamps, deferrals); `mono` a monotonic clock
        for lease ages, so that a step of the wall clock (NTP, VM resume) expires nothing."""
        mono = time.monotonic() if mono is None else mono
        report = TickReport()
        # Each phase on its own: damage that one phase meets (and has not learnt to move
        # aside yet) is logged once and cannot stop the others, nor the daemon.
        self._phase("intake", self.intake, now, report)
        exited = self._phase("reap launcher", self.launcher.reap, now) if self.launcher else []
        self._phase("note exits", self._note_exits, exited or [], now)
        self._phase("reap", self.reap, now, {w.worker_id: w.returncode for w in exited or []}, report, mono)
        self._phase("release deferred", self.release_deferred, now, report)
        junk: list[tuple[str, str]] = []
        counts = self.spool.ticket_counts(junk)
        self._pending_of = {rid: len(t.get(TicketState.PENDING, ())) for rid, t in counts.items()}
        for state, name in junk:
            self._phase(
                "junk ticket",
                self.spool.quarantine,
                self.spool.layout.ticket(state, name),
                "not a ticket name (<4 digits>.<6 digits>.<request id>)",
                now,
            )
        self._phase("priorities", self.apply_priorities, counts)
        self._phase("cancels", self.apply_cancels, counts, now)
        self._phase("fold done", self.fold_done, counts, mono)
        report.open_requests = self._phase("requests", self.update_requests, counts, now) or 0
        self._phase("launch", self.launch, now, report, counts)
        if self.launcher and self.launcher.summary() != self._summary_written:
            self._phase("launcher status", self.write_launcher_status, now)
        return report

    def fold_done(self, counts: dict, mono: float) -> None:
        """Fold done-markers that have been in done/ for `fold_after` seconds into their
        requests' ledgers (docs/spool.md, "Folding done tickets"): done/, listed every tick,
        then holds recent work only, and a finished image costs a ledger line, not a file."""
        names = self.spool.ticket_names(TicketState.DONE)
        present = set(names)
        for name in names:
            self._done_seen.setdefault(name, mono)
        for gone in [n for n in self._done_seen if n not in present]:
            del self._done_seen[gone]
        if self.fold_after < 0:
            return  # folding off
        active = {
            rid: {i for s in (TicketState.PENDING, TicketState.DEFERRED, TicketState.RUNNING) for i in t.get(s, ())}
            for rid, t in counts.items()
        }
        try:
            leased = {e[:-5] for e in os.listdir(self.spool.layout.leases) if e.endswith(".json")}
        except FileNotFoundError:
            leased = set()
        plan = foldable_done(self._done_seen, mono, self.fold_after, active, leased, defaults.FOLD_MOST_PER_TICK)
        for rid, batch in plan.items():
            if parse_ticket_name(batch[0]) is None or not REQUEST_ID.match(rid):
                continue
            self.spool.fold_done(rid, batch)
            for name in batch:
                self._done_seen.pop(name, None)

    def settle_at_shutdown(self, now: float, exited: list[ExitedWorker]) -> None:
        """The daemon's last step, once its launcher has stopped the workers (`exited`): the
        tickets of workers that had to be killed go back now, not after a lease timeout, and
        every request's state is brought up to date. Each through its isolated phase, as in
        a tick: damage met now is logged, and must not turn a clean stop into a failed exit."""
        exit_codes = {w.worker_id: w.returncode for w in exited}
        self._phase("reap", self.reap, now, exit_codes, TickReport(), None, True)  # by us: hand-backs, not deaths
        counts = self.spool.ticket_counts()
        self._phase("requests", self.update_requests, counts, now)

    def _phase(self, name: str, step, *args):
        try:
            result = step(*args)
        except OSError as e:
            if e.errno in SPOOL_WIDE_ERRORS:
                raise  # a full or failing disk: the service's loop says so once and retries
            return self._phase_failed(name, e)
        except Exception as e:  # noqa: BLE001 - the daemon must not die of data (docs/spool.md)
            return self._phase_failed(name, e)
        if name in self._phase_errors:
            log.warning("tick step %r works again", name)
            del self._phase_errors[name]
        return result

    def _phase_failed(self, name: str, e: BaseException) -> None:
        message = f"{type(e).__name__}: {one_line(str(e), 300)}"
        if self._phase_errors.get(name) != message:
            log.error(
                "tick step %r failed (%s); the other steps go on, and this one is retried every tick\n%s",
                name,
                printable(message),
                printable_lines(traceback.format_exc(limit=5)),
            )
            self._phase_errors[name] = message
        return None

    # -- intake -----------------------------------------------------------------------------
    def intake(self, now: float, report: TickReport) -> None:
        """Take inbox files and write tickets of accepted requests, for at most `budget`
        seconds: a request of 100,000 tickets is split across ticks (its first tickets are
        claimable at once) while signals, cancels, reaping and launches go on between."""
        layout = self.spool.layout
        deadline = time.monotonic() + self.budget
        # Files taken from the inbox whose tickets are not all written yet: this daemon's own
        # splits in progress, or a previous daemon's, found at start-up.
        for entry in sorted(os.listdir(layout.incoming)):
            request_id = entry[:-5]
            if not (entry.endswith(".yaml") and REQUEST_ID.match(request_id)):
                self.spool.quarantine(layout.incoming / entry, "not an incoming request file", now)
                continue
            if time.monotonic() >= deadline:
                report.splitting += 1
                report.wake_in = 0.0
                continue
            self._accept(layout.incoming / entry, request_id, now, report, deadline)
        self._write_stuck(now)
        for entry in sorted(os.listdir(layout.inbox)):
            if not is_candidate(entry):
                continue
            if time.monotonic() >= deadline:
                report.waiting_files += 1
                report.wake_in = 0.0
                continue
            stuck = self._stuck.get(entry)
            if stuck and now - stuck[1] < defaults.STUCK_RETRY_SECONDS:
                continue  # reported once; tried again every minute in case someone fixed it
            path = layout.inbox / entry
            try:
                if not self._is_quiet(path, entry, now, report):
                    continue
                try:
                    dropped = read_request_file(path)
                    if dropped.id and self._repeats_a_request(path, entry, dropped):
                        continue
                except RequestError as e:
                    self.spool.reject(path, str(e), now)
                    report.rejected.append(entry)
                    continue
                request_id = self.spool.claim_inbox_file(path, now)
                if request_id and dropped.id and not self._record_client_id(path, request_id, dropped, now, report):
                    request_id = None  # another file of that id got there first
            except StuckEntry as e:
                if entry not in self._stuck:
                    log.error("inbox file %s is stuck: %s", printable(entry, 120), printable(e.reason))
                self._stuck[entry] = (e.reason, now)
                continue
            self._stuck.pop(entry, None)
            self._inbox_seen.pop(entry, None)
            if request_id:
                self._accept(layout.incoming / f"{request_id}.yaml", request_id, now, report, deadline)
        present = set(os.listdir(layout.inbox))
        for gone in [n for n in self._stuck if n not in present]:
            del self._stuck[gone]
        for gone in [n for n in self._inbox_seen if n not in present]:
            del self._inbox_seen[gone]
        self._write_stuck(now)

    def _repeats_a_request(self, path, entry: str, dropped) -> bool:
        """Idempotent submit (docs/spool.md): a dropped file whose `id` is an earlier
        request's. The same content again is a no-op (the file is removed, logged); other
        content raises RequestError (rejected with the reason). A file `sdgen submit`
        published under the id's recorded request id is that request itself."""
        known = self.spool.lookup_client_id(dropped.id)
        if known is None or known["request_id"] == entry.rsplit(".", 1)[0]:
            return False
        if known["digest"] != request_digest(dropped):
            raise RequestError(
                f"id {dropped.id!r} is request {known['request_id']}, submitted with other content: "
                "give this request another id"
            )
        self.spool.discard_duplicate(path)
        log.info(
            "inbox file %s repeats request %s (same id and content): nothing to do",
            printable(entry, 120),
            known["request_id"],
        )
        return True

    def _record_client_id(self, path, request_id: str, dropped, now: float, report: TickReport) -> bool:
        """A dropped file's `id` is recorded as its request's (link: a `sdgen submit` of the
        same id at this moment either got there first, and this file yields, or finds it)."""
        known = self.spool.record_client_id(dropped.id, request_id, request_digest(dropped))
        if known is None or known["request_id"] == request_id:
            return True
        incoming = self.spool.layout.incoming / f"{request_id}.yaml"
        same = known["digest"] == request_digest(dropped)
        self.spool.reject(
            incoming,
            f"id {dropped.id!r} is request {known['request_id']}"
            + (
                " already (same content): nothing to do"
                if same
                else ", submitted with other content: give this request another id"
            ),
            now,
        )
        report.rejected.append(path.name)
        return False

    def _is_quiet(self, path, entry: str, now: float, report: TickReport) -> bool:
        """The quiet-file rule (docs/spool.md): nobody on this host has it open for writing,
        and its size and mtime have not changed for `settle` seconds, by its mtime or, when
        that cannot be trusted (another host's clock), by what this daemon has seen."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        mono = time.monotonic()
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._inbox_seen.get(entry)
        if seen is None or seen[0] != signature:
            self._inbox_seen[entry] = seen = (signature, mono)
        age = now - st.st_mtime
        quiet = self.settle <= 0 or age >= self.settle or mono - seen[1] >= self.settle
        if quiet and os.path.isfile(path) and not os.path.islink(path) and inbox_file_in_use(path):
            quiet = False
        if not quiet:
            report.waiting_files += 1
            wait = max(0.05, self.settle - max(age, mono - seen[1], 0.0))
            report.wake_in = min(report.wake_in if report.wake_in is not None else wait, wait)
        return quiet

    def _write_stuck(self, now: float) -> None:
        """spool/intake.json: inbox entries that can be neither accepted nor rejected, for
        `sdgen status` (written when the set changes)."""
        stuck = {name: reason for name, (reason, _) in self._stuck.items()}
        if stuck != self._stuck_written:
            self.spool.write_intake_status(stuck)
            self._stuck_written = stuck

    def _accept(self, path, request_id: str, now: float, report: TickReport, deadline: float) -> None:
        request = self._splitting.get(request_id)
        if request is None:
            try:
                request = read_request_file(path, check_name=False)
                # Acceptance expands templates from the fixed seed (batch/templates.py): a
                # wildcard file changed since the check, or a random expansion past a limit,
                # is a reason too, before anything of the request is written.
                request = self.spool.begin_accept(request_id, request, source=path.name, now=now, user=file_owner(path))
                # a `sdgen priority` given while it was being split (before a restart)
                priority = self.spool.priority_of(request_id, request.priority)
                if priority != request.priority:
                    request = dataclasses.replace(request, priority=priority)
            except RequestError as e:
                try:
                    self.spool.reject(path, str(e), now)
                except StuckEntry as stuck:
                    log.error("incoming file %s is stuck: %s", printable(path.name), printable(stuck.reason))
                report.rejected.append(path.name)
                return
            self._splitting[request_id] = request
            log.info(
                "accepted request %s: %d image(s)%s",
                request_id,
                request.images_total,
                f" ({printable(request.name, 80)})" if request.name else "",
            )
            report.accepted.append(request_id)
        progress = self.spool.continue_split(request_id, request, deadline, room=self._split_room(request_id))
        if progress == SplitProgress.ALL_OUT:
            del self._splitting[request_id]
            return
        report.splitting += 1
        if progress == SplitProgress.BUDGET_SPENT:
            report.wake_in = 0.0  # more to write now: the next tick comes at once

    def _split_room(self, request_id: str) -> int:
        """How many more tickets of a request being split may be written now: the split
        window less its tickets already pending (by the last listing, so a refill lags a
        tick: harmless, the window is far larger than a tick's claims)."""
        if self._pending_of is None:
            self._pending_of = {}
            for name in self.spool.ticket_names(TicketState.PENDING):
                parsed = parse_ticket_name(name)
                if parsed:
                    self._pending_of[parsed[2]] = self._pending_of.get(parsed[2], 0) + 1
        return self.split_window - self._pending_of.get(request_id, 0)

    # -- leases -----------------------------------------------------------------------------
    def reap(
        self,
        now: float,
        exited: dict[str, int | None],
        report: TickReport,
        mono: float | None = None,
        stopped: bool = False,
    ) -> None:
        """Give back tickets whose worker is gone: at once when we know it died (our own
        process exited, or its pid is gone on this host), else when its lease has not
        changed for `lease_timeout` seconds of our own monotonic clock. `stopped`: the
        workers in `exited` were stopped by this daemon (its shutdown had to kill them, e.g.
        mid model build): their tickets go back as a hand-back, not as a death."""
        mono = time.monotonic() if mono is None else mono
        layout = self.spool.layout
        running = self.spool.ticket_names(TicketState.RUNNING)
        report.running = len(running)
        self.busy_workers: set[str] = set()
        for name in list(self._leases):
            if name not in running:
                del self._leases[name]
        for name in running:
            try:
                raw = read_bytes(layout.lease(name))
            except FileNotFoundError:
                raw = None
            except CorruptRecord as e:
                self.spool.quarantine(layout.lease(name), e.reason, now)
                raw = None
            lease = Lease.parse(raw) if raw else None
            if raw and lease is None:
                self.spool.quarantine(
                    layout.lease(name), "not a lease (JSON object of worker, host, pid, claimed_at, beat)", now
                )
                raw = None
            if lease:
                self.busy_workers.add(lease.worker)
            if lease and lease.worker in exited:
                self._reclaim(
                    name,
                    f"worker {lease.worker} exited with code {exited[lease.worker]}",
                    lease.worker,
                    now,
                    report,
                    death=not stopped,
                )
                continue
            if lease and lease.host == self.host and not pid_alive(lease.pid):
                self._reclaim(name, f"worker {lease.worker} (pid {lease.pid}) is gone", lease.worker, now, report)
                continue
            seen = self._leases.get(name)
            if seen is None or seen[0] != raw:
                self._leases[name] = (raw, mono)
            elif lease_expired(seen[1], mono, self.lease_timeout):
                who = lease.worker if lease else "unknown worker"
                self._reclaim(
                    name, f"lease of {who} expired (no heartbeat for {mono - seen[1]:.0f}s)", who, now, report
                )

    def _reclaim(self, name: str, detail: str, worker: str, now: float, report: TickReport, death: bool = True) -> None:
        layout = self.spool.layout
        self._leases.pop(name, None)
        try:
            ticket = self.spool.read_ticket(TicketState.RUNNING, name)
        except FileNotFoundError:
            return  # finished or handed back meanwhile
        except CorruptRecord as e:
            self.spool.release_lease(name)
            self.spool.quarantine(layout.ticket(TicketState.RUNNING, name), e.reason, now)
            return
        lease = Lease.read(layout.lease(name))
        if not death:
            # Our own stop: the ticket goes back unchanged, as a worker's hand-back would
            # (not an attempt, no event); a user's Ctrl-C must never poison a ticket.
            if self.spool.reclaim(name, TicketState.PENDING, ticket):
                log.info("ticket %s: handed back for its stopped worker %s", name, worker)
            report.reclaimed.append(name)
            return
        state, updated = after_death(ticket, detail, worker, now)
        # Spool.reclaim removes the lease before the ticket leaves running/ (the rule lives there).
        if self.spool.reclaim(name, state, updated):
            log.warning("ticket %s: %s; now %s", name, printable(detail), state)
            self.spool.record_event(
                attempt_event(
                    ticket,
                    "KILLED",
                    worker,
                    lease.host if lease else "",
                    lease.claimed_at if lease else now,
                    now,
                    error=detail,
                )
            )
        report.reclaimed.append(name)
        report.running = max(0, report.running - 1)

    def release_deferred(self, now: float, report: TickReport) -> None:
        for name in self.spool.ticket_names(TicketState.DEFERRED):
            try:
                ticket = self.spool.read_ticket(TicketState.DEFERRED, name)
            except FileNotFoundError:
                continue
            except CorruptRecord as e:
                self.spool.quarantine(self.spool.layout.ticket(TicketState.DEFERRED, name), e.reason, now)
                continue
            due = due_at(ticket, now)
            if due <= now:
                self.spool.undefer(name)
                continue
            if not ticket.not_before:
                # only the daemon writes deferred tickets once they are there
                self.spool.stamp_due(name, replace(ticket, not_before=due))
            report.deferred += 1
            report.wake_in = due - now if report.wake_in is None else min(report.wake_in, due - now)

    # -- requests ---------------------------------------------------------------------------
    def _meta_of(self, request_id: str) -> dict | None:
        if request_id not in self._meta:
            try:
                meta = self.spool.read_state(request_id)
            except CorruptRecord as e:
                meta = self.spool.rebuild_state(request_id, e.reason, time.time())
            if meta is None:
                return None
            self._meta[request_id] = meta
        return self._meta[request_id]

    def apply_priorities(self, counts: dict) -> None:
        """`sdgen priority` renamed the waiting tickets at once; tickets that came back
        under the old name since (a hand-back, an undeferral, a reclaim) are renamed here, a
        request being split writes its next tickets at the new priority, and state.json
        records it."""
        listed: dict | None = None
        for request_id, tickets in counts.items():
            if not any(tickets.get(s) for s in REPRIORITIZED):
                continue  # nothing it could rename (finished requests cost no stat)
            meta = self._meta_of(request_id)
            if meta is None or not self.spool.layout.priority_marker(request_id).exists():
                continue
            priority = self.spool.priority_of(request_id, meta.get("priority", 0))
            if meta.get("priority") != priority:
                meta = dict(meta, priority=priority)
                self.spool.write_state(request_id, meta)
                self._meta[request_id] = meta
            if request_id in self._splitting:
                self._splitting[request_id] = dataclasses.replace(self._splitting[request_id], priority=priority)
            if listed is None:  # one listing per tick, only when some request was reprioritized
                listed = {s: self.spool.ticket_names(s) for s in REPRIORITIZED}
            self.spool.reprioritize(request_id, priority, listed)

    def apply_cancels(self, counts: dict, now: float) -> None:
        for request_id, tickets in counts.items():
            if not (tickets.get(TicketState.PENDING) or tickets.get(TicketState.DEFERRED)):
                continue
            if not self.spool.is_cancelled(request_id):
                continue
            meta = self._meta_of(request_id) or {}
            for state in (TicketState.PENDING, TicketState.DEFERRED):
                for index in tickets.get(state, []):
                    name = ticket_name(meta.get("priority", 0), index, request_id)
                    if self.spool.cancel_ticket(name, state):
                        tickets.setdefault(TicketState.CANCELLED, []).append(index)
                tickets[state] = []

    def update_requests(self, counts: dict, now: float) -> int:
        """Record every request's derived state; returns how many are still open."""
        still_open = 0
        junk: list = []
        for request_id in self.spool.request_ids(junk):
            try:
                still_open += self._update_request(request_id, counts, now)
            except (CorruptRecord, OSError) as e:
                if isinstance(e, OSError) and e.errno in SPOOL_WIDE_ERRORS:
                    raise
                # One request's damage (state.json turned into a folder, a file where its
                # folder should be) is moved aside; the other requests go on.
                still_open += 1
                self._meta.pop(request_id, None)
                path = self.spool.layout.request_state(request_id)
                if os.path.lexists(path) and not (os.path.isfile(path) and not os.path.islink(path)):
                    self.spool.rebuild_state(request_id, "state.json is not a file", now)
                else:
                    self._phase_failed(f"request {request_id}", e)
        for path in junk:
            self.spool.quarantine(path, "not a request folder (spool/requests/ holds one folder per request id)", now)
        return still_open

    def _update_request(self, request_id: str, counts: dict, now: float) -> int:
        """Record one request's derived state; 1 if it is still open."""
        meta = self._meta_of(request_id)
        if meta is None:
            return 0
        cancelled = self.spool.is_cancelled(request_id)
        if meta.get("state") in TERMINAL and not (meta["state"] == RequestState.FAILED or cancelled):
            return 0
        tickets = counts.get(request_id, {})
        state = request_state(tickets, meta.get("tickets_total", 0), cancelled, self.spool.is_paused(request_id))
        still_open = int(state not in TERMINAL)
        if state == meta.get("state"):
            return still_open
        meta = dict(meta, state=state)
        meta.pop("notify", None)  # an earlier end's delivery record: not this state's
        if state in TERMINAL:
            meta["finished_at"] = now
            if self.on_request_end is not None:
                # Owed, in the same write as the end: a crash before delivery cannot lose it.
                meta["notify"] = "pending"
        if state == RequestState.FAILED:
            meta["reason"] = self._failure_reason(request_id, meta, tickets)
        else:
            meta.pop("reason", None)
        self.spool.write_state(request_id, meta)
        log.info("request %s: %s -> %s", request_id, self._meta[request_id].get("state"), state)
        self._meta[request_id] = meta
        if state in TERMINAL and self.on_request_end is not None:
            self.on_request_end(request_id, meta, tickets)
        return still_open

    def _failure_reason(self, request_id: str, meta: dict, tickets: dict) -> str:
        for state in (TicketState.FAILED, TicketState.HELD):
            for index in tickets.get(state, []):
                name = ticket_name(meta.get("priority", 0), index, request_id)
                try:
                    reason = self.spool.read_ticket(state, name).reason
                except (OSError, CorruptRecord):
                    continue
                n = len(tickets.get(TicketState.FAILED, [])) + len(tickets.get(TicketState.HELD, []))
                return f"{n} ticket(s) failed or held; first: {reason}"
        return "tickets failed"

    # -- workers ----------------------------------------------------------------------------
    @property
    def blocked(self) -> str | None:
        """Why no more workers are launched, or None."""
        return self.startup.blocked

    def _note_exits(self, exited, now: float) -> None:
        for w in exited:
            verdict = self.startup.note_exit(w.worker_id, w.returncode, w.ran_seconds, w.detail, now)
            if not verdict.crashed:
                continue
            how = w.detail or f"exited with code {w.returncode}"
            self._record_worker_failure(w, how, now)
            if verdict.blocked:
                log.error("no more workers will be launched: %s", printable(verdict.blocked))
                self.write_launcher_status(now)
                continue
            log.error(
                "worker %s %s after %.1fs (see logs/worker-%s.log); next launch in %.0fs",
                w.worker_id,
                printable(how),
                w.ran_seconds,
                w.worker_id,
                verdict.delay,
            )

    def _record_worker_failure(self, w, how: str, now: float) -> None:
        """A worker that failed at start-up held no ticket, so no attempt records it: tell the
        tracker, once per request it was launched for, so its output reaches MLflow."""
        for request_id, meta in self._meta.items():
            if meta.get("state") in (RequestState.PENDING, RequestState.RUNNING):
                self.spool.record_event(
                    {
                        "kind": "worker-failed",
                        "request_id": request_id,
                        "worker": w.worker_id,
                        "error": f"{how} after {w.ran_seconds:.0f}s",
                        "ended_at": now,
                    }
                )

    def write_launcher_status(self, now: float) -> None:
        """spool/launcher.json, for `sdgen status`: why launching stopped, if it did, and what
        the workers are doing (written when that changes)."""
        name = self.launcher.name if self.launcher else ""
        self._summary_written = self.launcher.summary() if self.launcher else None
        self.spool.write_launcher_status(
            {
                "launcher": name,
                "blocked": self.blocked,
                "since": self.startup.blocked_since or now,
                "workers": self._summary_written,
            }
        )

    def launch(self, now: float, report: TickReport, counts: dict | None = None) -> None:
        """Start or trim workers for the claimable tickets: pending ones, from this tick's
        listing (`counts`), except those of paused requests."""
        if counts is None:
            counts = self.spool.ticket_counts(folded=False)
        report.pending = sum(
            len(t.get(TicketState.PENDING, ()))
            for rid, t in counts.items()
            if t.get(TicketState.PENDING) and not self.spool.is_paused(rid)
        )
        if not (self.launcher and self.launching) or not self.startup.may_launch(now):
            return
        wanted = workers_wanted(self.launcher.max_workers, report.pending, report.running)
        self.launcher.trim(now, self.busy_workers, wanted)
        for _ in range(wanted - len(self.launcher.running())):
            report.launched.append(self.launcher.launch(now))
