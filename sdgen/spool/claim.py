"""Claiming tickets, leases and finishing: the worker's side of the protocol.

A claim is the rename pending/N.json -> running/N.json: on one filesystem exactly one
renamer wins, on any host. A host-local file lock around listing and renaming keeps the
workers of one machine from all racing for the same first name. The lease (leases/N.json)
says who holds the ticket; its holder rewrites it every few seconds with a higher `beat`,
and the daemon reclaims the ticket when the lease stops changing by the daemon's own clock
(so clock skew between hosts cannot expire a live lease). The done-marker is published
with link(2), which fails if it exists: at most one marker per ticket, ever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from filelock import FileLock, Timeout

from sdgen import defaults
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.records import CorruptRecord, read_bytes
from sdgen.spool.states import TicketState
from sdgen.spool.store import Spool
from sdgen.spool.ticket import Ticket, after_failure, after_pause

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still exists: the proof that breaks a local lease early."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    worker: str
    host: str
    pid: int
    claimed_at: float
    beat: int = 0

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def read(cls, path: Path) -> "Lease | None":
        """The lease at `path`, or None when it is gone or damaged (a damaged lease is as
        good as none: the daemon reclaims its ticket when it stays unchanged)."""
        try:
            return cls.parse(read_bytes(path))
        except (FileNotFoundError, CorruptRecord):
            return None

    @classmethod
    def parse(cls, raw: bytes) -> "Lease | None":
        try:
            d = json.loads(raw)
            lease = cls(**d)
        except (ValueError, TypeError, RecursionError):
            return None
        ok = (
            isinstance(lease.worker, str)
            and isinstance(lease.host, str)
            and isinstance(lease.pid, int)
            and not isinstance(lease.pid, bool)
            and lease.pid > 0
            and isinstance(lease.claimed_at, (int, float))
            and isinstance(lease.beat, int)
        )
        return lease if ok else None


@dataclass
class Claim:
    """A ticket this worker holds, and everything it may do with it."""

    spool: Spool
    ticket: Ticket
    lease: Lease
    _lost: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.ticket.name

    def _lease_path(self) -> Path:
        return self.spool.layout.lease(self.name)

    def still_mine(self) -> bool:
        """False once the daemon has reclaimed this ticket (expired lease) or it moved on."""
        if self._lost:
            return False
        current = Lease.read(self._lease_path())
        mine = (
            current is not None
            and current.worker == self.lease.worker
            and self.spool.layout.ticket(TicketState.RUNNING, self.name).exists()
        )
        self._lost = not mine
        return mine

    def heartbeat(self) -> bool:
        if not self.still_mine():
            return False
        self.lease.beat += 1
        self.spool.renew_lease(self.name, self.lease.to_json())
        return True

    def _release(self) -> None:
        if self.still_mine():
            self.spool.release_lease(self.name)

    def finish(self, result: dict) -> bool:
        """Publish the done-marker (ticket + result). False if the ticket was taken back (a
        late writer leaves it to the new holder, which skips the images already there) or
        another attempt published first."""
        if not self.still_mine():
            log.warning("ticket %s was taken back before it finished; leaving it to its new holder", self.name)
            return False
        marker = json.loads(self.ticket.to_json())
        marker["result"] = result
        won = self.spool.finish(self.name, json.dumps(marker, indent=1).encode())
        if self.still_mine():
            self.spool.retire(self.name)
        if not won:
            log.warning("ticket %s was already done by another attempt; kept the first marker", self.name)
        return won

    def fail(self, error: str, transient: bool, now: float) -> TicketState | None:
        """Record a failed attempt; returns the new state (None if the ticket was not ours)."""
        if not self.still_mine():
            return None
        state, updated = after_failure(self.ticket, error, transient, self.lease.worker, now)
        self._leave(state, updated)
        return state

    def pause(self, reason: str, now: float, wait: float) -> str:
        """Defer without counting an attempt (disk full). If even that small write fails,
        hand the ticket back by rename, which needs no new space. Returns the new state, or
        "lost" (not a state: the ticket was no longer ours)."""
        if not self.still_mine():
            return "lost"
        state, updated = after_pause(self.ticket, reason, self.lease.worker, now, wait)
        try:
            self._leave(state, updated)
        except OSError:
            self.spool.leave_running(self.name, TicketState.PENDING)  # a rename: no new space
            state = TicketState.PENDING
        return state

    def hand_back(self, to_state: TicketState = TicketState.PENDING) -> bool:
        """Give the ticket back unchanged (shutdown, cancel): not a failed attempt."""
        if not self.still_mine():
            return False
        return self._leave(to_state)

    def _leave(self, state: TicketState, updated: Ticket | None = None) -> bool:
        """The ticket leaves running/ through `Spool.leave_running` (lease first); from then
        on this claim holds nothing."""
        self._lost = True
        return self.spool.leave_running(self.name, state, updated)


def fair_order(names: list[str], user_of: Callable[[str], str], served: Mapping[str, int] | None = None) -> list[str]:
    """Ticket names in claim order (docs/spool.md, Tickets): higher priority first; within a
    priority, users take turns (round robin over their tickets listed), and each user's own
    tickets go in name order: ticket 0 of each of their requests, then ticket 1, ... So one
    user's ten big requests get every other claim, not ten of eleven.

    A user's turns are counted over the names listed, so they start again at every listing;
    what carries over is `served` (user -> when this worker last claimed for them, larger is
    later): within a round, users served longer ago go first, then the user whose next ticket
    comes first in name order. Without it, a worker that relists after each claim (slow
    tickets) would give every first turn to the same user. `user_of(request_id)` is asked
    once per request. Names that are not ticket names go last (a claim moves them aside).
    A string sort and a tuple sort, O(n log n): 10,000 names in ~10 ms
    (tests/spool/test_fair_order.py)."""
    served = served or {}
    owners: dict[str, str] = {}
    turns: dict[tuple[int, str], list] = {}
    keyed, odd = [], []
    # Ticket names sort as text by priority (highest first), index, request (fixed widths), so
    # one pass in that order meets each user's tickets in their own order.
    for name in sorted(names):
        p = parse_ticket_name(name)
        if p is None:
            odd.append(name)
            continue
        level, request_id = -p[0], p[2]
        user = owners.get(request_id)
        if user is None:
            user = owners[request_id] = user_of(request_id)
        slot = turns.get((level, user))
        if slot is None:  # [the user's next turn, their place within a round]
            slot = turns[(level, user)] = [0, (served.get(user, -1), request_id)]
        keyed.append((level, slot[0], slot[1], name))
        slot[0] += 1
    keyed.sort()  # in each priority: turn 0 of every user, then turn 1, ...
    return [k[3] for k in keyed] + odd


def request_user(spool: Spool, request_id: str) -> str:
    """Who submitted a request (state.json `user`); "" when unknown (a request accepted before
    users were recorded, a damaged or missing state.json): all such requests share one turn."""
    try:
        state = spool.read_state(request_id)
    except (CorruptRecord, OSError):
        return ""
    user = (state or {}).get("user")
    return user if isinstance(user, str) else ""


class PendingView:
    """One worker's listing of pending/ in claim order (`fair_order`), reused across claims:
    listing and sorting a 100,000-ticket queue for every claim made draining it quadratic.
    The listing is redone when used up or older than `refresh` seconds, so a ticket that
    became pending since (a new request, a hand-back) waits at most that long for its turn."""

    def __init__(self, spool: Spool, refresh: float = defaults.CLAIM_RELIST_SECONDS):
        self.spool, self.refresh = spool, refresh
        self.names: list[str] = []
        self.pos = 0
        self.listed_at = float("-inf")
        self.users: dict[str, str] = {}  # request id -> user: a request never changes owner
        self.served: dict[str, int] = {}  # user -> the count of claims when this worker last served them
        self.claims = 0

    def fresh(self) -> bool:
        return time.monotonic() - self.listed_at < self.refresh

    def relist(self) -> None:
        listed = self.spool.ticket_names(TicketState.PENDING)
        known, users = self.users, {}

        def user_of(request_id: str) -> str:
            user = known.get(request_id)
            if user is None:
                user = request_user(self.spool, request_id)
            users[request_id] = user
            return user

        self.names, self.pos, self.listed_at = fair_order(listed, user_of, self.served), 0, time.monotonic()
        # only requests and users still listed: both stay the size of the queue
        self.users = users
        present = set(users.values())
        self.served = {user: when for user, when in self.served.items() if user in present}

    def note_claim(self, name: str) -> None:
        """This worker claimed `name`: its user goes to the end of the next listing's rounds."""
        request_id = name.rsplit(".", 1)[-1]
        self.claims += 1
        self.served[self.users.get(request_id, "")] = self.claims

    def count_ahead(self, request_id: str, look_ahead: int, accept: Callable[[str], bool] = lambda name: True) -> int:
        """Names of `request_id` among the next `look_ahead` of the listing (those `accept` takes)."""
        return sum(
            1
            for name in self.names[self.pos : self.pos + look_ahead]
            if name.rsplit(".", 1)[-1] == request_id and accept(name)
        )

    def next_name(self) -> str | None:
        if self.pos >= len(self.names):
            return None
        self.pos += 1
        return self.names[self.pos - 1]


@contextmanager
def host_claim_lock(spool: Spool, timeout: float = defaults.CLAIM_LOCK_TIMEOUT_SECONDS):
    """The host's claim lock, waited for at most `timeout` seconds. It only spreads one
    host's workers over different names; the rename decides who wins. So a worker that
    cannot get it (its holder was stopped with SIGSTOP or a Slurm suspend) claims without."""
    lock = FileLock(str(spool.layout.claim_lock), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        log.warning("claim lock busy for %.0fs (a stopped worker holds it?): claiming without it", timeout)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def claim_next(
    spool: Spool,
    worker_id: str,
    now: float | None = None,
    skip_request=lambda request_id: False,
    view: PendingView | None = None,
) -> Claim | None:
    """Claim the first pending ticket in claim order, or return None if there is none.
    With a `view`, the listing is shared with this worker's earlier claims."""
    now = time.time() if now is None else now
    view = view or PendingView(spool, refresh=0.0)
    with host_claim_lock(spool):
        listed = view.pos >= len(view.names) or not view.fresh()
        if listed:
            view.relist()
        while True:
            name = view.next_name()
            if name is None:
                if listed:
                    break
                view.relist()  # an older listing ran out: look once more before saying none
                listed = True
                continue
            if skip_request(name.rsplit(".", 1)[-1]):
                continue
            claim = _take(spool, worker_id, name, now)
            if claim is not None:
                view.note_claim(name)
                return claim
    return None


LOOK_AHEAD = 256  # names a group claim looks through for its request's next ticket


def claim_more(
    spool: Spool,
    worker_id: str,
    request_id: str,
    view: PendingView,
    now: float | None = None,
    look_ahead: int = LOOK_AHEAD,
    accept: Callable[[str], bool] = lambda name: True,
) -> Claim | None:
    """Claim the next pending ticket of `request_id` within the next `look_ahead` names of
    the listing (a worker filling one batch with a request's small tickets) for which
    `accept(name)` holds (a sweep's tickets of other settings cannot share the batch).
    Tickets it passes stay where they are, next in line for the following claim."""
    now = time.time() if now is None else now
    with host_claim_lock(spool):
        if not view.fresh():
            view.relist()
        i = view.pos
        while i < min(len(view.names), view.pos + look_ahead):
            name = view.names[i]
            if name.rsplit(".", 1)[-1] != request_id or not accept(name):
                i += 1
                continue
            del view.names[i]
            claim = _take(spool, worker_id, name, now)
            if claim is not None:
                return claim
    return None


def _take(spool: Spool, worker_id: str, name: str, now: float) -> Claim | None:
    """Rename one pending ticket to running/ and lease it; None if another worker won it,
    it was done meanwhile or it cannot be read."""
    lease = Lease(worker=worker_id, host=socket.gethostname(), pid=os.getpid(), claimed_at=now)
    # No lease, no claim: Spool.claim gives the ticket back by rename if the lease fails.
    if not spool.claim(name, lease.to_json()):
        return None
    try:
        ticket = spool.read_ticket(TicketState.RUNNING, name)
    except FileNotFoundError:
        spool.release_lease(name)
        return None
    except CorruptRecord as e:
        # Moved aside with its reason (spool/corrupt/), never run, never deleted.
        spool.release_lease(name)
        spool.quarantine(spool.layout.ticket(TicketState.RUNNING, name), e.reason, now)
        return None
    return Claim(spool, ticket, lease)
