"""Claims: several real processes race for the same tickets; each is won exactly once."""

import multiprocessing as mp
import time

from sdgen.spool.claim import Lease, claim_next
from sdgen.spool.request import parse_request
from sdgen.spool.store import Spool
from tests.conftest import accept


def _claimer(root, worker_id, queue):
    spool = Spool(root)
    won = []
    while True:
        claim = claim_next(spool, worker_id)
        if claim is None:
            break
        won.append(claim.name)
        claim.finish({"worker": worker_id})
    queue.put((worker_id, won))


def test_racing_processes_claim_each_ticket_once(spool):
    accept(spool, "prompt: a\nimages: 300\nengine: dry-run\nseed: 1\n")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(spool.layout.root, f"w{i}", queue)) for i in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    won = [name for _, names in results for name in names]
    assert len(won) == 300 and len(set(won)) == 300
    assert sum(1 for _, names in results if names) >= 2  # really concurrent
    assert len(spool.ticket_names("done")) == 300
    assert spool.ticket_names("running") == [] and list(spool.layout.leases.iterdir()) == []


def test_claim_follows_priority_and_takes_turns(spool):
    accept(spool, "prompt: big\nimages: 3\nseed: 1\n", "20261126-000000-aaaaaa")
    accept(spool, "prompt: small\nimages: 1\nseed: 1\n", "20261126-000001-bbbbbb")
    accept(spool, "prompt: urgent\nimages: 1\npriority: 9\nseed: 1\n", "20261126-000002-cccccc")
    order = []
    while (c := claim_next(spool, "w")) is not None:
        order.append((c.ticket.prompt, c.ticket.index))
        c.finish({})
    assert order == [("urgent", 0), ("big", 0), ("small", 0), ("big", 1), ("big", 2)]


def test_lease_is_written_on_claim_and_refreshed(spool):
    accept(spool, "prompt: a\nimages: 1\nseed: 1\n")
    claim = claim_next(spool, "w1", now=123.0)
    lease = Lease.read(spool.layout.lease(claim.name))
    assert (lease.worker, lease.beat, lease.claimed_at) == ("w1", 0, 123.0)
    assert claim.heartbeat() and Lease.read(spool.layout.lease(claim.name)).beat == 1


def test_a_late_writer_is_fenced(spool):
    """The daemon took the ticket back; another worker finished it; the late one must not
    write a second marker or touch the new holder's files."""
    accept(spool, "prompt: a\nimages: 1\nseed: 1\n")
    late = claim_next(spool, "late")
    # the daemon reclaims it (what Scheduler._reclaim does) and w2 claims it again
    spool.move_ticket(late.name, "running", "pending")
    spool.layout.lease(late.name).unlink()
    fresh = claim_next(spool, "w2")
    assert fresh.name == late.name
    assert late.still_mine() is False and late.heartbeat() is False
    assert fresh.finish({"by": "w2"}) is True
    assert late.finish({"by": "late"}) is False
    marker = spool.layout.ticket("done", late.name).read_text()
    assert '"by": "w2"' in marker


def test_a_handed_back_ticket_that_is_already_done_is_not_run_again(spool):
    accept(spool, "prompt: a\nimages: 1\nseed: 1\n")
    c = claim_next(spool, "w1")
    c.finish({})
    # a crash left a stale pending copy of a finished ticket
    spool.write(spool.layout.ticket("pending", c.name), c.ticket.to_json())
    assert claim_next(spool, "w2") is None
    assert spool.ticket_names("pending") == [] and spool.ticket_names("running") == []


def test_a_handed_back_ticket_claimed_at_once_keeps_its_new_lease(spool, monkeypatch):
    accept(spool, "prompt: a\nimages: 1\nseed: 1\n")
    first = claim_next(spool, "w1")
    move = spool.move_ticket
    taken = []

    def move_then_claim(name, src, dst, *a, **kw):
        moved = move(name, src, dst, *a, **kw)
        taken.append(claim_next(spool, "w2"))
        return moved

    monkeypatch.setattr(spool, "move_ticket", move_then_claim)
    assert first.hand_back()
    assert taken[0].name == first.name and taken[0].still_mine()


def test_a_worker_lists_a_long_queue_once_for_many_claims(spool, monkeypatch):
    from sdgen.spool.claim import PendingView

    accept(spool, "prompt: a\nimages: 40\nseed: 1\n")
    listings = []
    names = spool.ticket_names
    monkeypatch.setattr(spool, "ticket_names", lambda state: listings.append(state) or names(state))
    view = PendingView(spool, refresh=3600)
    claimed = []
    while (c := claim_next(spool, "w1", view=view)) is not None:
        claimed.append(c.ticket.index)
        c.finish({})
    assert claimed == list(range(40))
    assert listings.count("pending") == 2  # the first claim, and the last one finding none


def test_a_ticket_made_pending_after_the_listing_is_claimed_once_it_is_refreshed(spool):
    from sdgen.spool.claim import PendingView

    accept(spool, "prompt: a\nimages: 3\nseed: 1\n")
    view = PendingView(spool, refresh=3600)
    first = claim_next(spool, "w1", view=view)
    other = "20261126-000001-bbbbbb"
    spool.accept(other, parse_request("prompt: b\nimages: 1\nseed: 1\npriority: 9\n"), source="t", now=0.0)
    assert claim_next(spool, "w1", view=view).ticket.request_id == first.ticket.request_id  # the old listing
    view.refresh = 0.0
    assert claim_next(spool, "w1", view=view).ticket.request_id == other  # priority 9 first once relisted


def test_a_stopped_worker_holding_the_claim_lock_does_not_stall_the_host(spool):
    """A worker SIGSTOPped (Slurm suspend) while it holds the host's claim lock: the others
    wait at most the lock timeout, then claim without it (the rename decides)."""
    import signal
    import subprocess
    import sys

    accept(spool, "prompt: a\nimages: 2\nengine: dry-run\nseed: 1\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os, signal, sys; from filelock import FileLock; "
                f"lock = FileLock({str(spool.layout.claim_lock)!r}); lock.acquire(); "
                "print('held', flush=True); os.kill(os.getpid(), signal.SIGSTOP)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        claim = claim_next(spool, "w1")
        waited = time.monotonic() - t0
        assert claim is not None and 1.5 <= waited < 10, waited
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
