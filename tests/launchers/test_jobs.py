"""The job-launcher base (sdgen/launchers/jobs.py) with a tiny in-memory subclass: the test
scripts what each submit, poll and cancel does; the base does the rest (jobs file, naming,
warn-once, trimming, summary, the waiting loops)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest

from sdgen import defaults
from sdgen.launchers import jobs
from sdgen.launchers.base import ExitedWorker


@dataclass
class MemJob(jobs.Job):
    note: str = ""


class MemLauncher(jobs.JobLauncher):
    """Jobs live in `self.service` ({job_id: state}), which survives a "restart" (a new
    instance given the same dict), like a cluster does."""

    name, label, job_cls, initial_state = "mem", "Mem", MemJob, "SUBMITTING"
    end_poll_every = 0.01

    def __init__(self, data_root, service: dict, max_workers: int = 3):
        super().__init__(data_root)
        self.max_workers = max_workers
        self.service = service
        self.down = False  # poll raises, like an unreachable service
        self.refuse = False  # submit is refused
        self.cancels: list[str] = []

    def submit(self, job, now):
        if self.refuse:
            return ExitedWorker(job.name, 1, 0.0, "refused")
        job.job_id = f"id-{len(self.service) + 1}"
        job.state = self.service[job.job_id] = "PENDING"
        return None

    def poll(self, now):
        if self.down:
            self.warn.fail("Mem", now, "Mem poll failed; retrying on later ticks")
            return []
        self.warn.ok("Mem", now, "Mem answers again after %.0fs")
        exited = []
        for job in self.jobs.values():
            job.state = self.service[job.job_id]
            if job.state in ("DONE", "CANCELLED"):
                code = None if self.stopped_by_us(job) else 0
                exited.append(ExitedWorker(job.name, code, now - job.created))
        return exited

    def cancel(self, job, now, why, again=False):
        self.cancels.append(job.name)
        self.service[job.job_id] = "CANCELLED"
        return True

    def idle_state(self, job):
        return "now" if job.state == "PENDING" else "after"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "spool" / "tmp").mkdir(parents=True)
    return tmp_path


def saved(root) -> dict:
    return json.loads((root / "spool" / "mem-jobs.json").read_text())


def test_jobs_are_saved_before_submission_and_re_adopted_after_a_restart(root, caplog):
    service: dict = {}
    first = MemLauncher(root, service)
    seen = []
    first.submit = lambda job, now, real=first.submit: seen.append(dict(saved(root))) or real(job, now)
    a = first.launch(100.0)
    assert a.startswith("sdgen-w-19700101-000140-") and a in seen[0]  # on disk before submit ran
    b = first.launch(101.0)
    assert a != b and saved(root)[b]["job_id"] == "id-2"
    caplog.set_level(logging.INFO)
    again = MemLauncher(root, service)  # the daemon was killed and restarted
    assert sorted(again.running()) == sorted([a, b])
    assert "re-adopting 2 Mem job(s) of an earlier daemon" in caplog.text
    assert isinstance(again.jobs[a], MemJob) and again.jobs[a].job_id == "id-1"
    service["id-1"] = "DONE"
    [gone] = again.reap(200.0)
    assert (gone.worker_id, gone.returncode, gone.ran_seconds) == (a, 0, 100.0)
    assert again.running() == [b] and list(saved(root)) == [b]
    assert again.reap(201.0) == []  # reaped once


def test_a_refused_submission_is_reaped_as_a_failed_worker_and_not_kept(root):
    launcher = MemLauncher(root, {})
    launcher.refuse = True
    name = launcher.launch(0.0)
    assert launcher.running() == [] and saved(root) == {}
    assert launcher.reap(1.0) == [ExitedWorker(name, 1, 0.0, "refused")]
    assert launcher.reap(2.0) == []


def test_a_failing_poll_warns_once_and_once_more_when_it_is_back(root, caplog):
    service: dict = {}
    launcher = MemLauncher(root, service)
    launcher.launch(0.0)
    launcher.down = True
    for t in range(1, 6):
        assert launcher.reap(float(t)) == []
    assert caplog.text.count("Mem poll failed") == 1 and launcher.warn.since("Mem") == 1.0
    launcher.down = False
    launcher.reap(31.0)
    launcher.reap(32.0)
    assert caplog.text.count("Mem answers again after 30s") == 1 and launcher.warn.since("Mem") is None
    launcher.down = True
    launcher.reap(40.0)
    assert caplog.text.count("Mem poll failed") == 2  # a new outage is news again


def test_warn_once_by_key(caplog):
    warn = jobs.WarnOnce(logging.getLogger("t"))
    assert warn.fail(("job", "odd"), 0.0, "job %s in state %s", "job", "odd")
    assert not warn.fail(("job", "odd"), 1.0, "job %s in state %s", "job", "odd")
    assert warn.fail(("other", "odd"), 1.0, "job %s in state %s", "other", "odd")
    assert not warn.ok("never failed", 2.0, "back after %.0fs")
    assert caplog.text.count("in state odd") == 2 and "back after" not in caplog.text


def test_trim_cancels_pending_jobs_at_once_and_idle_running_ones_after_a_while(root):
    service: dict = {}
    launcher = MemLauncher(root, service, max_workers=4)
    names = [launcher.launch(float(t)) for t in range(4)]  # created 0, 1, 2, 3
    for n in names[:3]:
        service[launcher.jobs[n].job_id] = "RUNNING"
    launcher.reap(10.0)
    # wanted 1 of 4: the pending one goes at once, then the newest idle running ones
    launcher.trim(10.0, busy={names[2]}, wanted=1)
    assert launcher.cancels == [names[3]]
    launcher.trim(10.0 + defaults.JOB_TRIM_AFTER_SECONDS - 1, busy={names[2]}, wanted=1)
    assert launcher.cancels == [names[3]]  # not idle long enough, and not cancelled twice
    launcher.trim(10.0 + defaults.JOB_TRIM_AFTER_SECONDS, busy={names[2]}, wanted=1)
    assert launcher.cancels == [names[3], names[1], names[0]]  # the busy one stays
    exited = launcher.reap(30.0)
    assert {w.worker_id for w in exited} == set(names) - {names[2]}
    assert {w.returncode for w in exited} == {None}  # stopped by sdgen: no failure
    assert launcher.running() == [names[2]]
    launcher.trim(100.0, busy=set(), wanted=1)
    assert len(launcher.cancels) == 3  # down to `wanted`: nothing more


def test_a_job_that_claims_a_ticket_is_idle_again_from_zero(root):
    service: dict = {}
    launcher = MemLauncher(root, service)
    [name] = [launcher.launch(0.0)]
    service["id-1"] = "RUNNING"
    launcher.reap(0.0)
    launcher.trim(1.0, busy=set(), wanted=0)
    launcher.trim(5.0, busy={name}, wanted=0)  # it claimed a ticket
    launcher.trim(1.0 + defaults.JOB_TRIM_AFTER_SECONDS, busy=set(), wanted=0)
    assert launcher.cancels == []
    launcher.trim(1.0 + 2 * defaults.JOB_TRIM_AFTER_SECONDS, busy=set(), wanted=0)
    assert launcher.cancels == [name]


def test_summary_counts_jobs_by_state(root):
    service: dict = {}
    launcher = MemLauncher(root, service)
    names = [launcher.launch(0.0) for _ in range(3)]
    service[launcher.jobs[names[0]].job_id] = "RUNNING"
    launcher.reap(1.0)
    assert launcher.summary() == {"RUNNING": 1, "PENDING": 2}
    assert MemLauncher(root, service).summary() == {"RUNNING": 1, "PENDING": 2}


def test_stop_all_leaves_jobs_for_the_next_daemon_and_end_all_ends_them(root):
    service: dict = {}
    launcher = MemLauncher(root, service)
    names = [launcher.launch(0.0) for _ in range(2)]
    assert launcher.stop_all(grace=0.0) == [] and sorted(saved(root)) == sorted(names)
    again = MemLauncher(root, service)
    exited = again.end_all(grace=0.0)
    assert sorted(w.worker_id for w in exited) == sorted(names) and again.leftovers() == []
    assert sorted(again.cancels) == sorted(names) and saved(root) == {}
