"""An in-memory launcher, in two modes.

Manual (the default): no workers at all. A test says when each worker exits and how
(`exit`, `crash_all`), to drive `Scheduler.tick` through crashes, backoff and blocking
without processes.

Spool-driven (`FakeLauncher(data_root=...)`): each worker is a thread that runs the real
worker loop (`Worker.work` of sdgen/worker/loop.py, only without its signal handlers, which
need the main thread) on the spool: it claims under its own id, heartbeats, writes done
tickets and leaves by itself once idle for `idle_exit` seconds (returncode 0). `trim` and
`stop_all` do what a SIGTERM does (`Worker.stopping`: the ticket is handed back at the next
image); `kill` is a SIGKILL: the worker stops dead at its next image boundary or claim and
abandons what it holds (its lease stays, as a killed process leaves it), reaped with -9.
That is what tests/launchers/test_contract.py checks of every launcher."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from sdgen.launchers.base import ExitedWorker, Launcher
from sdgen.spool.store import Spool
from sdgen.worker.loop import Worker

log = logging.getLogger(__name__)

KILLED = -signal.SIGKILL  # what Popen reports for a process killed by SIGKILL


class _Killed(BaseException):
    """Raised inside a killed worker's thread at its next image boundary or claim. A
    BaseException: the runner turns every Exception into an outcome (a failed ticket, a
    released lease), and a killed process records nothing."""


class ThreadWorker(Worker):
    """The real worker in a thread of the test process."""

    def __init__(self, spool: Spool, worker_id: str, heartbeat_seconds: float, idle_exit: float, started: float):
        super().__init__(spool, worker_id, heartbeat_seconds=heartbeat_seconds)
        self.idle_exit = idle_exit
        self.started = started  # the launcher's `now` at launch: ran_seconds in its clock
        self.killed = threading.Event()
        self.returncode: int | None = None
        self.detail = ""
        self.thread = threading.Thread(target=self._main, name=f"fake-worker {worker_id}", daemon=True)

    def _install_signals(self) -> None:
        """Signals reach the main thread only: `stopping` is set by the launcher instead."""

    def step(self, now: float | None = None):
        if self.killed.is_set():
            raise _Killed
        return super().step(now)

    def _stop_check(self, claim, beat):
        should_stop = super()._stop_check(claim, beat)

        def or_killed() -> str | None:
            if self.killed.is_set():
                raise _Killed
            return should_stop()

        return or_killed

    def _main(self) -> None:
        try:
            self.returncode = self.work(idle_exit=self.idle_exit)
        except _Killed:
            self.returncode, self.detail = KILLED, "killed by signal 9"
        except BaseException as e:  # noqa: BLE001 - a process would die of it with status 1
            log.exception("fake worker %s crashed", self.worker_id)
            self.returncode, self.detail = 1, f"{type(e).__name__}: {e}"


class FakeLauncher(Launcher):
    name = "fake"

    def __init__(
        self,
        max_workers: int = 2,
        data_root: Path | None = None,
        idle_exit: float = 2.0,
        heartbeat: float = 0.5,
    ):
        self.max_workers = max_workers
        self.started: list[str] = []  # every worker ever launched, in order
        self.alive: list[str] = []  # launched and not reaped yet
        self.trimmed: list[str] = []
        self._exits: list[ExitedWorker] = []
        # spool-driven mode: a real worker loop per worker, in a thread
        self.spool = Spool(data_root).ensure() if data_root is not None else None
        self.idle_exit = idle_exit
        self.heartbeat = heartbeat
        self.workers: dict[str, ThreadWorker] = {}

    # what a test does: manual mode
    def exit(self, worker_id: str, returncode: int | None, ran_seconds: float, detail: str = "") -> None:
        if worker_id in self.workers:
            raise ValueError(f"{worker_id} runs the real worker loop: kill() it, or let it idle out")
        self.alive.remove(worker_id)
        self._exits.append(ExitedWorker(worker_id, returncode, ran_seconds, detail))

    def crash_all(self, returncode: int = 1, ran_seconds: float = 1.0) -> None:
        for worker_id in list(self.alive):
            self.exit(worker_id, returncode, ran_seconds)

    # what a test does: spool-driven mode
    def kill(self, worker_id: str) -> None:
        """SIGKILL from outside: the worker stops at its next image boundary or claim."""
        self.workers[worker_id].killed.set()

    def working(self, worker_id: str) -> bool:
        """Whether the worker's thread runs (a process that exists)."""
        worker = self.workers.get(worker_id)
        return worker is not None and worker.thread.is_alive()

    # the launcher contract
    def running(self) -> list[str]:
        return list(self.alive)

    def launch(self, now: float) -> str:
        worker_id = f"fake-{len(self.started) + 1}"
        self.started.append(worker_id)
        self.alive.append(worker_id)
        if self.spool is not None:
            worker = ThreadWorker(self.spool, worker_id, self.heartbeat, self.idle_exit, now)
            self.workers[worker_id] = worker
            worker.thread.start()
        return worker_id

    def reap(self, now: float) -> list[ExitedWorker]:
        exits, self._exits = self._exits, []
        for worker_id in list(self.alive):
            worker = self.workers.get(worker_id)
            if worker is not None and not worker.thread.is_alive():
                self.alive.remove(worker_id)
                exits.append(ExitedWorker(worker_id, worker.returncode, now - worker.started, worker.detail))
        return exits

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        if self.spool is None:
            while len(self.alive) > wanted:
                idle = [w for w in self.alive if w not in busy]
                if not idle:
                    return
                self.trimmed.append(idle[-1])
                self.exit(idle[-1], 0, 100.0)
            return
        # as a SIGTERM: the worker leaves at its next image or poll, reaped later
        staying = [w for w in self.alive if not self.workers[w].stopping]  # stopping: on their way out
        surplus = len(staying) - wanted
        for worker_id in reversed(staying):  # the newest first
            if surplus <= 0:
                return
            if worker_id not in busy:
                self.workers[worker_id].stopping = True
                self.trimmed.append(worker_id)
                surplus -= 1

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        if self.spool is None:
            for worker_id in list(self.alive):
                self.exit(worker_id, 0, 100.0)
            return self.reap(0.0)
        live = [self.workers[w] for w in self.alive]
        for worker in live:
            worker.stopping = True
        deadline = time.monotonic() + grace
        for worker in live:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
            if worker.thread.is_alive():
                log.warning("fake worker %s did not stop within %.0fs: killing it", worker.worker_id, grace)
                worker.killed.set()
                worker.thread.join(grace)  # a thread stuck outside the worker loop cannot be killed
        return self.reap(time.time())
