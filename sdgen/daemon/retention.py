"""Retention: which ended requests' spool records may go (`sdgen prune`, `sdgen daemon
--retain`), and removing them through `Spool.remove_request`.

`select_prunable` is the rule, pure; `candidates` reads what it needs from the spool; `prune`
does both and removes; `RetainStep` is the daemon's periodic, bounded pass.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from sdgen import defaults
from sdgen.spool.progress import request_state
from sdgen.spool.records import CorruptRecord
from sdgen.spool.states import REQUEST_TERMINAL, TicketState
from sdgen.spool.store import Spool

log = logging.getLogger(__name__)

_ACTIVE = (TicketState.PENDING, TicketState.DEFERRED, TicketState.RUNNING)


@dataclass(frozen=True)
class Candidate:
    """What the rule needs to know of one request."""

    request_id: str
    recorded: str  # the state state.json records
    finished_at: float | None  # state.json, set when the daemon recorded the end
    derived: str  # the state its tickets give now (progress.request_state)
    active: int  # tickets pending, deferred, running or not written yet (split cursor)
    events: int = 0  # attempt events still waiting for the tracker


def select_prunable(
    candidates: list[Candidate], now: float, older_than: float, most: int | None = None
) -> list[Candidate]:
    """The requests whose records may go: ended (done, failed, cancelled) by state.json AND
    by their tickets now, at least `older_than` seconds before `now`, with no ticket left
    to run and no event the tracker has not logged yet (removing those would lose MLflow
    runs). Oldest end first, at most `most`."""
    cutoff = now - older_than
    chosen = [
        c
        for c in candidates
        if c.recorded in REQUEST_TERMINAL
        and c.derived in REQUEST_TERMINAL
        and c.active == 0
        and c.events == 0
        and isinstance(c.finished_at, (int, float))
        and not isinstance(c.finished_at, bool)
        and c.finished_at <= cutoff
    ]
    chosen.sort(key=lambda c: (c.finished_at, c.request_id))
    return chosen if most is None else chosen[: max(0, most)]


def candidates(spool: Spool) -> list[Candidate]:
    """Every accepted request with a readable state.json, as the rule sees it. One listing
    of the ticket folders and of events/ for all of them."""
    counts = spool.ticket_counts()
    events: dict[str, int] = {}
    for name in spool.event_names():
        parts = name.split("-", 1)  # <time ns>-<request id>-<random>.json
        if len(parts) == 2:
            rid = parts[1][:22]
            events[rid] = events.get(rid, 0) + 1
    out = []
    for rid in spool.request_ids():
        try:
            meta = spool.read_state(rid)
        except CorruptRecord:
            continue  # the daemon rebuilds it; never prune on a record it cannot read
        if meta is None:
            continue  # being accepted right now
        total = meta.get("tickets_total", 0)
        tickets = counts.get(rid, {})
        active = sum(len(tickets.get(s, ())) for s in _ACTIVE) + spool.unwritten_tickets(rid, total)
        if os.path.lexists(spool.layout.incoming / f"{rid}.yaml"):
            active += 1  # still being split
        out.append(
            Candidate(
                request_id=rid,
                recorded=str(meta.get("state")),
                finished_at=meta.get("finished_at"),
                derived=request_state(tickets, total, spool.is_cancelled(rid)),
                active=active,
                events=events.get(rid, 0),
            )
        )
    return out


@dataclass(frozen=True)
class Pruned:
    request_id: str
    state: str
    finished_at: float
    bytes: int  # freed (or, for a dry run, what would be)


def prune(
    spool: Spool,
    now: float,
    older_than: float,
    outputs: bool = False,
    dry_run: bool = False,
    most: int | None = None,
) -> list[Pruned]:
    """Remove (or with `dry_run` only measure) the records of the requests `select_prunable`
    picks. MLflow is not touched: its runs stay, only the spool forgets the request."""
    done = []
    for c in select_prunable(candidates(spool), now, older_than, most):
        freed = measure(spool, c.request_id, outputs) if dry_run else spool.remove_request(c.request_id, outputs)
        done.append(Pruned(c.request_id, c.recorded, float(c.finished_at), freed))
    return done


def measure(spool: Spool, request_id: str, outputs: bool) -> int:
    """Bytes `remove_request` would free (the same files: its ended tickets, their leases
    and events, its request folder, with `outputs` its images), without removing any."""
    layout = spool.layout
    paths = []
    for state in (TicketState.DONE, TicketState.CANCELLED, TicketState.FAILED, TicketState.HELD):
        for name in spool.ticket_names(state):
            if name.endswith("." + request_id):
                paths += [layout.ticket(state, name), layout.lease(name)]
    paths += [layout.events / n for n in spool.event_names() if f"-{request_id}-" in n]
    for folder in [layout.request_dir(request_id)] + ([layout.output_dir(request_id)] if outputs else []):
        for dirpath, _, filenames in os.walk(folder):
            paths += [os.path.join(dirpath, f) for f in filenames]
    total = 0
    for path in paths:
        try:
            total += os.lstat(path).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


class RetainStep:
    """`sdgen daemon --retain AGE`: a prune pass (records only, never outputs) at most every
    RETAIN_EVERY_SECONDS, of at most RETAIN_MOST_PER_RUN requests; a pass that hit the bound
    goes on RETAIN_BACKLOG_SECONDS later. Run between ticks by the service, isolated: an
    error is logged (once per message) and the daemon goes on."""

    def __init__(
        self,
        spool: Spool,
        older_than: float,
        every: float = defaults.RETAIN_EVERY_SECONDS,
        most: int = defaults.RETAIN_MOST_PER_RUN,
    ):
        self.spool, self.older_than, self.every, self.most = spool, older_than, every, most
        self.next_at = 0.0  # the first pass comes with the first tick (time.monotonic)
        self._error = ""

    def maybe_run(self, now: float, mono: float | None = None) -> list[Pruned]:
        mono = time.monotonic() if mono is None else mono
        if mono < self.next_at:
            return []
        self.next_at = mono + self.every
        try:
            pruned = prune(self.spool, now, self.older_than, most=self.most)
        except Exception as e:  # noqa: BLE001 - retention must never stop the daemon
            message = f"{type(e).__name__}: {e}"
            if message != self._error:
                log.error("retention pass failed (%s); tried again in %.0fs", message, self.every)
                self._error = message
            return []
        self._error = ""
        if len(pruned) >= self.most:
            self.next_at = mono + defaults.RETAIN_BACKLOG_SECONDS
        if pruned:
            freed = sum(p.bytes for p in pruned)
            log.info(
                "retention: removed the records of %d request(s) ended over %s ago (%d bytes freed)%s",
                len(pruned),
                _age(self.older_than),
                freed,
                "; more next pass" if len(pruned) >= self.most else "",
            )
        return pruned


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds:g}s"
