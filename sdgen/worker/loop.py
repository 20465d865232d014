"""The worker loop: claim, run, repeat, until the spool has been idle for a while."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import time

from sdgen import defaults, settings
from sdgen.engine.base import Engine
from sdgen.engine.registry import get_engine
from sdgen.exceptions import EngineError, SettingError
from sdgen.spool.claim import LOOK_AHEAD, PendingView, claim_more, claim_next
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.records import CorruptRecord
from sdgen.spool.split import ticket_at, ticket_count
from sdgen.spool.states import TicketState
from sdgen.spool.store import Spool
from sdgen.textsafe import printable
from sdgen.worker.heartbeat import Heartbeat
from sdgen.worker.runner import Outcome, image_job, run_group, run_ticket

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL = defaults.WORKER_EXIT_OK, defaults.WORKER_EXIT_FATAL


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    def __init__(
        self, spool: Spool, worker_id: str | None = None, heartbeat_seconds: float = defaults.HEARTBEAT_SECONDS
    ):
        self.spool = spool
        self.worker_id = worker_id or new_worker_id()
        self.heartbeat_seconds = heartbeat_seconds
        self.engines: dict[str, Engine] = {}
        self.stopping = False
        self.tickets_run = 0
        self.pending = PendingView(spool)  # one listing of the queue serves many claims
        self._requests: dict = {}  # request id -> Request, for a sweep's group claims
        self._skip_cache: dict[str, tuple[bool, float]] = {}  # request id -> (not claimable, when)

    def engine(self, name: str) -> Engine:
        """One engine per name, built once and kept warm for every later ticket."""
        if name not in self.engines:
            # Every setting, not only this engine's: read later (a batch cap, system metrics)
            # a bad one would raise in the middle of a ticket; here it fails the ticket cleanly.
            settings.check()
            self.engines[name] = get_engine(name, self.spool.layout.root)
        return self.engines[name]

    def step(self, now: float | None = None) -> Outcome | None:
        """Claim and run one ticket, or a group of one request's small tickets as one batch
        (see _fill_group): the first ticket's outcome, the others' in its `others`. None when
        there was nothing to claim."""
        claim = claim_next(self.spool, self.worker_id, now, skip_request=self._not_claimable, view=self.pending)
        if claim is None:
            return None
        ticket = claim.ticket
        log.info(
            "ticket %s: %d image(s), attempt %d", printable(ticket.name), len(ticket.images), ticket.attempt_number
        )
        try:
            engine = self.engine(ticket.engine)
        except EngineError as e:
            state = claim.fail(str(e), e.transient, time.time())
            # a bad setting fails every ticket alike: one says why, then this worker stops
            # instead of failing the whole queue (a daemon checks its settings before it starts)
            return Outcome(state or "lost", error=str(e), fatal_for_worker=isinstance(e, SettingError))
        claims = [claim] + self._fill_group(claim, engine, now)
        with contextlib.ExitStack() as stack:
            stops = [self._stop_check(c, stack.enter_context(Heartbeat(c, self.heartbeat_seconds))) for c in claims]
            if len(claims) == 1:
                outcomes = [run_ticket(claim, engine, stops[0], self.worker_id)]
            else:
                outcomes = run_group(claims, engine, stops, self.worker_id)
        for c, outcome in zip(claims, outcomes):
            self.tickets_run += 1
            secs = outcome.seconds.get("total")
            log.info(
                "ticket %s: %s, %d made, %d already there%s%s",
                printable(c.name),
                outcome.state,
                outcome.images_made,
                outcome.images_skipped,
                f", {secs:.2f}s" if secs is not None else "",
                f" ({printable(outcome.error)})" if outcome.error else "",
            )
        first = outcomes[0]
        first.others = outcomes[1:]
        return first

    def _fill_group(self, claim, engine: Engine, now: float | None) -> list:
        """More small tickets of the same request, up to the images the engine runs best
        together (engine.group_limit; 1 on the CPU and for the dry-run engine unless
        SDGEN_GROUP_IMAGES says otherwise)."""
        limit = engine.group_limit(image_job(claim.ticket))
        more, images = [], len(claim.ticket.images)
        same = self._same_pass(claim.ticket) if limit > images else None
        if limit > images and not self._group_is_fair(claim, limit, same):
            limit = images
        while images < limit and not self.stopping:
            extra = claim_more(
                self.spool,
                self.worker_id,
                claim.ticket.request_id,
                self.pending,
                now,
                accept=same or (lambda name: True),
            )
            if extra is None:
                break
            if extra.ticket.generation_key() != claim.ticket.generation_key():
                # its name said otherwise (a request.yaml changed under us?): never one pass
                extra.hand_back()
                break
            log.info(
                "ticket %s: %d image(s), attempt %d, grouped with %s",
                extra.name,
                len(extra.ticket.images),
                extra.ticket.attempt_number,
                claim.name,
            )
            more.append(extra)
            images += len(extra.ticket.images)
        return more

    def _same_pass(self, ticket):
        """Which pending names of `ticket`'s request may share its forward pass: all of them
        without a sweep; with one, those whose ticket (computed from the request and the
        name's index, as the split does) has the same settings."""
        if not ticket.combination:
            return lambda name: True
        request_id, key = ticket.request_id, ticket.generation_key()
        request = self._requests.get(request_id)
        if request is None:
            try:
                request = self.spool.read_request(request_id)
            except (CorruptRecord, OSError, ValueError) as e:
                log.warning("request %s unreadable (%s): its tickets run one by one", request_id, printable(e))
                return lambda name: False
            if len(self._requests) >= 8:  # a few requests at a time are in flight
                self._requests.clear()
            self._requests[request_id] = request
        count = ticket_count(request)

        def accept(name: str) -> bool:
            parsed = parse_ticket_name(name)
            if parsed is None or parsed[2] != request_id or not 0 <= parsed[1] < count:
                return False
            return ticket_at(request_id, request, parsed[1]).generation_key() == key

        return accept

    def _group_is_fair(self, claim, limit: int, same=None) -> bool:
        """A full batch only when this request's tickets in sight give every one of the
        daemon's workers that much (or this is its only worker): a small request on a node of
        several GPUs is spread over them one ticket each. Full or none, so a worker runs two
        compiled programs (the ticket's batch and the full one), not one per odd size (tried:
        shrinking groups while a 256-ticket queue drained compiled 5 sizes per worker and
        took 77 s instead of 41 on 4 H100s)."""
        workers = self.spool.worker_count()
        in_sight = 1 + self.pending.count_ahead(claim.ticket.request_id, LOOK_AHEAD, same or (lambda name: True))
        return workers == 1 or in_sight * len(claim.ticket.images) >= limit * workers

    def _not_claimable(self, request_id: str) -> bool:
        """Cancelled or paused: its tickets are passed over. Asked for every name tried, so
        the answer is kept for a second per request (a paused request's whole window of
        names would otherwise cost two stats each, at every poll of an idle worker)."""
        now = time.monotonic()
        known = self._skip_cache.get(request_id)
        if known is None or now - known[1] > defaults.CLAIM_RELIST_SECONDS:
            known = (self.spool.is_cancelled(request_id) or self.spool.is_paused(request_id), now)
            self._skip_cache[request_id] = known
        return known[0]

    def _stop_check(self, claim, beat: Heartbeat):
        def should_stop() -> str | None:
            if self.stopping:
                return "shutdown"
            if beat.lost.is_set() or not claim.still_mine():  # at every image, not every beat
                return "lost"
            if self.spool.is_cancelled(claim.ticket.request_id):
                return TicketState.CANCELLED  # the stop reason is the state the ticket goes to
            rid = claim.ticket.request_id
            if self.spool.is_paused(rid) and not self.spool.pause_lets_tickets_finish(rid):
                return "paused"  # handed back at this image boundary
            return None

        return should_stop

    def work(
        self,
        idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
        max_tickets: int | None = None,
        poll: float = defaults.WORKER_POLL_SECONDS,
    ) -> int:
        """Run tickets until idle for `idle_exit` seconds, `max_tickets` ran, or a signal."""
        self._install_signals()
        idle_since = time.monotonic()
        while not self.stopping:
            if max_tickets is not None and self.tickets_run >= max_tickets:
                break
            try:
                outcome = self.step()
            except OSError as e:  # e.g. no space even for a lease: wait, then try again
                log.error("cannot claim (%s): waiting %.0fs", e, defaults.DISK_FULL_WAIT_SECONDS)
                self._sleep(defaults.DISK_FULL_WAIT_SECONDS)
                continue
            if outcome is not None and any(o.pause for o in [outcome, *outcome.others]):
                self._sleep(defaults.DISK_FULL_WAIT_SECONDS)
            if outcome is None:
                if time.monotonic() - idle_since >= idle_exit:
                    log.info("idle for %.0fs: exiting", idle_exit)
                    break
                time.sleep(poll)
                continue
            idle_since = time.monotonic()
            fatal = [o for o in [outcome, *outcome.others] if o.fatal_for_worker]
            if fatal:
                log.error("exiting so that a fresh process takes over (%s)", fatal[0].error)
                return EXIT_FATAL
        return EXIT_OK

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(defaults.WORKER_POLL_SECONDS)

    def _install_signals(self) -> None:
        def on_signal(signum, frame):
            log.info("signal %d: handing back at the next image boundary", signum)
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
