"""The launcher contract, the same tests for every launcher: local processes, ADSP jobs (a fake
ae5-tools whose jobs are real worker processes) and Slurm jobs (a real single-node Slurm).
The daemon relies on exactly this: ids that workers write into their leases, running() until
reaped, one ExitedWorker per worker, an ended-early worker reported as not OK, and surplus
workers gone once nothing is left to do."""

import json
import os
import secrets
import time

import psutil
import pytest

from sdgen.launchers.base import Launcher
from sdgen.spool.request import parse_request
from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.slow

RID = "20261126-000000-cccccc"


@pytest.fixture(params=["local", "adsp", "slurm"])
def make_launcher(request, spool, tmp_path, monkeypatch):
    root = spool.layout.root
    monkeypatch.setenv("SDGEN_DRY_RUN_DELAY", "0.1")
    made: list[Launcher] = []

    def make(max_workers: int = 2) -> Launcher:
        opts = dict(max_workers=max_workers, idle_exit=2.0, heartbeat=0.5)
        if request.param == "local":
            from sdgen.launchers.local import LocalLauncher

            launcher = LocalLauncher(root, pin_gpus=False, **opts)
        elif request.param == "adsp":
            monkeypatch.syspath_prepend(str(REPO / "tests" / "fakes"))
            monkeypatch.setenv("FAKE_AE5_DIR", str(tmp_path / "fake-ae5"))
            monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests' / 'fakes'}{os.pathsep}{REPO}")
            from ae5_tools.api import AEUserSession

            from sdgen.launchers.adsp import AdspLauncher

            launcher = AdspLauncher(
                root,
                session=AEUserSession("ae5.example.com", "alice", "pw"),
                project="a0-" + secrets.token_hex(16),
                **opts,
            )
        else:
            cluster = request.getfixturevalue("slurm_cluster")
            monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
            from sdgen.launchers.slurm import SlurmLauncher

            launcher = SlurmLauncher(root, poll=0.3, **opts)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        if request.param == "slurm":
            for job in launcher.jobs.values():
                launcher._slurm("scancel", job.job_id)
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


def test_workers_work_under_their_ids_and_are_reaped_once_idle(make_launcher, spool):
    queue(spool, images=8, batch=2)
    launcher = make_launcher(max_workers=2)
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


def test_a_worker_killed_from_outside_is_reaped_as_not_ok(make_launcher, spool):
    queue(spool, images=40)
    launcher = make_launcher(max_workers=1)
    [wid] = [launcher.launch(time.time())]
    wait_for(lambda: worker_process(wid), timeout=60, what="the worker process")
    wait_for(lambda: list(spool.layout.leases.iterdir()), timeout=60, what="a claim")
    worker_process(wid).kill()
    exited = reap_until(launcher, [wid])
    assert exited[wid].returncode != 0 and launcher.running() == []


def test_with_nothing_to_do_every_worker_leaves(make_launcher, spool):
    launcher = make_launcher(max_workers=3)
    ids = [launcher.launch(time.time()) for _ in range(3)]
    deadline = time.monotonic() + 90
    exited = {}
    while set(ids) - set(exited) and time.monotonic() < deadline:
        launcher.trim(time.time(), busy=set(), wanted=0)
        exited.update({w.worker_id: w for w in launcher.reap(time.time())})
        time.sleep(0.3)
    assert set(exited) == set(ids) and launcher.running() == []
    assert all(w.returncode in (0, None) for w in exited.values()), exited
