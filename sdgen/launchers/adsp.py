"""ADSP (AE5) workers: each run-once job runs `sdgen worker` on the shared data directory.

Built around ae5-tools' known bugs (../shared/research/ae5-tools.md): its job_create POST is
retried on 502 and can create a job twice, so job names are deterministic and an existing
job of that name is adopted before creating again; its wait loop can hang, so runs are
polled here, one cheap `runs/{id}` request each, with a capped backoff and a start
deadline. The jobs this daemon launched are kept in spool/adsp-jobs.json so a restarted
daemon re-adopts them. Credentials stay in this process: job variables carry only what a
worker needs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults, settings
from sdgen.exceptions import UserError
from sdgen.launchers.base import ExitedWorker, Launcher, load_jobs, plain_names, save_jobs, worker_settings

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "stopped", "error"}
KNOWN = TERMINAL | {"initial", "running"}
POLL_MIN, POLL_MAX = 2.0, 30.0
TRIM_AFTER = 10.0  # seconds a surplus job must hold no ticket before it is stopped
START_DEADLINE = 20 * 60.0  # a run still "initial" after this is stopped and counted failed
INSTALL_HINT = ("ae5-tools is not installed: `conda install -c ae5-admin ae5-tools` (it is not on "
                "PyPI; anaconda-project.yml lists it)")


def project_id(explicit: str | None = None) -> str:
    """`--adsp-project`, else this session's or job's own project (TOOL_PROJECT_URL in a
    session, APP_SOURCE in a job: .../projects/<32hex>/...)."""
    if explicit:
        return explicit
    url = os.environ.get("TOOL_PROJECT_URL") or os.environ.get("APP_SOURCE")
    if not url:
        raise UserError("cannot tell which ADSP project to run jobs in: run inside an ADSP "
                        "session or pass --adsp-project a0-<id>")
    try:
        return "a0-" + url.split("/")[4]
    except IndexError:
        raise UserError(f"cannot read a project id from {url!r}: pass --adsp-project a0-<id>") from None


def open_session():
    """An AEUserSession from AE5_HOSTNAME / AE5_USERNAME / AE5_PASSWORD (ADSP secrets first)."""
    try:
        import ae5_tools
        from ae5_tools.api import AEUserSession
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    loader = getattr(ae5_tools, "load_ae5_user_secrets", None)
    if loader is not None:
        try:
            loader()
        except Exception as e:  # noqa: BLE001 - no secrets folder outside ADSP
            log.debug("no ADSP user secrets loaded: %s", e)
    missing = [v for v in ("AE5_HOSTNAME", "AE5_USERNAME", "AE5_PASSWORD") if not os.environ.get(v)]
    if missing:
        raise UserError(f"{', '.join(missing)} not set: define them as ADSP secrets or environment variables")
    return AEUserSession(os.environ["AE5_HOSTNAME"], os.environ["AE5_USERNAME"],
                         os.environ["AE5_PASSWORD"], persist=False)


def worker_variables(data_root: Path, worker_id: str, idle_exit: float, heartbeat: float) -> dict[str, str]:
    """Everything a job's worker needs, and nothing else: where and who it is, and the
    daemon's engine settings (SDGEN_PRECISION, KERAS_BACKEND, ...); no credentials of any
    kind (the worker never talks to AE5 or MLflow)."""
    return plain_names({**worker_settings(os.environ), "SDGEN_DATA": str(data_root), "SDGEN_WORKER_ID": worker_id,
                        "SDGEN_IDLE_EXIT": str(idle_exit), "SDGEN_HEARTBEAT": str(heartbeat)}, "ADSP jobs")


@dataclass
class Job:
    name: str
    job_id: str = ""
    run_id: str = ""
    state: str = "creating"
    created: float = 0.0
    next_poll: float = 0.0
    poll_every: float = POLL_MIN


class AdspLauncher(Launcher):
    name = "adsp"

    def __init__(self, data_root: Path, max_workers: int | None = None, project: str | None = None,
                 resource_profile: str | None = None, keep_jobs: bool = False,
                 idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
                 heartbeat: float = defaults.HEARTBEAT_SECONDS, session=None, **_ignored):
        self.data_root = Path(data_root)
        self.max_workers = max_workers or settings.get("ADSP_WORKER_MAX")
        self.session = session or open_session()
        self.project = project_id(project)
        self.resource_profile = resource_profile
        self.keep_jobs = keep_jobs
        self.idle_exit, self.heartbeat = idle_exit, heartbeat
        self.state_file = self.data_root / "spool" / "adsp-jobs.json"
        self.jobs: dict[str, Job] = {}
        self._down_since: float | None = None
        self._unknown_logged: set[tuple[str, str]] = set()
        self._idle_since: dict[str, float] = {}
        self._stopped: set[str] = set()  # jobs sdgen itself stopped: their end is no failure
        self._undeleted: dict[str, Job] = {}  # ended jobs whose job/run records a delete missed
        self._ending = False
        self._loaded = False

    def attach(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load()

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> None:
        self.jobs = load_jobs(self.state_file, Job)
        if self.jobs:
            log.info("re-adopting %d ADSP job(s) from an earlier daemon: %s", len(self.jobs),
                     ", ".join(sorted(self.jobs)))

    def _save(self) -> None:
        save_jobs(self.state_file, self.jobs)

    def _ae5_failed(self, what: str, e: Exception, now: float) -> None:
        if self._down_since is None:
            self._down_since = now
            log.warning("AE5 call failed (%s: %s: %s); retrying on later ticks", what,
                        type(e).__name__, " ".join(str(e).split())[:200])

    def _ae5_ok(self, now: float) -> None:
        if self._down_since is not None:
            log.warning("AE5 answers again after %.0fs", now - self._down_since)
            self._down_since = None

    # -- the interface ----------------------------------------------------------------------
    def running(self) -> list[str]:
        self.attach()
        return list(self.jobs)

    def launch(self, now: float) -> str:
        self.attach()
        name = f"sdgen-w-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        job = Job(name=name, created=now)
        self.jobs[name] = job
        self._save()  # before the POST: a crash after it must not lose the job
        self._create(job, now)
        return name

    def _create(self, job: Job, now: float) -> None:
        try:
            existing = self._find_job(job.name)
            if existing is None:
                record = self.session.job_create(
                    self.project, name=job.name, command="worker",
                    resource_profile=self.resource_profile,
                    variables=worker_variables(self.data_root, job.name, self.idle_exit, self.heartbeat),
                    run=True, wait=False)
                job.job_id = record["id"]
            else:
                log.warning("ADSP job %s already exists (a retried create): adopting it", job.name)
                job.job_id = existing["id"]
            runs = self.session.job_runs(job.job_id)
            if runs:
                job.run_id = runs[0]["id"]
                job.state = runs[0].get("state", "initial")
            self._ae5_ok(now)
        except Exception as e:  # noqa: BLE001 - a 502, RetryError, timeout: find it next tick
            self._ae5_failed(f"creating job {job.name}", e, now)
            job.state = "creating"
        self._save()

    def _find_job(self, name: str) -> dict | None:
        return next((j for j in self.session.job_list() if j.get("name") == name), None)

    def reap(self, now: float) -> list[ExitedWorker]:
        self.attach()
        exited = []
        for job in list(self.jobs.values()):
            if now < job.next_poll:
                continue
            try:
                if job.state == "creating" or not job.run_id:
                    if self._ending:  # never create a job while ending them (end_all adopts)
                        continue
                    self._create(job, now)
                    if not job.run_id:
                        job.next_poll = now + POLL_MIN
                        continue
                info = self.session.api("get", f"runs/{job.run_id}")
                self._ae5_ok(now)
            except Exception as e:  # noqa: BLE001 - AE5 unreachable: keep the job, poll later
                self._ae5_failed(f"polling {job.name}", e, now)
                job.next_poll = now + job.poll_every
                job.poll_every = min(POLL_MAX, job.poll_every * 2)
                continue
            state = str(info.get("state", "unknown"))
            if state not in KNOWN and (job.name, state) not in self._unknown_logged:
                self._unknown_logged.add((job.name, state))
                log.warning("ADSP run %s of job %s is in unknown state %r: still polling it",
                            job.run_id, job.name, state)
            if state == "initial" and now - job.created > START_DEADLINE:
                log.error("ADSP job %s did not start within %.0f min: stopping it", job.name, START_DEADLINE / 60)
                self._quietly(lambda: self.session.run_stop(job.run_id))
                state = "failed"
            job.state = state
            if state in TERMINAL:
                exited.append(self._finish(job, now))
            else:
                job.poll_every = min(POLL_MAX, job.poll_every * 1.5)
                job.next_poll = now + job.poll_every
        self._save()
        return exited

    def _finish(self, job: Job, now: float) -> ExitedWorker:
        ok = job.state == "completed"
        stopped_by_us = job.name in self._stopped and not ok
        self._stopped.discard(job.name)
        if stopped_by_us:
            log.info("ADSP job %s ended %s (stopped by sdgen)", job.name, job.state)
        elif not ok:
            text = self._quietly(lambda: self.session.run_log(job.run_id)) or ""
            logs = self.data_root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / f"worker-{job.name}.log").write_text(text if isinstance(text, str) else json.dumps(text))
            log.error("ADSP job %s ended %s; its log is in logs/worker-%s.log", job.name, job.state, job.name)
        if not self.keep_jobs and not self._delete(job):
            self._undeleted[job.name] = job
        del self.jobs[job.name]
        # Stopped by sdgen: ended from outside, like a cancelled Slurm job, so a job stopped
        # soon after it started never counts as a start-up failure.
        return ExitedWorker(job.name, None if stopped_by_us else 0 if ok else 1, now - job.created)

    def _delete(self, job: Job) -> bool:
        """Delete a finished job's run and job records; False if AE5 did not take it."""
        run_gone = not job.run_id or self._quietly(lambda: self.session.run_delete(job.run_id), True) is not None
        job_gone = not job.job_id or self._quietly(lambda: self.session.job_delete(job.job_id), True) is not None
        return run_gone and job_gone

    def _quietly(self, call, done=None):
        """call(), or None if it raised; `done` stands for a call that returns nothing."""
        try:
            result = call()
            return done if result is None else result
        except Exception as e:  # noqa: BLE001 - cleanup is best effort
            log.warning("ADSP call failed: %s", e)
            return None

    def summary(self) -> dict[str, int]:
        self.attach()
        out: dict[str, int] = {}
        for job in self.jobs.values():
            out[job.state] = out.get(job.state, 0) + 1
        return out

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        """Stop jobs beyond what the queue needs (e.g. after a cancel) once they have held no
        ticket for TRIM_AFTER seconds: listings race with claims, and stopping a job that
        just claimed a ticket would cost that ticket an attempt."""
        self.attach()
        surplus = len(self.jobs) - wanted
        for job in list(self.jobs.values()):
            if job.name in busy or surplus <= 0 or not job.run_id or job.state != "running":
                self._idle_since.pop(job.name, None)
                continue
            since = self._idle_since.setdefault(job.name, now)
            if now - since >= TRIM_AFTER:
                log.info("stopping ADSP job %s: no work left for it", job.name)
                if self._quietly(lambda: self.session.run_stop(job.run_id)) is not None:
                    self._stopped.add(job.name)
                    job.next_poll = now
                    surplus -= 1
                self._idle_since.pop(job.name, None)

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        """Jobs are not stopped with the daemon: for up to `grace` seconds it waits for them
        to finish and leave (they exit once the spool is idle); any still running then are
        re-adopted from spool/adsp-jobs.json by the next daemon."""
        self.attach()
        exited = []
        deadline = time.monotonic() + grace
        while self.jobs and time.monotonic() < deadline:
            for job in self.jobs.values():
                job.next_poll = 0.0
            exited.extend(self.reap(time.time()))
            if self.jobs:
                time.sleep(1.0)
        if self.jobs:
            log.info("leaving %d ADSP job(s) running for the next daemon to re-adopt", len(self.jobs))
        self._save()
        return exited

    def end_all(self, grace: float) -> list[ExitedWorker]:
        """A one-shot run is over: stop every job's run (none holds a ticket: the queue is
        idle, or launching is blocked), wait until AE5 reports each run ended, and delete the
        runs and jobs (unless --adsp-keep-jobs), so that nothing of the run is left on AE5.
        AE5 calls that fail are repeated; at most max(grace, 60) s in all."""
        self.attach()
        exited = []
        self._ending = True
        limit = max(grace, 60.0)
        deadline = time.monotonic() + limit
        while (self.jobs or self._undeleted) and time.monotonic() < deadline:
            for job in list(self.jobs.values()):
                if not job.run_id and not self._adopt_created(job):
                    continue
                if job.state not in TERMINAL and job.name not in self._stopped:
                    if self._quietly(lambda: self.session.run_stop(job.run_id)) is not None:
                        log.info("stopping ADSP job %s: the run is over", job.name)
                        self._stopped.add(job.name)
                job.next_poll = 0.0
            exited.extend(self.reap(time.time()))
            for name, job in list(self._undeleted.items()):
                if self._delete(job):
                    del self._undeleted[name]
            if self.jobs or self._undeleted:
                time.sleep(1.0)
        left = self.leftovers()
        if left:
            log.error("ADSP job(s) %s still on AE5 after %.0fs: stop and delete them in the AE5 UI",
                      " ".join(left), limit)
        self._save()
        return exited

    def leftovers(self) -> list[str]:
        return sorted(self.jobs) + sorted(self._undeleted)

    def _adopt_created(self, job: Job) -> bool:
        """A job whose create call failed: find it on AE5 (the create may have gone through)
        without creating it again. False: not there (dropped, nothing to stop) or AE5 did not
        answer (tried again)."""
        try:
            found = self._find_job(job.name)
            if found is None:
                del self.jobs[job.name]
                return False
            job.job_id = found["id"]
            runs = self.session.job_runs(job.job_id)
        except Exception as e:  # noqa: BLE001 - AE5 unreachable: try again
            self._ae5_failed(f"finding job {job.name}", e, time.time())
            return False
        if runs:
            job.run_id, job.state = runs[0]["id"], runs[0].get("state", "initial")
            return True
        if not self.keep_jobs:  # a job without a run: nothing to stop
            self._quietly(lambda: self.session.job_delete(job.job_id))
        del self.jobs[job.name]
        return False


def list_profiles(session=None) -> list[dict]:
    session = session or open_session()
    return session.resource_profile_list()
