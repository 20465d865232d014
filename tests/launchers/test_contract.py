"""The launcher contract, the same tests for every launcher: local processes, ADSP jobs (a fake
ae5-tools whose jobs are real worker processes), Slurm jobs (a real single-node Slurm) and the
in-memory FakeLauncher of the scheduler tests (its workers: the real worker loop in threads).
The daemon relies on exactly this: ids that workers write into their leases, running() until
reaped, one ExitedWorker per worker, an ended-early worker reported as not OK, and surplus
workers gone once nothing is left to do.

Each launcher comes with a harness that knows how to end one of its workers from outside
(the real ones: SIGKILL to the worker process, found with psutil; the fake: its in-memory
kill) and whether the worker runs. Only the real launchers are slow."""

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil
import pytest

from sdgen.launchers.base import Launcher
from sdgen.spool.claim import Lease
from sdgen.spool.request import parse_request
from tests.conftest import REPO, wait_for

RID = "20261126-000000-cccccc"


@dataclass
class Harness:
    """One launcher under test: `make(max_workers)` makes one (ended after the test),
    `kill(worker_id)` ends a worker from outside as SIGKILL would, `seen(worker_id)` says
    whether it runs; `cleanup(launcher)` runs before its stop_all at the end."""

    new: Callable[[int], Launcher]
    kill: Callable[[str], None]
    seen: Callable[[str], bool]
    cleanup: Callable[[Launcher], None] = lambda launcher: None
    made: list[Launcher] = field(default_factory=list)

    def make(self, max_workers: int = 2) -> Launcher:
        launcher = self.new(max_workers)
        self.made.append(launcher)
        return launcher


def worker_process(worker_id: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = p.info["cmdline"] or []
            env = p.info["environ"] or {}
        except psutil.Error:
            continue
        if "sdgen" in cmd and "worker" in cmd and (worker_id in cmd or env.get("SDGEN_WORKER_ID") == worker_id):
            return p
    return None


def kill_process(worker_id: str) -> None:
    worker_process(worker_id).kill()


def process_seen(worker_id: str) -> bool:
    return worker_process(worker_id) is not None


OPTS = dict(idle_exit=2.0, heartbeat=0.5)


def fake_harness(request, root) -> Harness:
    from tests.fakes.launcher import FakeLauncher

    def owner(worker_id: str) -> FakeLauncher:
        return next(launcher for launcher in harness.made if worker_id in launcher.workers)

    harness = Harness(
        new=lambda n: FakeLauncher(max_workers=n, data_root=root, **OPTS),
        kill=lambda w: owner(w).kill(w),
        seen=lambda w: owner(w).working(w),
    )
    return harness


def local_harness(request, root) -> Harness:
    from sdgen.launchers.local import LocalLauncher

    return Harness(lambda n: LocalLauncher(root, pin_gpus=False, max_workers=n, **OPTS), kill_process, process_seen)


def adsp_harness(request, root) -> Harness:
    monkeypatch, tmp_path = request.getfixturevalue("monkeypatch"), request.getfixturevalue("tmp_path")
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fakes"))
    monkeypatch.setenv("FAKE_AE5_DIR", str(tmp_path / "fake-ae5"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests' / 'fakes'}{os.pathsep}{REPO}")
    from ae5_tools.api import AEUserSession

    from sdgen.launchers.adsp import AdspLauncher

    def new(n: int) -> Launcher:
        session = AEUserSession("ae5.example.com", "alice", "pw")
        return AdspLauncher(root, session=session, project="a0-" + secrets.token_hex(16), max_workers=n, **OPTS)

    return Harness(new, kill_process, process_seen)


def slurm_harness(request, root) -> Harness:
    cluster = request.getfixturevalue("slurm_cluster")
    request.getfixturevalue("monkeypatch").setenv("SLURM_CONF", str(cluster.conf))
    from sdgen.launchers.slurm import SlurmLauncher

    def cancel_jobs(launcher) -> None:
        for job in launcher.jobs.values():
            launcher._slurm("scancel", job.job_id)

    def new(n: int) -> Launcher:
        return SlurmLauncher(root, poll=0.3, max_workers=n, **OPTS)

    return Harness(new, kill_process, process_seen, cleanup=cancel_jobs)


HARNESSES = {"fake": fake_harness, "local": local_harness, "adsp": adsp_harness, "slurm": slurm_harness}


@pytest.fixture(
    params=[
        pytest.param("fake"),  # threads in this process: fast, part of `-m "not slow"`
        pytest.param("local", marks=pytest.mark.slow),
        pytest.param("adsp", marks=pytest.mark.slow),
        pytest.param("slurm", marks=[pytest.mark.slow, pytest.mark.xdist_group("slurm")]),  # one Slurm per run
    ]
)
def harness(request, spool, monkeypatch):
    monkeypatch.setenv("SDGEN_DRY_RUN_DELAY", "0.1")
    h = HARNESSES[request.param](request, spool.layout.root)
    yield h
    for launcher in h.made:
        h.cleanup(launcher)
        launcher.stop_all(grace=10)


def queue(spool, images: int, batch: int = 1) -> None:
    spool.accept(
        RID,
        parse_request(
            f"prompt: a\nimages: {images}\nbatch_size: {batch}\nseed: 1\nengine: dry-run\nwidth: 128\nheight: 128\n"
        ),
        source="t",
        now=0.0,
    )


def lease_holders(spool) -> set[str]:
    """The worker ids in the leases there are now."""
    leases = (Lease.read(p) for p in spool.layout.leases.iterdir())
    return {lease.worker for lease in leases if lease is not None}


def reap_until(launcher, ids, timeout=90):
    """Reap until every id in `ids` has exited; returns {id: ExitedWorker}."""
    out = {}
    deadline = time.monotonic() + timeout
    while set(ids) - set(out) and time.monotonic() < deadline:
        for w in launcher.reap(time.time()):
            assert w.worker_id not in out, f"{w.worker_id} reaped twice"
            out[w.worker_id] = w
        time.sleep(0.2)
    assert set(ids) <= set(out), f"not reaped within {timeout}s: {set(ids) - set(out)}"
    return out


def test_workers_work_under_their_ids_and_are_reaped_once_idle(harness, spool):
    queue(spool, images=8, batch=2)
    launcher = harness.make(max_workers=2)
    ids = [launcher.launch(time.time()) for _ in range(2)]
    assert len(set(ids)) == 2 and sorted(launcher.running()) == sorted(ids)
    wait_for(lambda: len(spool.ticket_names("done")) == 4, timeout=90, what="all tickets done")
    exited = reap_until(launcher, ids)
    assert {w.returncode for w in exited.values()} == {0}
    assert launcher.running() == []
    done_by = {
        json.loads(spool.layout.ticket("done", n).read_text())["result"]["worker"] for n in spool.ticket_names("done")
    }
    assert done_by <= set(ids)


def test_a_worker_killed_from_outside_is_reaped_as_not_ok(harness, spool):
    queue(spool, images=40)
    launcher = harness.make(max_workers=1)
    [wid] = [launcher.launch(time.time())]
    wait_for(lambda: harness.seen(wid), timeout=60, what="the worker running")
    wait_for(lambda: lease_holders(spool), timeout=60, what="a claim")
    assert lease_holders(spool) <= {wid}  # it claims under the id launch() returned
    harness.kill(wid)
    exited = reap_until(launcher, [wid])
    assert exited[wid].returncode != 0 and launcher.running() == []


def test_with_nothing_to_do_every_worker_leaves(harness, spool):
    launcher = harness.make(max_workers=3)
    ids = [launcher.launch(time.time()) for _ in range(3)]
    deadline = time.monotonic() + 90
    exited = {}
    while set(ids) - set(exited) and time.monotonic() < deadline:
        launcher.trim(time.time(), busy=set(), wanted=0)
        exited.update({w.worker_id: w for w in launcher.reap(time.time())})
        time.sleep(0.3)
    assert set(exited) == set(ids) and launcher.running() == []
    assert all(w.returncode in (0, None) for w in exited.values()), exited
