"""An in-memory launcher for driving `Scheduler.tick` through crashes, backoff and blocking
without processes: a test says when each of its workers exits and how."""

from __future__ import annotations

from sdgen.launchers.base import ExitedWorker, Launcher


class FakeLauncher(Launcher):
    name = "fake"

    def __init__(self, max_workers: int = 2):
        self.max_workers = max_workers
        self.started: list[str] = []  # every worker ever launched, in order
        self.alive: list[str] = []
        self.trimmed: list[str] = []
        self._exits: list[ExitedWorker] = []

    # what a test does
    def exit(self, worker_id: str, returncode: int | None, ran_seconds: float, detail: str = "") -> None:
        self.alive.remove(worker_id)
        self._exits.append(ExitedWorker(worker_id, returncode, ran_seconds, detail))

    def crash_all(self, returncode: int = 1, ran_seconds: float = 1.0) -> None:
        for worker_id in list(self.alive):
            self.exit(worker_id, returncode, ran_seconds)

    # the launcher contract
    def running(self) -> list[str]:
        return list(self.alive)

    def launch(self, now: float) -> str:
        worker_id = f"fake-{len(self.started) + 1}"
        self.started.append(worker_id)
        self.alive.append(worker_id)
        return worker_id

    def reap(self, now: float) -> list[ExitedWorker]:
        exits, self._exits = self._exits, []
        return exits

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        while len(self.alive) > wanted:
            idle = [w for w in self.alive if w not in busy]
            if not idle:
                return
            self.trimmed.append(idle[-1])
            self.exit(idle[-1], 0, 100.0)

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        for worker_id in list(self.alive):
            self.exit(worker_id, 0, 100.0)
        return self.reap(0.0)
