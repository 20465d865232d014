"""What every launcher of recorded workers shares: local processes, ADSP jobs and Slurm jobs.

`JobLauncher` owns the skeleton: the jobs file (spool/<name>-jobs.json, saved before each
submission so a restarted daemon re-adopts what a killed one launched), naming, warn-once
logging, reaping bookkeeping, idle trimming, the summary, and the waiting loops of
`stop_all` / `end_all`. A subclass says only how to submit a job, poll them, and cancel one.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sdgen import defaults
from sdgen.launchers.base import ExitedWorker, Launcher, load_jobs, save_jobs
from sdgen.spool.layout import Layout
from sdgen.warnonce import WarnOnce

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One recorded worker; subclasses add their launcher's fields. Every field has a default
    except the name, so a saved file reads back into the same class."""

    name: str
    job_id: str = ""
    state: str = ""
    created: float = 0.0


class JobLauncher(Launcher):
    """A launcher whose workers are recorded jobs. Subclasses set `name`, `label` (how a
    person calls the service, e.g. "Slurm"), `job_cls` and `initial_state`, and implement
    `submit`, `poll` and `cancel`; the hooks below them have defaults."""

    label = ""
    job_cls: type[Job] = Job
    initial_state = ""
    wait_on_stop = True  # stop_all waits up to `grace` for jobs to leave by themselves
    cancel_again_every: float | None = None  # end_all repeats cancel() this often (None: once)
    end_poll_every = defaults.JOB_END_POLL_SECONDS  # seconds between polls while end_all waits

    def __init__(self, data_root: Path):
        self.data_root = Path(data_root)
        self.state_file = Layout(self.data_root).jobs_file(self.name)
        self.jobs: dict[str, Job] = {}
        self.warn = WarnOnce(logging.getLogger(type(self).__module__))
        self.ending = False  # end_all runs: never submit again
        self._stopped: set[str] = set()  # jobs sdgen itself ended: their end is no failure
        self._idle_since: dict[str, float] = {}
        self._refused: list[ExitedWorker] = []
        self._saved: bytes | None = None
        self._loaded = False

    # -- what a subclass implements ---------------------------------------------------------
    def submit(self, job: Job, now: float) -> ExitedWorker | None:
        """Start the job (its record is saved already). An ExitedWorker: it was refused (the
        record is dropped and the refusal is reaped as a worker that failed at once)."""
        raise NotImplementedError

    def poll(self, now: float) -> list[ExitedWorker]:
        """Update each job's state; an ExitedWorker for each job that ended (the base drops
        its record)."""
        raise NotImplementedError

    def cancel(self, job: Job, now: float, why: str, again: bool = False) -> bool:
        """Ask the job to end (`again`: it was asked before; say nothing). True if asked."""
        raise NotImplementedError

    def adopt(self, jobs: dict[str, Job]) -> dict[str, Job]:
        """The jobs of an earlier daemon that are still there (a hook: e.g. find by name a
        job whose id was not saved, drop a process that no longer exists)."""
        return jobs

    def describe(self, job: Job) -> str:
        return job.name

    def state_key(self, job: Job) -> str:
        """How `summary()` counts a job."""
        return job.state

    def idle_state(self, job: Job) -> str | None:
        """For trimming: "now" (holds nothing: cancel at once), "after" (may hold a ticket:
        cancel once idle defaults.JOB_TRIM_AFTER_SECONDS) or None (leave it)."""
        return None

    def poll_soon(self) -> None:
        """Make the next poll() look at every job, whatever its schedule."""

    def end_round(self) -> None:
        """end_all's clean-up once per round (e.g. deletes that failed before)."""

    def left_behind(self, left: list[str], limit: float) -> None:
        log.error("%s job(s) %s still there after %.0fs", self.label, " ".join(left), limit)

    # -- persistence ------------------------------------------------------------------------
    def attach(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        loaded = load_jobs(self.state_file, self.job_cls)
        self.jobs = self.adopt(dict(loaded))
        if self.jobs:
            self.log_adopted()
        if self.jobs.keys() != loaded.keys():
            self._save()

    def log_adopted(self) -> None:
        log.info(
            "re-adopting %d %s job(s) of an earlier daemon: %s",
            len(self.jobs),
            self.label,
            ", ".join(self.describe(j) for j in self.jobs.values()),
        )

    def _save(self) -> None:
        data = json.dumps({n: asdict(j) for n, j in self.jobs.items()}, sort_keys=True).encode()
        if data != self._saved:  # nothing changed: no rewrite on every tick
            save_jobs(self.data_root, self.name, self.jobs)
            self._saved = data

    def new_name(self, now: float) -> str:
        """Unique, and the same for every retry of one submission (ADSP adopts by it)."""
        return f"sdgen-w-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"

    # -- the interface ----------------------------------------------------------------------
    def running(self) -> list[str]:
        self.attach()
        return list(self.jobs)

    def launch(self, now: float) -> str:
        self.attach()
        job = self.job_cls(name=self.new_name(now), state=self.initial_state, created=now)
        self.jobs[job.name] = job
        self._save()  # before the submission: a crash after it must not lose the job
        refused = self.submit(job, now)
        if refused is not None:
            self.jobs.pop(job.name, None)
            self._refused.append(refused)
        self._save()
        return job.name

    def reap(self, now: float) -> list[ExitedWorker]:
        self.attach()
        exited, self._refused = self._refused, []
        if self.jobs:
            for worker in self.poll(now):
                self.jobs.pop(worker.worker_id, None)
                self._stopped.discard(worker.worker_id)
                self._idle_since.pop(worker.worker_id, None)
                exited.append(worker)
        self._save()
        return exited

    def stopped_by_us(self, job: Job) -> bool:
        return job.name in self._stopped

    def summary(self) -> dict[str, int]:
        self.attach()
        out: dict[str, int] = {}
        for job in self.jobs.values():
            key = self.state_key(job)
            out[key] = out.get(key, 0) + 1
        return out

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        """Cancel jobs beyond what the queue needs (e.g. after a cancel): those that hold
        nothing at once, the others once they have held no ticket for defaults.JOB_TRIM_AFTER_SECONDS
        (a listing races with claims, and stopping a job that just claimed a ticket would
        cost that ticket an attempt). Pending ones first, then the newest."""
        self.attach()
        surplus = len([n for n in self.jobs if n not in self._stopped]) - wanted  # stopped: on their way out
        order = sorted(self.jobs.values(), key=lambda j: (self.idle_state(j) != "now", -j.created))
        for job in order:
            kind = self.idle_state(job)
            if surplus <= 0 or job.name in busy or job.name in self._stopped or kind is None:
                self._idle_since.pop(job.name, None)
                continue
            if kind == "after" and now - self._idle_since.setdefault(job.name, now) < defaults.JOB_TRIM_AFTER_SECONDS:
                continue
            self._idle_since.pop(job.name, None)
            if self.cancel(job, now, "no work left for it"):
                self._stopped.add(job.name)
                surplus -= 1

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        """Jobs outlive the daemon: they finish their tickets and leave once the spool is
        idle. Waits up to `grace` s for them to leave (if `wait_on_stop`, else one last
        poll); the next daemon re-adopts any still there from the jobs file."""
        self.attach()
        exited = []
        deadline = time.monotonic() + (grace if self.wait_on_stop else 0.0)
        while True:
            self.poll_soon()
            exited.extend(self.reap(time.time()))
            if not self.jobs or time.monotonic() >= deadline:
                break
            time.sleep(defaults.JOB_END_POLL_SECONDS)
        if self.jobs:
            log.info("leaving %d %s job(s) for the next daemon to re-adopt", len(self.jobs), self.label)
        self._save()
        return exited

    def end_all(self, grace: float) -> list[ExitedWorker]:
        """A one-shot run is over: cancel every job (none holds a ticket: the queue is idle,
        or launching is blocked) and wait until each has ended, so nothing of the run is left
        behind; at most max(grace, 60) s in all."""
        self.attach()
        exited = []
        self.ending = True
        limit = max(grace, 60.0)
        deadline = time.monotonic() + limit
        next_cancel = 0.0
        while self.leftovers() and time.monotonic() < deadline:
            if time.monotonic() >= next_cancel:
                for job in list(self.jobs.values()):
                    again = job.name in self._stopped
                    if again and self.cancel_again_every is None:
                        continue
                    if self.cancel(job, time.time(), "the run is over", again=again):
                        self._stopped.add(job.name)
                if self.cancel_again_every is not None:
                    next_cancel = time.monotonic() + self.cancel_again_every
            self.poll_soon()
            exited.extend(self.reap(time.time()))
            self.end_round()
            if self.leftovers():
                time.sleep(self.end_poll_every)
        left = self.leftovers()
        if left:
            self.left_behind(left, limit)
        self._save()
        return exited

    def leftovers(self) -> list[str]:
        return sorted(self.jobs)
