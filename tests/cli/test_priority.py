"""`sdgen priority REQUEST N` (issue 20): the claim order of a request's waiting tickets
changes at once, no ticket is lost or doubled while they move, and tickets that come back
later (hand-backs, a split's next window, a retry) follow the new priority."""

from __future__ import annotations

import os
import threading
import time

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.states import TicketState
from tests.conftest import accept, drop_settled, sdgen, status_json

A = "20261126-000000-aaaaaa"
B = "20261126-000001-bbbbbb"
DRY = "engine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n"


def claim_order(spool, n: int) -> list[str]:
    out = []
    for i in range(n):
        claim = claim_next(spool, f"w{i}")
        out.append(claim.ticket.request_id[-1] + str(claim.ticket.index))
    return out


def test_a_new_priority_reorders_the_waiting_tickets_at_once(spool):
    accept(spool, "prompt: a\nimages: 3\n" + DRY, A)
    accept(spool, "prompt: b\nimages: 3\n" + DRY, B)
    out = sdgen(spool.layout.root, "priority", B, "5").stdout
    assert f"request {B}: priority 0 -> 5; 3 waiting ticket(s) reordered" in out
    assert {r["id"]: r["priority"] for r in status_json(spool.layout.root)} == {A: 0, B: 5}
    assert claim_order(spool, 6) == ["b0", "b1", "b2", "a0", "a1", "a2"]
    assert all(
        c.priority == 5
        for c in [spool.read_ticket(TicketState.RUNNING, n) for n in spool.ticket_names("running")]
        if c.request_id == B
    )


def test_reordering_while_workers_claim_loses_and_doubles_nothing(spool):
    accept(spool, "prompt: a\nimages: 300\n" + DRY, A)
    claimed: list[int] = []
    stop = threading.Event()

    def claimer():
        while not stop.is_set():
            claim = claim_next(spool, "w")
            if claim is None:
                return
            claimed.append(claim.ticket.index)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads:
        t.start()
    for p in range(40):  # priorities flip while both claim
        spool.set_priority(A, p % 7 - 3, time.time())
    for t in threads:
        t.join(60)
    left = [parse_ticket_name(n)[1] for n in spool.ticket_names("pending")]
    assert sorted(claimed + left) == list(range(300))  # every ticket once: claimed or waiting


def test_tickets_that_come_back_later_follow_the_new_priority(spool):
    accept(spool, "prompt: a\nimages: 4\n" + DRY, A)
    claim = claim_next(spool, "w1")  # running under the old name
    spool.set_priority(A, 7, time.time())
    assert all(n.startswith("0993.") for n in spool.ticket_names("pending"))
    claim.hand_back(TicketState.PENDING)  # comes back as 1000.000000...
    assert any(n.startswith("1000.") for n in spool.ticket_names("pending"))
    Scheduler(spool, launcher=None).tick(time.time())
    assert all(n.startswith("0993.") for n in spool.ticket_names("pending"))
    assert spool.read_state(A)["priority"] == 7
    # a failed ticket is renamed too, so that `sdgen retry` finds it
    failed = claim_next(spool, "w2")
    failed.fail("boom", transient=False, now=time.time())
    sdgen(spool.layout.root, "priority", A, "-2")
    assert "1 ticket(s) of" in sdgen(spool.layout.root, "retry", A).stdout


def test_a_split_goes_on_at_the_new_priority_and_a_restart_doubles_nothing(spool):
    drop_settled(spool, "big.yaml", "prompt: a\nimages: 900\n" + DRY)
    sched = Scheduler(spool, launcher=None, split_window=200, budget=5.0)
    rid = sched.tick(time.time()).accepted[0]
    assert len(spool.ticket_names("pending")) == 200
    spool.set_priority(rid, 3, time.time())
    for name in spool.ticket_names("pending")[:150]:
        os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
    # a restarted daemon, and a cursor claiming the last slice may be out already
    cursor = spool.layout.split_cursor(rid)
    cursor.write_text('{"next": 150, "upto": 200}')
    sched = Scheduler(spool, launcher=None, split_window=200, budget=5.0)
    for _ in range(20):
        sched.tick(time.time())
        for name in spool.ticket_names("pending")[:100]:
            os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
    names = [n for s in ("pending", "done") for n in spool.ticket_names(s)]
    indexes = sorted(parse_ticket_name(n)[1] for n in names)
    assert indexes == list(range(900))  # each ticket once
    written_later = [n for n in names if parse_ticket_name(n)[1] >= 200]
    assert written_later and all(parse_ticket_name(n)[0] == 3 for n in written_later)


def test_priority_says_what_is_wrong_in_one_line(spool):
    accept(spool, "prompt: a\nimages: 1\n" + DRY, A)
    for args, words in ((("priority", A, "5000"), "between -1000 and 1000"), (("priority", "nope", "1"), "request id")):
        r = sdgen(spool.layout.root, *args, check=False)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_real_daemon_follows_a_new_priority_and_an_id_submitted_twice_runs_once(data, daemon):
    """With a real daemon and worker: of two requests that take turns, the one raised to a
    higher priority finishes while the other has done little; a tool that submits its
    request twice (same --id) while the daemon runs gets one request."""
    from tests.conftest import FAST, submit, wait_for

    a = submit(data, "--prompt", "a", "--images", "30", "--seed", "1")
    b = submit(data, "--prompt", "b", "--images", "30", "--seed", "2")
    d = daemon("--workers", "1", *FAST, SDGEN_DRY_RUN_DELAY="0.1")
    wait_for(lambda: sum(r["images_done"] for r in status_json(data)) >= 2, what="both accepted, work begun")
    assert "reordered" in sdgen(data, "priority", b, "9").stdout
    args = ("--prompt", "c", "--images", "1", "--seed", "3", "--id", "tool-job-1")
    c = submit(data, *args)
    assert submit(data, *args) == c  # the same id and content again: the same request
    wait_for(lambda: {r["id"]: r for r in status_json(data)}[b]["state"] == "done", timeout=90, what="b done")
    rows = {r["id"]: r for r in status_json(data)}
    # taking turns, a would have made ~30 by now; b went first after the change
    assert rows[a]["images_done"] <= 15, rows[a]
    assert len(rows) == 3 and rows[b]["priority"] == 9
    d.signal()
    d.wait(60)
