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
from sdgen.cli.status import _read_json, collect, daemon_state, footer_lines
from sdgen.spool.states import RequestState
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
