"""The daemon process: one per data directory, ticking until stopped or idle."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable

from filelock import FileLock, Timeout

from sdgen import defaults
from sdgen.daemon.retention import RetainStep
from sdgen.daemon.scheduler import Scheduler, TickReport
from sdgen.daemon.watcher import Watcher
from sdgen.exceptions import DaemonRunning
from sdgen.launchers.base import Launcher
from sdgen.spool.store import Spool

log = logging.getLogger(__name__)

# Exit codes of `sdgen daemon --exit-when-idle` (and so of `sdgen run`) besides 0 (idle, every
# worker gone) and 2 (bad input): 1 = workers (Slurm or ADSP jobs) could not be removed at the
# end; 4 = launching is blocked (workers keep failing at start-up, sbatch refuses every job)
# and no worker is left, so the queue can never empty: waiting would hang forever.
EXIT_LEFTOVERS = 1
EXIT_BLOCKED = 4


def acquire_daemon_lock(spool: Spool) -> FileLock:
    layout = spool.layout
    lock = FileLock(str(layout.daemon_lock), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            info = json.loads(layout.daemon_info.read_text())
            who = f" (pid {info['pid']} on {info['host']})"
        except (OSError, ValueError, KeyError):
            who = ""
        raise DaemonRunning(
            f"another sdgen daemon{who} already runs on {layout.root}: stop it first, "
            "or give this one another --data directory"
        ) from None
    spool.write_daemon_info({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    return lock


def daemon_lock_free(spool: Spool) -> bool:
    """True if no daemon holds the data directory now (taken and released at once)."""
    lock = FileLock(str(spool.layout.daemon_lock), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def sweep_tmp(spool: Spool, now: float, older_than: float = defaults.TMP_SWEEP_SECONDS) -> int:
    return spool.sweep_tmp(now, older_than)


class Daemon:
    def __init__(
        self,
        spool: Spool,
        launcher: Launcher,
        poll: bool = False,
        rescan: float = defaults.RESCAN_SECONDS,
        exit_when_idle: bool = False,
        grace: float = defaults.SHUTDOWN_GRACE_SECONDS,
        lease_timeout: float = defaults.LEASE_TIMEOUT_SECONDS,
        split_window: int = defaults.SPLIT_WINDOW_TICKETS,
        fold_after: float = defaults.FOLD_AFTER_SECONDS,
        until: Callable[[TickReport], bool] | None = None,
        on_tick: Callable[[TickReport], None] | None = None,
        tracker=None,
        on_signal: Callable[[int], None] | None = None,
        notifier=None,
        retain: float | None = None,
    ):
        self.spool = spool
        self.launcher = launcher
        self.poll = poll
        self.rescan = rescan
        self.exit_when_idle = exit_when_idle
        self.grace = grace
        self.until = until
        self.on_tick = on_tick
        self.on_signal = on_signal  # called (in the handler) for every stop signal, e.g. by `sdgen run`
        self.tracker = tracker  # a TrackerThread, or None when tracking is off
        self.notifier = notifier  # a notify.Notifier (--on-done, --webhook), or None
        # --retain: a bounded prune pass between ticks, at most hourly (daemon/retention.py)
        self.retention = RetainStep(spool, retain) if retain is not None else None
        self.scheduler = Scheduler(
            spool,
            launcher,
            lease_timeout=lease_timeout,
            split_window=split_window,
            fold_after=fold_after,
            on_request_end=notifier.request_ended if notifier is not None else None,
        )
        self.wake = threading.Event()
        self.stopping = False
        self.exit_reason = ""  # why run() returned non-zero, one line

    def run(self) -> int:
        self._install_signals()  # first: a SIGTERM during start-up still means a clean stop
        self.spool.ensure()
        lock = acquire_daemon_lock(self.spool)
        self.launcher.attach()  # only now: the jobs file of a daemon holding the directory is its own
        watcher = None
        code = 0
        try:
            for action in self.spool.reconcile():
                log.warning("recovery: %s", action)
            self.scheduler.write_launcher_status(time.time())  # a restart clears a stop
            swept = sweep_tmp(self.spool, time.time())
            if swept:
                log.info("swept %d stale file(s) from spool/tmp", swept)
            if not self.poll:
                layout = self.spool.layout
                watcher = Watcher([layout.inbox, layout.requests, layout.spool / "tickets"], self.wake)
                watcher.start()
            if self.tracker is not None:
                self.tracker.start()
            if self.notifier is not None:
                self.notifier.start()
            log.info(
                "daemon up on %s (%s, up to %d worker(s))",
                self.spool.layout.root,
                "polling" if self.poll or watcher is None else "watching",
                self.launcher.max_workers,
            )
            failing = ""
            while not self.stopping:
                self.wake.clear()
                tick_started = time.monotonic()
                try:
                    report = self.scheduler.tick(time.time())
                except OSError as e:
                    # A full or failing disk must not take the daemon down: say so once,
                    # then keep trying; nothing is lost, every write is atomic.
                    if str(e) != failing:
                        log.error("spool step failed (%s); retrying every %.1fs", e, self.rescan)
                        failing = str(e)
                    self.wake.wait(self.rescan)
                    continue
                if failing:
                    log.warning("spool step works again")
                    failing = ""
                if self.notifier is not None:
                    self.notifier.settle()
                if self.retention is not None:
                    self.retention.maybe_run(time.time())
                if self.on_tick:
                    self.on_tick(report)
                if self.until and self.until(report):
                    break
                if self.exit_when_idle and report.idle:
                    log.info("nothing pending or running: exiting")
                    break
                if self.exit_when_idle and self._blocked_out(report):
                    self.exit_reason = f"launcher {self.launcher.name} is blocked: {self.scheduler.blocked}"
                    log.error("%s; no worker is left to empty the queue: exiting", self.exit_reason)
                    code = EXIT_BLOCKED
                    break
                if watcher is not None:
                    watcher.healthy()
                timeout = self.rescan if report.wake_in is None else min(self.rescan, report.wake_in + 0.01)
                self.wake.wait(max(0.01, timeout))
                # Watcher events come in bursts (each claim, image and marker of every
                # worker is one): one tick per burst, at most one per TICK_MIN_INTERVAL,
                # unless the last tick has more to do at once (a split's next slice).
                rest = defaults.TICK_MIN_INTERVAL_SECONDS - (time.monotonic() - tick_started)
                if rest > 0 and report.wake_in != 0 and not self.stopping:
                    time.sleep(rest)
            # An --exit-when-idle run ends its workers wherever they run (batch jobs included)
            # and waits until they are gone, so a one-shot run leaves nothing behind; a stop by
            # signal leaves batch jobs to finish their tickets for the next daemon.
            left = self._shutdown(end=self.exit_when_idle and not self.stopping)
            if left and not code:
                self.exit_reason = (
                    f"{len(left)} {self.launcher.name} worker(s) could not be removed: "
                    f"{' '.join(left)} (see the log above)"
                )
                code = EXIT_LEFTOVERS
        finally:
            if watcher is not None:
                watcher.stop()
            lock.release()
        return code

    def _blocked_out(self, report: TickReport) -> bool:
        """Launching is blocked and nothing is left that could still empty the queue."""
        return bool(self.scheduler.blocked) and not self.launcher.running() and not report.running

    def _shutdown(self, end: bool = False) -> list[str]:
        """Stop workers, settle tickets and request states; returns the workers `end` could
        not remove."""
        self.scheduler.launching = False
        if self.launcher.running():
            log.info("%s %d worker(s)", "ending" if end else "stopping", len(self.launcher.running()))
        exited = self.launcher.end_all(self.grace) if end else self.launcher.stop_all(self.grace)
        # Tickets of workers that had to be killed go back now, not after a lease timeout.
        self.scheduler.settle_at_shutdown(time.time(), exited)
        if self.tracker is not None:
            self.tracker.stop()
        if self.notifier is not None:
            self.notifier.stop()  # ends recorded just now get their chance; the rest stay owed
        return self.launcher.leftovers() if end else []

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, frame):
            log.info("signal %d: stopping launches, handing tickets back", signum)
            self.stopping = True
            self.wake.set()
            if self.on_signal is not None:
                self.on_signal(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # A closed terminal is a stop like any other: by default SIGHUP would kill the daemon
        # at once and leave its workers running.
        signal.signal(signal.SIGHUP, on_signal)
