"""The queue as `sdgen status` sees it, with a rate and ETA per request: one look at the
spool shared by every page, tab and API call for WEB_LOOK_CACHE_SECONDS.

Rates need successive samples: the server keeps one RateMeter per request (sdgen/cli/rate.py,
the one `sdgen status --watch` uses) and feeds it at each look.
"""

from __future__ import annotations

import threading
import time

from sdgen import defaults
from sdgen.cli.rate import RateMeter, eta_text, rate_text
from sdgen.cli.status import (
    _read_json,
    _request_tracking_failure,
    _tracking_status,
    _when,
    collect,
    daemon_state,
    detail,
    footer_lines,
)
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.progress import summarize
from sdgen.spool.records import CorruptRecord
from sdgen.spool.states import PRECEDENCE, RequestState, TicketState
from sdgen.spool.store import Spool


class Look:
    """`snapshot()`: {rows (newest first), footer, daemon, launcher, paused_all, at}."""

    def __init__(self, spool: Spool, cache_seconds: float | None = None, clock=time.monotonic):
        self.spool = spool
        self.cache_seconds = defaults.WEB_LOOK_CACHE_SECONDS if cache_seconds is None else cache_seconds
        self.clock = clock
        self.meters: dict[str, RateMeter] = {}
        self._lock = threading.Lock()
        self._last: tuple[float, dict] | None = None

    def invalidate(self) -> None:
        """After a write through the dashboard: the next page shows its effect."""
        with self._lock:
            self._last = None

    def snapshot(self) -> dict:
        with self._lock:
            now = self.clock()
            if self._last and now - self._last[0] < self.cache_seconds:
                return self._last[1]
            snap = self._look(now)
            self._last = (now, snap)
            return snap

    def detail(self, rid: str) -> dict | None:
        """One accepted request as `sdgen status ID` shows it, with its rate, read from its
        own files only (not the whole queue); None when it has no state.json to read (in
        the inbox, being accepted, damaged): the caller falls back to the queue's look."""
        try:
            meta = self.spool.read_state(rid)
        except CorruptRecord:
            return None
        if meta is None or meta.get("id") != rid:
            return None
        counts = request_counts(self.spool, rid)
        row = summarize(meta, counts, self.spool.is_cancelled(rid), self.spool.is_paused(rid))
        row["priority"] = self.spool.priority_of(rid, row["priority"])
        row["output_dir"] = str(self.spool.layout.output_dir(rid))
        if row["state"] == RequestState.FAILED:
            row["reason"] = meta.get("reason", "tickets failed or held")
        tracking = _tracking_status(self.spool)
        backlog = sum(1 for name in self.spool.event_names() if name.split("-", 1)[-1].startswith(rid))
        failure = _request_tracking_failure(tracking, rid)
        if tracking and not tracking.get("ok") and backlog:
            row["tracking_error"] = (
                f"MLflow unreachable since {_when(tracking.get('down_since'))}: {tracking.get('error')}"
            )
        elif failure:
            row["tracking_error"] = (
                f"MLflow logging failed since {_when(failure.get('since'))}: {failure.get('error', '?')}"
            )
        row["tracking_backlog"] = backlog
        blocked = (_read_json(self.spool.layout.launcher_status) or {}).get("blocked")
        if blocked and row["state"] in (RequestState.PENDING, RequestState.RUNNING):
            row["launcher_error"] = blocked
        with self._lock:
            meter = self.meters.setdefault(rid, RateMeter())
            now = self.clock()
            meter.sample(now, row["images_done"])
            running = row["state"] == RequestState.RUNNING
            row["rate"] = meter.rate(now) if running else None
            row["eta"] = meter.eta(now, row["images_total"]) if running else None
        row["rate_text"], row["eta_text"] = rate_text(row["rate"]), eta_text(row["eta"])
        return detail(_OneRequest(self.spool, rid, counts), row)

    def _look(self, now: float) -> dict:
        layout = self.spool.layout
        if not layout.spool.is_dir():
            return {
                "rows": [],
                "footer": [f"no spool in {layout.root} yet: `sdgen submit` or `sdgen daemon` makes one"],
                "daemon": {"running": False},
                "launcher": {},
                "paused_all": False,
                "at": time.time(),
            }
        rows = collect(self.spool)
        daemon = daemon_state(self.spool)
        footer = footer_lines(self.spool, rows, daemon)
        seen = set()
        for row in rows:
            seen.add(row["id"])
            meter = self.meters.setdefault(row["id"], RateMeter())
            meter.sample(now, row["images_done"])
            running = row["state"] == RequestState.RUNNING
            row["rate"] = meter.rate(now) if running else None
            row["eta"] = meter.eta(now, row["images_total"]) if running else None
            row["rate_text"] = rate_text(row["rate"])
            row["eta_text"] = eta_text(row["eta"])
            row["percent"] = int(100 * row["images_done"] / row["images_total"]) if row["images_total"] else 0
        for gone in set(self.meters) - seen:  # pruned requests
            del self.meters[gone]
        rows.sort(key=newest_first_key, reverse=True)
        launcher = _read_json(layout.launcher_status) or {}
        return {
            "rows": rows,
            "footer": footer,
            "daemon": daemon,
            "launcher": {
                "launcher": launcher.get("launcher"),
                "workers": launcher.get("workers") if isinstance(launcher.get("workers"), dict) else {},
                "blocked": launcher.get("blocked"),
                "since": launcher.get("since"),
            },
            "tracking_backlog": sum(r.get("tracking_backlog", 0) for r in rows),
            "paused_all": layout.pause_all_marker.exists(),
            "at": time.time(),
        }


def newest_first_key(row: dict) -> str:
    """Request ids start with their submission time; a rejected or inbox file's name (after
    its folder) with its stamp: sorted on that, newest last (the caller reverses)."""
    return str(row["id"]).rsplit("/", 1)[-1]


def filter_rows(rows: list[dict], state: str | None, user: str | None) -> list[dict]:
    return [r for r in rows if (not state or r["state"] == state) and (user is None or r.get("user", "") == user)]


def page_of(items: list, page: int, size: int) -> tuple[list, int, int]:
    """(the items of 1-based `page`, the page, the number of pages); a page past the end is the last."""
    pages = max(1, -(-len(items) // size))
    page = min(max(1, page), pages)
    return items[(page - 1) * size : page * size], page, pages


class _OneRequest:
    """The spool as status.detail() sees it, with the ticket counts of one request only (a
    full ticket_counts() reads every request's folded record: 1,000 requests, 1,000 reads)."""

    def __init__(self, spool: Spool, rid: str, counts: dict):
        self._spool, self._rid, self._counts = spool, rid, counts

    def __getattr__(self, name):
        return getattr(self._spool, name)

    def ticket_counts(self, *args, **kwargs) -> dict:
        return {self._rid: self._counts}


def request_counts(spool: Spool, rid: str) -> dict[str, list[int]]:
    """state -> ticket indexes of one request (what ticket_counts() holds for it), from one
    listing of each ticket folder and the request's own folded record."""
    counts: dict[str, list[int]] = {}
    seen: set[int] = set()
    folded = spool.folded_indexes(rid)
    if folded:
        counts[TicketState.DONE] = sorted(folded)
        seen.update(folded)
    for state in PRECEDENCE:
        for name in spool.ticket_names(state):
            if not name.endswith(rid):
                continue
            parsed = parse_ticket_name(name)
            if not parsed or parsed[2] != rid or parsed[1] in seen:
                continue
            seen.add(parsed[1])
            counts.setdefault(state, []).append(parsed[1])
    return counts
