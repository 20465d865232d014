"""The scheduler's decisions as pure units (daemon/policy.py), and `Scheduler.tick` driven
through worker crashes, backoff and blocking by an in-memory launcher."""

import json
import time

import pytest

from sdgen import defaults
from sdgen.daemon.policy import StartupGuard, lease_expired, workers_wanted
from sdgen.daemon.scheduler import Scheduler, TickReport
from sdgen.spool.request import parse_request
from tests.fakes.launcher import FakeLauncher

RID = "20261126-000000-aaaaaa"


def test_lease_expiry_counts_the_daemons_own_monotonic_seconds():
    assert not lease_expired(100.0, 119.9, 20)
    assert lease_expired(100.0, 120.0, 20)


@pytest.mark.parametrize(
    "max_workers,pending,running,wanted",
    [(4, 0, 0, 0), (4, 1, 0, 1), (4, 10, 0, 4), (4, 2, 3, 4), (1, 0, 1, 1), (0, 5, 0, 0)],
)
def test_workers_wanted_follows_the_queue_up_to_the_limit(max_workers, pending, running, wanted):
    assert workers_wanted(max_workers, pending, running) == wanted


def test_startup_failures_back_off_then_block():
    guard = StartupGuard(max_failures=3)
    v1 = guard.note_exit("w1", 1, 2.0, "", now=100.0)
    assert v1.crashed and v1.delay == 2.0 and not guard.may_launch(101.9) and guard.may_launch(102.0)
    v2 = guard.note_exit("w2", 1, 2.0, "", now=110.0)
    assert v2.delay == 4.0 and guard.launch_after == 114.0
    v3 = guard.note_exit("w3", 2, 1.0, "killed by signal 9", now=120.0)
    assert v3.blocked and "3 workers in a row" in v3.blocked and "killed by signal 9" in v3.blocked
    assert not guard.may_launch(10_000.0) and guard.blocked_since == 120.0


@pytest.mark.parametrize(
    "returncode,ran", [(0, 1.0), (defaults.WORKER_EXIT_FATAL, 1.0), (None, 1.0), (1, defaults.STARTUP_SECONDS)]
)
def test_a_clean_exit_an_outside_end_or_a_long_run_resets_the_streak(returncode, ran):
    guard = StartupGuard(max_failures=3)
    guard.note_exit("w1", 1, 1.0, "", now=0.0)
    guard.note_exit("w2", 1, 1.0, "", now=10.0)
    assert not guard.note_exit("w3", returncode, ran, "", now=20.0).crashed
    assert guard.streak == 0
    assert guard.note_exit("w4", 1, 1.0, "", now=30.0).delay == 2.0  # the backoff starts over


@pytest.fixture
def queued(spool):
    spool.accept(RID, parse_request("prompt: a\nimages: 5\nengine: dry-run\nseed: 1\n"), source="t", now=0.0)
    return spool


def test_tick_launches_what_the_queue_wants_and_stops_after_three_startup_crashes(queued):
    launcher = FakeLauncher(max_workers=2)
    sched = Scheduler(queued, launcher)
    t = 1000.0
    assert sched.tick(now=t).launched == ["fake-1", "fake-2"]
    launcher.crash_all()
    report = sched.tick(now=t + 1)  # two crashes: backed off 4 s, nothing launched
    assert report.launched == [] and sched.startup.streak == 2
    assert sched.tick(now=t + 4.9).launched == []
    assert sched.tick(now=t + 5.1).launched == ["fake-3", "fake-4"]
    launcher.exit("fake-3", 1, 1.0)
    sched.tick(now=t + 6)
    assert sched.blocked and "3 workers in a row failed at start-up" in sched.blocked
    status = json.loads(queued.layout.launcher_status.read_text())
    assert status["blocked"] == sched.blocked and status["launcher"] == "fake"
    launcher.exit("fake-4", 1, 1.0)
    assert sched.tick(now=t + 500).launched == []  # blocked until the daemon restarts
    events = [json.loads(p.read_text()) for p in queued.layout.events.iterdir()]
    assert len([e for e in events if e["kind"] == "worker-failed"]) == 4  # one per crash, for the open request


def test_a_worker_that_worked_resets_the_backoff(queued):
    launcher = FakeLauncher(max_workers=1)
    sched = Scheduler(queued, launcher)
    sched.tick(now=0.0)
    launcher.crash_all()
    sched.tick(now=1.0)
    assert sched.tick(now=2.0).launched == []
    assert sched.tick(now=3.1).launched == ["fake-2"]
    launcher.exit("fake-2", 0, 300.0)  # ran a long while, then idled out
    assert sched.tick(now=3.2).launched == ["fake-3"] and sched.startup.streak == 0


def test_surplus_workers_are_trimmed_when_the_queue_shrinks(queued):
    launcher = FakeLauncher(max_workers=4)
    sched = Scheduler(queued, launcher)
    assert len(sched.tick(now=time.time()).launched) == 4
    for name in queued.ticket_names("pending")[:4]:
        queued.move_ticket(name, "pending", "done")
    sched.tick(now=time.time())
    assert len(launcher.running()) == 1 and len(launcher.trimmed) == 3


def test_a_worker_the_daemons_own_stop_had_to_kill_hands_its_ticket_back_without_a_death(queued):
    """Ctrl-C during a model build: the worker cannot hand back in time and is killed by the
    daemon's shutdown. Twice in a row must not make a poison ticket."""
    from sdgen.spool.claim import claim_next
    from sdgen.spool.states import TicketState

    sched = Scheduler(queued, FakeLauncher())
    for _ in range(2):
        claim = claim_next(queued, "w-killed")
        sched.reap(time.time(), {"w-killed": -9}, TickReport(), stopped=True)
        ticket = queued.read_ticket(TicketState.PENDING, claim.name)
        assert ticket.deaths == 0 and ticket.attempt == 0
    assert not list(queued.layout.events.iterdir())  # a hand-back is not an attempt


def test_a_worker_that_died_on_its_own_still_counts_a_death(queued):
    from sdgen.spool.claim import claim_next
    from sdgen.spool.states import TicketState

    claim = claim_next(queued, "w-died")
    Scheduler(queued, FakeLauncher()).reap(time.time(), {"w-died": -9}, TickReport())
    assert queued.read_ticket(TicketState.PENDING, claim.name).deaths == 1


def test_tick_with_real_workers_reclaims_a_killed_workers_ticket_and_trims_once_done(spool, monkeypatch):
    """The fake's spool-driven mode: its workers run the real worker loop in threads."""
    from sdgen.spool.states import TicketState
    from tests.conftest import wait_for

    monkeypatch.setenv("SDGEN_DRY_RUN_DELAY", "0.05")
    spool.accept(RID, parse_request("prompt: a\nimages: 30\nbatch_size: 30\nengine: dry-run\nseed: 1\n"), "t", 0.0)
    launcher = FakeLauncher(max_workers=1, data_root=spool.layout.root, idle_exit=30.0)
    sched = Scheduler(spool, launcher)
    t = time.time()
    try:
        assert sched.tick(now=t).launched == ["fake-1"]
        wait_for(lambda: list(spool.layout.output_dir(RID).glob("*.png")), what="fake-1's first image")
        launcher.kill("fake-1")  # mid-ticket: its lease stays, as a killed process leaves it
        wait_for(lambda: not launcher.working("fake-1"), what="fake-1 to die")
        report = sched.tick(now=t + 1)
        assert report.reclaimed and report.launched == [] and sched.startup.streak == 1  # backed off 2 s
        assert sched.tick(now=t + 3.1).launched == ["fake-2"]
        wait_for(lambda: spool.ticket_names(TicketState.DONE), timeout=60, what="the ticket done by fake-2")
        [name] = spool.ticket_names(TicketState.DONE)
        assert json.loads(spool.layout.ticket(TicketState.DONE, name).read_text())["result"]["worker"] == "fake-2"
        assert spool.read_ticket(TicketState.DONE, name).deaths == 1
        sched.tick(now=t + 4)  # nothing left to do: fake-2 is trimmed, not left to idle out
        assert launcher.trimmed == ["fake-2"]
        wait_for(lambda: not launcher.working("fake-2"), what="fake-2 to leave")
        sched.tick(now=t + 5)  # reaped: a clean exit
        assert launcher.running() == [] and sched.startup.streak == 0
    finally:
        launcher.stop_all(grace=10)
