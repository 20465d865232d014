"""`sdgen pause` / `sdgen resume` (issue 20): a paused request's pending tickets are not
claimed, its running tickets are handed back at the next image (or finish their ticket with
--after-ticket), no worker is started for it, it shows as `paused`, and a pause survives a
daemon restart with every image still made exactly once."""

from __future__ import annotations

import time

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.states import TicketState
from sdgen.worker.heartbeat import Heartbeat
from sdgen.worker.loop import Worker
from tests.conftest import FAST, accept, sdgen, status_json, submit, wait_for
from tests.daemon.test_service import assert_no_leftovers, expected_pngs, pngs
from tests.fakes.launcher import FakeLauncher

RID = "20261126-000000-aaaaaa"
OTHER = "20261126-000000-bbbbbb"
DRY = "engine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n"


def test_a_paused_request_is_passed_over_and_starts_no_worker_until_resumed(spool):
    accept(spool, "prompt: a\nimages: 3\n" + DRY, RID)
    accept(spool, "prompt: b\nimages: 1\n" + DRY, OTHER)
    out = sdgen(spool.layout.root, "pause", RID).stdout
    assert f"paused {RID}" in out and "next image" in out
    rows = {r["id"]: r for r in status_json(spool.layout.root)}
    assert rows[RID]["state"] == "paused" and rows[OTHER]["state"] == "pending"
    worker = Worker(spool, "w1")
    outcome = worker.step()  # takes the other request's ticket, never the paused one's
    assert outcome.state == TicketState.DONE and spool.ticket_names(TicketState.DONE)[0].endswith(OTHER)
    assert worker.step() is None
    launcher = FakeLauncher(max_workers=2)
    report = Scheduler(spool, launcher).tick(time.time())
    assert report.pending == 0 and launcher.started == []  # nothing claimable: no worker
    assert spool.read_state(RID)["state"] == "paused"
    assert f"resumed {RID}" in sdgen(spool.layout.root, "resume", RID).stdout
    assert Scheduler(spool, launcher).tick(time.time()).pending == 3 and launcher.started
    assert claim_next(spool, "w2") is not None


def test_pause_all_holds_every_request_and_resume_all_lets_go(spool):
    accept(spool, "prompt: a\nimages: 2\n" + DRY, RID)
    sdgen(spool.layout.root, "pause", RID)
    assert "whole queue" in sdgen(spool.layout.root, "pause", "--all").stdout
    accept(spool, "prompt: b\nimages: 1\n" + DRY, OTHER)  # new requests are held too
    assert Worker(spool, "w1").step() is None
    assert {r["state"] for r in status_json(spool.layout.root)} == {"paused"}
    assert "resumed the whole queue" in sdgen(spool.layout.root, "resume", "--all").stdout
    assert not spool.is_paused(RID) and not spool.is_paused(OTHER)
    assert Worker(spool, "w1").step() is not None


def test_a_running_ticket_is_handed_back_at_the_image_or_finishes_with_after_ticket(spool):
    accept(spool, "prompt: a\nimages: 4\nbatch_size: 4\n" + DRY, RID)
    worker = Worker(spool, "w1")
    claim = claim_next(spool, "w1")
    with Heartbeat(claim, 5.0) as beat:
        stop = worker._stop_check(claim, beat)
        assert stop() is None
        sdgen(spool.layout.root, "pause", "--after-ticket", RID)
        assert stop() is None  # the ticket runs to its end
        sdgen(spool.layout.root, "pause", RID)
        time.sleep(1.1)  # past the worker's one-second memory of the request
        assert stop() == "paused"


def test_pause_and_resume_say_what_is_wrong_in_one_line(spool):
    for args, words in (
        (("pause",), "name the requests to pause"),
        (("pause", "--all", RID), "not both"),
        (("resume",), "name the requests to resume"),
        (("pause", "nope"), "is not a request id"),
    ):
        r = sdgen(spool.layout.root, *args, check=False)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    accept(spool, "prompt: a\nimages: 1\n" + DRY, RID)
    assert "was not paused" in sdgen(spool.layout.root, "resume", RID).stdout


def test_pause_survives_a_daemon_restart_and_every_image_is_made_once(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "40", "--batch-size", "2", "--seed", "5")
    d = daemon("--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY="0.1")
    wait_for(lambda: len(pngs(data, rid)) >= 6, what="some images")
    sdgen(data, "pause", rid)
    running = data / "spool" / "tickets" / "running"
    wait_for(lambda: not list(running.iterdir()), timeout=30, what="running tickets handed back")
    made = len(pngs(data, rid))
    assert made < 40
    d.signal()
    d.wait(60)
    d2 = daemon("--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY="0.1")
    wait_for(lambda: "daemon up" in d2.output(), what="daemon")
    time.sleep(3)  # several ticks: still paused, nothing claimed, no worker started
    assert len(pngs(data, rid)) == made and not list(running.iterdir())
    assert status_json(data)[0]["state"] == "paused"
    sdgen(data, "resume", rid)
    wait_for(lambda: status_json(data)[0]["state"] == "done", timeout=120, what="done after resume")
    assert pngs(data, rid) == expected_pngs(5, 40)
    d2.signal()
    d2.wait(60)
    assert_no_leftovers(data)


def test_a_folder_where_a_marker_belongs_is_set_aside_not_an_error(spool):
    """pause/resume/priority over a folder (or FIFO, link) at the marker's path: set aside
    to spool/corrupt/, then the command does its work (it used to fail naming a staging file)."""
    accept(spool, "prompt: a\nimages: 1\n" + DRY, RID)
    spool.layout.pause_marker(RID).mkdir()
    assert sdgen(spool.layout.root, "resume", RID).returncode == 0 and not spool.is_paused(RID)
    spool.layout.pause_all_marker.mkdir()
    assert sdgen(spool.layout.root, "pause", "--all").returncode == 0 and spool.layout.pause_all_marker.is_file()
    sdgen(spool.layout.root, "resume", "--all")
    spool.layout.priority_marker(RID).mkdir()
    assert sdgen(spool.layout.root, "priority", RID, "3").returncode == 0
    assert spool.priority_of(RID, 0) == 3
    assert len([p for p in spool.layout.corrupt.iterdir() if not p.name.endswith(".reason")]) == 3
