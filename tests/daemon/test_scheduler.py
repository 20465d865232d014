"""Scheduler.tick(now) driven directly: leases, deferrals, cancels, request states."""

import json
import os
import time

import pytest

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.request import parse_request
from sdgen.spool.store import Spool
from tests.conftest import drop_settled

RID = "20261126-000000-aaaaaa"


def accepted(spool: Spool, text="prompt: a\nimages: 2\nseed: 1\nengine: dry-run\n", rid=RID):
    spool.accept(rid, parse_request(text), source="test", now=0.0)
    return rid


def state_of(spool, rid=RID):
    return spool.read_state(rid)["state"]


def test_a_silent_lease_is_reclaimed_after_the_timeout_of_the_daemons_clock(spool):
    accepted(spool)
    sched = Scheduler(spool, launcher=None, lease_timeout=20)
    claim = claim_next(spool, "remote-worker")
    # a worker on another host: its pid means nothing here
    spool.write(
        spool.layout.lease(claim.name),
        json.dumps({"worker": "remote-worker", "host": "elsewhere", "pid": 1, "claimed_at": 0.0, "beat": 0}).encode(),
    )
    sched.tick(now=1000.0, mono=1000.0)
    sched.tick(now=1019.0, mono=1019.0)
    assert spool.ticket_names("running") == [claim.name]
    # a heartbeat resets the clock, whatever the writer's own clock says
    spool.write(
        spool.layout.lease(claim.name),
        json.dumps({"worker": "remote-worker", "host": "elsewhere", "pid": 1, "claimed_at": -9e9, "beat": 1}).encode(),
    )
    sched.tick(now=1030.0, mono=1030.0)
    sched.tick(now=1049.0, mono=1049.0)
    assert spool.ticket_names("running") == [claim.name]
    report = sched.tick(now=1050.5, mono=1050.5)
    assert report.reclaimed == [claim.name]
    t = spool.read_ticket("pending", claim.name)
    assert t.deaths == 1 and "lease of remote-worker expired" in t.reason
    assert not spool.layout.lease(claim.name).exists()


def test_a_step_of_the_wall_clock_expires_no_lease(spool):
    """NTP or a VM resume moves the wall clock by a minute: lease ages run on the daemon's
    monotonic clock, so a healthy worker keeps its ticket."""
    accepted(spool)
    sched = Scheduler(spool, launcher=None, lease_timeout=20)
    claim = claim_next(spool, "remote-worker")
    spool.write(
        spool.layout.lease(claim.name),
        json.dumps({"worker": "remote-worker", "host": "elsewhere", "pid": 1, "claimed_at": 0.0, "beat": 0}).encode(),
    )
    sched.tick(now=1000.0, mono=50.0)
    report = sched.tick(now=1060.0, mono=51.0)  # +60 s of wall clock, 1 s of real time
    assert report.reclaimed == [] and spool.ticket_names("running") == [claim.name]
    assert sched.tick(now=1061.0, mono=70.5).reclaimed == [claim.name]  # 20 s of real silence


def test_a_local_worker_whose_pid_is_gone_loses_its_ticket_at_once(spool):
    accepted(spool)
    claim = claim_next(spool, "w-dead")
    lease = json.loads(spool.layout.lease(claim.name).read_text())
    lease["pid"] = 2**22 + 12345  # above pid_max on this machine: no such process
    spool.write(spool.layout.lease(claim.name), json.dumps(lease).encode())
    report = Scheduler(spool, launcher=None).tick(now=time.time())
    assert report.reclaimed == [claim.name]


@pytest.mark.parametrize("worker_clock", [100.0 - 60, 100.0, 100.0 + 60])
def test_deferred_tickets_come_back_when_due_whatever_the_workers_clock(spool, worker_clock):
    accepted(spool)
    claim = claim_next(spool, "w1")
    assert claim.fail("OSError: flaky disk", transient=True, now=worker_clock) == "deferred"
    sched = Scheduler(spool, launcher=None)
    report = sched.tick(now=101.0)
    assert report.deferred == 1 and report.wake_in == 5
    assert Scheduler(spool, launcher=None).tick(now=105.9).deferred == 1  # a restart keeps the due time
    sched.tick(now=106.0)
    assert claim.name in spool.ticket_names("pending")


def test_request_states_follow_the_tickets(spool):
    accepted(spool)
    sched = Scheduler(spool, launcher=None)
    sched.tick(now=1.0)
    assert state_of(spool) == "pending"
    c1 = claim_next(spool, "w1")
    sched.tick(now=2.0)
    assert state_of(spool) == "running"
    c1.finish({})
    c2 = claim_next(spool, "w1")
    c2.finish({})
    sched.tick(now=3.0)
    state = spool.read_state(RID)
    assert state["state"] == "done" and state["finished_at"] == 3.0


def test_a_permanent_failure_fails_the_request_with_its_reason(spool):
    accepted(spool)
    sched = Scheduler(spool, launcher=None)
    claim_next(spool, "w1").finish({})
    claim_next(spool, "w1").fail("weights missing: run `sdgen weights fetch`", transient=False, now=1.0)
    sched.tick(now=2.0)
    state = spool.read_state(RID)
    assert state["state"] == "failed" and "weights missing" in state["reason"]


def test_cancel_moves_pending_tickets_aside(spool):
    accepted(spool, "prompt: a\nimages: 5\nseed: 1\n")
    running = claim_next(spool, "w1")
    spool.cancel(RID, now=1.0)
    Scheduler(spool, launcher=None).tick(now=2.0)
    assert len(spool.ticket_names("cancelled")) == 4
    assert spool.ticket_names("pending") == []
    assert spool.ticket_names("running") == [running.name]  # stops at its next image
    assert state_of(spool) == "cancelled"
    assert claim_next(spool, "w2") is None


def test_a_crash_between_moves_is_reconciled(spool):
    accepted(spool)
    c = claim_next(spool, "w1")
    c.finish({})
    # a crash left a copy in running and in pending
    spool.write(spool.layout.ticket("running", c.name), c.ticket.to_json())
    spool.write(spool.layout.ticket("pending", c.name), c.ticket.to_json())
    actions = spool.reconcile()
    assert len(actions) == 2 and spool.find_ticket(c.name) == ["done"]


def test_acceptance_interrupted_half_way_is_finished_on_restart(spool):
    """The daemon died after publishing some tickets: accepting again completes the set
    without duplicates and keeps the seed it had chosen."""
    path = spool.layout.incoming / f"{RID}.yaml"
    path.write_text("prompt: a\nimages: 6\nbatch_size: 2\nengine: dry-run\n")
    request = spool.accept(RID, parse_request(path.read_text()), source="x", now=0.0)
    # simulate the crash: one ticket unpublished, the incoming file still there
    first = spool.ticket_names("pending")[0]
    os.unlink(spool.layout.ticket("pending", first))
    path.write_text("prompt: a\nimages: 6\nbatch_size: 2\nengine: dry-run\n")
    report = Scheduler(spool, launcher=None).tick(now=5.0)
    assert report.accepted == [RID]
    assert len(spool.ticket_names("pending")) == 3
    assert spool.read_request(RID).seed == request.seed
    assert not path.exists()


def test_a_worker_that_claims_a_reclaimed_ticket_at_once_keeps_its_lease(spool, monkeypatch):
    """The daemon puts a dead worker's ticket back and another worker claims it in the same
    instant: the new holder's lease must survive the clean-up of the old one."""
    accepted(spool)
    claim = claim_next(spool, "w-dead")
    lease = json.loads(spool.layout.lease(claim.name).read_text())
    lease["pid"] = 2**22 + 12345  # no such process on this host
    spool.write(spool.layout.lease(claim.name), json.dumps(lease).encode())
    move = spool.move_ticket
    taken = []

    def move_then_claim(name, src, dst, *a, **kw):
        moved = move(name, src, dst, *a, **kw)
        if dst == "pending":
            taken.append(claim_next(spool, "w2"))
        return moved

    monkeypatch.setattr(spool, "move_ticket", move_then_claim)
    assert Scheduler(spool, launcher=None).tick(now=time.time()).reclaimed == [claim.name]
    assert taken[0].name == claim.name and taken[0].still_mine()


def test_a_claim_racing_a_reclaim_never_loses_the_ticket(spool, monkeypatch):
    """A worker claims the instant the reclaimed ticket can be seen in pending/: the move
    must never delete the copy the worker just took into running/."""
    accepted(spool)
    claim = claim_next(spool, "w-dead")
    lease = json.loads(spool.layout.lease(claim.name).read_text())
    lease["pid"] = 2**22 + 12345  # no such process on this host
    spool.write(spool.layout.lease(claim.name), json.dumps(lease).encode())
    write, rename = spool.write, os.rename
    taken = []

    def claim_if_visible():
        if not taken and spool.layout.ticket("pending", claim.name).exists():
            taken.append(claim_next(spool, "w2"))

    def write_then_claim(path, data):
        write(path, data)
        claim_if_visible()

    def rename_then_claim(src, dst):
        rename(src, dst)
        claim_if_visible()

    monkeypatch.setattr(spool, "write", write_then_claim)
    monkeypatch.setattr(os, "rename", rename_then_claim)
    Scheduler(spool, launcher=None).tick(now=time.time())
    monkeypatch.undo()
    assert taken and taken[0].name == claim.name
    assert spool.find_ticket(claim.name) == ["running"] and taken[0].still_mine()


def test_a_file_where_a_request_folder_should_be_is_moved_aside(spool):
    accepted(spool)
    junk = spool.layout.requests / "20000101-000000-00001f"
    junk.write_text("x")
    report = Scheduler(spool, launcher=None).tick(now=time.time())
    assert not junk.exists() and report.open_requests == 1
    assert [p for p in spool.layout.corrupt.iterdir() if "00001f" in p.name and p.name.endswith(".reason")]


def test_a_state_json_turned_into_a_folder_stalls_no_other_request(spool):
    other = "20261126-000000-bbbbbb"
    accepted(spool)
    accepted(spool, rid=other)
    sched = Scheduler(spool, launcher=None)
    sched.tick(now=time.time())
    state = spool.layout.request_state(RID)
    state.unlink()
    state.mkdir()
    for name in spool.ticket_names("pending"):
        os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
    sched.tick(now=time.time())
    sched.tick(now=time.time())
    assert state_of(spool, other) == "done"
    assert state.is_file() and state_of(spool) == "done"  # moved aside, rebuilt, derived again


def test_workers_0_holds_the_queue_accepted_and_scheduled_for_workers_started_elsewhere(spool):
    """`sdgen daemon --workers 0`: the daemon accepts and schedules but launches nothing; a
    worker started by hand still claims."""
    from sdgen.cli.main import build_parser
    from sdgen.launchers.local import LocalLauncher

    args = build_parser().parse_args(["daemon", "--workers", "0"])
    assert args.workers == 0
    launcher = LocalLauncher(spool.layout.root, max_workers=args.workers, pin_gpus=False)
    assert launcher.max_workers == 0
    drop_settled(spool, "held.yaml", "prompt: a\nimages: 3\nseed: 1\nengine: dry-run\n")
    sched = Scheduler(spool, launcher)
    report = sched.tick(time.time())
    assert report.accepted and report.pending == 3 and report.launched == [] and launcher.running() == []
    assert claim_next(spool, "by-hand") is not None  # a worker started elsewhere claims
    assert sched.tick(time.time()).launched == [] and launcher.running() == []


def test_a_request_that_fails_at_acceptance_is_rejected_not_retried_forever(spool, monkeypatch):
    """Acceptance itself can find a request bad (a wildcard file changed since the check, a
    random expansion past a limit): rejected with the reason, like any bad file."""
    from sdgen.exceptions import RequestError

    drop_settled(spool, "late.yaml", "prompt: a\nimages: 1\nengine: dry-run\n")

    def refuse(*args, **kwargs):
        raise RequestError("wildcard __animal__: no file wildcards/animal.txt in the data directory")

    monkeypatch.setattr(spool, "begin_accept", refuse)
    report = Scheduler(spool, launcher=None).tick(time.time())
    assert report.rejected and not report.accepted and not list(spool.layout.incoming.iterdir())
    [reason] = list(spool.layout.rejected.glob("*.reason"))
    assert "wildcard __animal__" in reason.read_text()


def test_a_claim_racing_start_up_reconciliation_keeps_its_ticket(spool, monkeypatch):
    """An earlier daemon's worker claims (pending -> running) while a new daemon lists the
    folders: the ticket shows in both listings, and its running copy is the only one. It
    must survive (deleting it lost tickets in the soak's kill -9 trials)."""
    accepted(spool)
    name = spool.ticket_names("pending")[0]
    real = spool.ticket_names

    def listing(state):
        names = real(state)
        if state == "pending" and name in names:  # the worker claims right after this listing
            assert spool.claim(name, b'{"worker": "orphan"}')
        return names

    monkeypatch.setattr(spool, "ticket_names", listing)
    assert spool.reconcile() == []
    monkeypatch.undo()
    assert spool.find_ticket(name) == ["running"]


def test_a_stale_running_copy_beside_a_pending_one_is_resolved_by_its_lease(spool):
    accepted(spool)
    name = spool.ticket_names("pending")[0]
    ticket = spool.read_ticket("pending", name)
    spool.write(spool.layout.ticket("running", name), ticket.to_json())  # a hand-made second copy
    assert spool.reconcile() == []  # left to the lease
    sched = Scheduler(spool, launcher=None, lease_timeout=5)
    sched.tick(time.time(), mono=100.0)
    sched.tick(time.time(), mono=106.0)  # no lease ever: reclaimed, by a rename over the pending copy
    names = [n for s in ("pending", "running", "deferred", "held") for n in spool.ticket_names(s)]
    assert names.count(name) == 1
