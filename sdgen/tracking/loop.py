"""Runs the tracker beside the scheduler, in a thread, so a slow or absent MLflow server
never delays scheduling; backs off while it is down."""

from __future__ import annotations

import logging
import threading
import time

from sdgen import defaults
from sdgen.spool.store import Spool

log = logging.getLogger(__name__)


class TrackerThread:
    def __init__(
        self,
        spool: Spool,
        launcher: str = "local",
        images: str = "all",
        interval: float = defaults.TRACKER_POLL_SECONDS,
        max_backoff: float = defaults.TRACKER_MAX_BACKOFF_SECONDS,
    ):
        self.spool, self.launcher, self.images = spool, launcher, images
        self.interval, self.max_backoff = interval, max_backoff
        self.tracker = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdgen-tracker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _make(self) -> bool:
        if self.tracker is None:
            try:
                from sdgen.tracking.mlflow_log import Tracker  # mlflow's import takes seconds

                self.tracker = Tracker(self.spool, launcher=self.launcher, images=self.images)
            except Exception as e:  # noqa: BLE001 - e.g. mlflow not installed or a bad URI
                log.warning("MLflow tracking is off: %s", e)
                return False
        return True

    def _run(self) -> None:
        if not self._make():
            return
        wait = self.interval
        while not self._stop.is_set():
            ok = self.tracker.step(time.time())
            wait = self.interval if ok else min(self.max_backoff, max(2.0, wait * 2))
            self._stop.wait(wait)

    def stop(self, flush_seconds: float = 30.0) -> None:
        """Stop, then log what is still waiting for up to `flush_seconds` (if MLflow is up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.tracker is None and not self._make():
            return
        deadline = time.monotonic() + flush_seconds
        while time.monotonic() < deadline:
            if not self.tracker.step(time.time()):
                log.warning(
                    "MLflow unreachable at shutdown: %d event(s) wait in spool/events for the next daemon",
                    self.tracker.backlog(),
                )
                return
            if self.tracker.settled():
                return
            time.sleep(0.2)


def drain_events(spool: Spool) -> int:
    """Delete the events in spool/events: with tracking off nothing will ever log them, and
    workers write one per attempt, so without this they pile up forever. Returns how many."""
    return sum(spool.remove_event(name) for name in spool.event_names())


class EventDrain:
    """What the daemon runs instead of a TrackerThread when tracking is off (`--no-tracking`,
    SDGEN_TRACKING=off): same start/stop, and it only empties spool/events."""

    def __init__(self, spool: Spool, interval: float = 5.0):
        self.spool, self.interval = spool, interval
        self.tracker = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdgen-event-drain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        try:
            drain_events(self.spool)
        except OSError as e:  # a spool that cannot be listed now: the next round tries again
            log.debug("draining spool/events failed: %s", e)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(self.interval)

    def stop(self, flush_seconds: float = 0.0) -> None:
        """Stop, then drain once more: the last attempts' events came with the shutdown."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._drain()
