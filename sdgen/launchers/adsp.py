"""ADSP (AE5) workers: each run-once job runs `sdgen worker` on the shared data directory.

Built around ae5-tools' known bugs (seen in ae5-tools 0.7.3): its job_create POST is
retried on 502 and can create a job twice, so job names are deterministic and an existing
job of that name is adopted before creating again; its wait loop can hang, so runs are
polled here, one cheap `runs/{id}` request each, with a capped backoff and a start
deadline. The jobs file, trimming and waiting loops are the job-launcher base's (jobs.py).
Credentials stay in this process: job variables carry only what a
worker needs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults, settings
from sdgen.exceptions import UserError
from sdgen.launchers import jobs
from sdgen.launchers.base import ExitedWorker, plain_names, worker_settings

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "stopped", "error"}
KNOWN = TERMINAL | {"initial", "running"}
INSTALL_HINT = (
    "ae5-tools is not installed: `conda install -c ae5-admin ae5-tools` (it is not on "
    "PyPI; anaconda-project.yml lists it)"
)


def project_id(explicit: str | None = None) -> str:
    """`--adsp-project`, else this session's or job's own project (TOOL_PROJECT_URL in a
    session, APP_SOURCE in a job: .../projects/<32hex>/...)."""
    if explicit:
        return explicit
    url = os.environ.get("TOOL_PROJECT_URL") or os.environ.get("APP_SOURCE")
    if not url:
        raise UserError(
            "cannot tell which ADSP project to run jobs in: run inside an ADSP session or pass --adsp-project a0-<id>"
        )
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
    return AEUserSession(
        os.environ["AE5_HOSTNAME"], os.environ["AE5_USERNAME"], os.environ["AE5_PASSWORD"], persist=False
    )


def worker_variables(data_root: Path, worker_id: str, idle_exit: float, heartbeat: float) -> dict[str, str]:
    """Everything a job's worker needs, and nothing else: where and who it is, and the
    daemon's engine settings (SDGEN_PRECISION, KERAS_BACKEND, ...); no credentials of any
    kind (the worker never talks to AE5 or MLflow)."""
    return plain_names(
        {
            **worker_settings(os.environ),
            "SDGEN_DATA": str(data_root),
            "SDGEN_WORKER_ID": worker_id,
            "SDGEN_IDLE_EXIT": str(idle_exit),
            "SDGEN_HEARTBEAT": str(heartbeat),
        },
        "ADSP jobs",
    )


@dataclass
class Job(jobs.Job):
    run_id: str = ""
    next_poll: float = 0.0
    poll_every: float = defaults.ADSP_POLL_MIN_SECONDS


class AdspLauncher(jobs.JobLauncher):
    """end_all (a one-shot run is over) stops every run, waits until AE5 reports each ended
    and deletes the runs and jobs (unless --adsp-keep-jobs): nothing of the run is left."""

    name, label, job_cls, initial_state = "adsp", "ADSP", Job, "creating"

    def __init__(
        self,
        data_root: Path,
        max_workers: int | None = None,
        project: str | None = None,
        resource_profile: str | None = None,
        keep_jobs: bool = False,
        idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
        heartbeat: float = defaults.HEARTBEAT_SECONDS,
        session=None,
        **_ignored,
    ):
        super().__init__(data_root)
        self.max_workers = settings.get("ADSP_WORKER_MAX") if max_workers is None else max_workers
        self.session = session or open_session()
        self.project = project_id(project)
        self.resource_profile = resource_profile
        self.keep_jobs = keep_jobs
        self.idle_exit, self.heartbeat = idle_exit, heartbeat
        self._undeleted: dict[str, Job] = {}  # ended jobs whose job/run records a delete missed

    def _ae5_failed(self, what: str, e: Exception, now: float) -> None:
        self.warn.fail(
            "AE5",
            now,
            "AE5 call failed (%s: %s: %s); retrying on later ticks",
            what,
            type(e).__name__,
            " ".join(str(e).split())[:200],
        )

    def _ae5_ok(self, now: float) -> None:
        self.warn.ok("AE5", now, "AE5 answers again after %.0fs")

    # -- submit / poll / cancel -------------------------------------------------------------
    def submit(self, job: Job, now: float) -> None:
        self._create(job, now)

    def _create(self, job: Job, now: float) -> None:
        try:
            existing = self._find_job(job.name)
            if existing is None:
                record = self.session.job_create(
                    self.project,
                    name=job.name,
                    command="worker",
                    resource_profile=self.resource_profile,
                    variables=worker_variables(self.data_root, job.name, self.idle_exit, self.heartbeat),
                    run=True,
                    wait=False,
                )
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

    def poll(self, now: float) -> list[ExitedWorker]:
        """One cheap `runs/{id}` request per job that is due, with a capped backoff."""
        exited = []
        for job in list(self.jobs.values()):
            if now < job.next_poll:
                continue
            try:
                if job.state == "creating" or not job.run_id:
                    if self.ending:  # never create a job while ending them (cancel adopts)
                        continue
                    self._create(job, now)
                    if not job.run_id:
                        job.next_poll = now + defaults.ADSP_POLL_MIN_SECONDS
                        continue
                info = self.session.api("get", f"runs/{job.run_id}")
                self._ae5_ok(now)
            except Exception as e:  # noqa: BLE001 - AE5 unreachable: keep the job, poll later
                self._ae5_failed(f"polling {job.name}", e, now)
                job.next_poll = now + job.poll_every
                job.poll_every = min(defaults.ADSP_POLL_MAX_SECONDS, job.poll_every * 2)
                continue
            state = str(info.get("state", "unknown"))
            if state not in KNOWN:
                self.warn.fail(
                    (job.name, state),
                    now,
                    "ADSP run %s of job %s is in unknown state %r: still polling it",
                    job.run_id,
                    job.name,
                    state,
                )
            if state == "initial" and now - job.created > defaults.ADSP_START_DEADLINE_SECONDS:
                log.error(
                    "ADSP job %s did not start within %.0f min: stopping it",
                    job.name,
                    defaults.ADSP_START_DEADLINE_SECONDS / 60,
                )
                self._quietly(lambda job=job: self.session.run_stop(job.run_id))
                state = "failed"
            job.state = state
            if state in TERMINAL:
                exited.append(self._finish(job, now))
            else:
                job.poll_every = min(defaults.ADSP_POLL_MAX_SECONDS, job.poll_every * 1.5)
                job.next_poll = now + job.poll_every
        return exited

    def _finish(self, job: Job, now: float) -> ExitedWorker:
        ok = job.state == "completed"
        stopped_by_us = self.stopped_by_us(job) and not ok
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
        # Stopped by sdgen: ended from outside, like a cancelled Slurm job, so a job stopped
        # soon after it started never counts as a start-up failure.
        return ExitedWorker(job.name, None if stopped_by_us else 0 if ok else 1, now - job.created)

    def cancel(self, job: Job, now: float, why: str, again: bool = False) -> bool:
        """Stop the job's run. A job whose create call failed is first looked for on AE5
        (the create may have gone through), never created again."""
        if not job.run_id and not self._adopt_created(job):
            return False
        if job.state in TERMINAL:
            return False  # ended: the next poll reaps it
        log.info("stopping ADSP job %s: %s", job.name, why)
        if self._quietly(lambda job=job: self.session.run_stop(job.run_id)) is None:
            return False
        job.next_poll = now  # see it end on the next tick
        return True

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

    # -- the base's hooks -------------------------------------------------------------------
    def idle_state(self, job: Job) -> str | None:
        return "after" if job.run_id and job.state == "running" else None

    def poll_soon(self) -> None:
        for job in self.jobs.values():
            job.next_poll = 0.0

    def end_round(self) -> None:
        for name, job in list(self._undeleted.items()):
            if self._delete(job):
                del self._undeleted[name]

    def leftovers(self) -> list[str]:
        return sorted(self.jobs) + sorted(self._undeleted)

    def left_behind(self, left: list[str], limit: float) -> None:
        log.error("ADSP job(s) %s still on AE5 after %.0fs: stop and delete them in the AE5 UI", " ".join(left), limit)

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
