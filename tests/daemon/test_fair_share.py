"""Fair share (issue 20): the daemon records each request's submitter (its inbox file's
owner) and workers claim round robin across users, so one user's many requests do not
starve another's small one. Two owners are staged with chown (the tests run as root)."""

import json
import os
import time

import pytest

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import PendingView, claim_next
from sdgen.spool.intake import owner_name
from sdgen.spool.layout import parse_ticket_name
from tests.conftest import FAST, sdgen, submit

UID_A, UID_B = 1000, 1001  # 1001 has no passwd entry here: recorded as "1001"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="staging two file owners needs root (chown)")


def queue_two_users(data) -> tuple[list[str], str]:
    """User A: 5 requests of 10 one-image tickets; then user B: 1 request of 3. Submitted
    while no daemon runs, their inbox files given to two owners."""
    a = [submit(data, "--prompt", f"a{i}", "--images", "10", "--batch-size", "1", "--seed", "1") for i in range(5)]
    b = submit(data, "--prompt", "b", "--images", "3", "--batch-size", "1", "--seed", "1")
    inbox = data / "spool" / "inbox"
    for rid in a:
        os.chown(inbox / f"{rid}.yaml", UID_A, UID_A)
    os.chown(inbox / f"{b}.yaml", UID_B, UID_B)
    return a, b


def accept_all(spool) -> None:
    """Daemon ticks until every inbox file is accepted and split (a loaded machine may need
    more than one tick's intake budget)."""
    sched = Scheduler(spool, launcher=None)
    for _ in range(100):
        sched.tick(time.time())
        if not os.listdir(spool.layout.inbox) and not os.listdir(spool.layout.incoming):
            return
    raise AssertionError("inbox not accepted after 100 ticks")


def request_of(name: str) -> str:
    return parse_ticket_name(name)[2]


@needs_root
def test_two_users_take_turns_in_claim_order(data, spool):
    a, b = queue_two_users(data)
    accept_all(spool)
    assert {spool.read_state(rid)["user"] for rid in a} == {owner_name(UID_A)}
    assert spool.read_state(b)["user"] == "1001"
    view, order = PendingView(spool), []
    while (claim := claim_next(spool, "w1", view=view)) is not None:
        order.append(request_of(claim.name))
        claim.finish({})
    assert len(order) == 53
    # B's 3 tickets are every other claim from the start, not after A's 50 (who goes first
    # is whose ticket 0 sorts first: ids submitted within one second differ in random digits)
    assert [i for i, rid in enumerate(order) if rid == b] in ([0, 2, 4], [1, 3, 5])
    # A's requests take turns among themselves too: ticket 0 of each, then ticket 1, ...
    assert [rid for rid in order if rid != b][:10] == sorted(a) * 2


@needs_root
def test_users_alternate_when_a_worker_relists_before_every_claim(data, spool):
    """Slow tickets: every claim sees a fresh listing, whose turns start again; the worker's
    memory of whom it served last keeps the users alternating."""
    a, b = queue_two_users(data)
    accept_all(spool)
    view, order = PendingView(spool, refresh=0.0), []
    for _ in range(8):
        claim = claim_next(spool, "w1", view=view)
        order.append(request_of(claim.name))
        claim.finish({})
    assert [rid == b for rid in order[:6]] in ([False, True] * 3, [True, False] * 3)
    assert order[6:] == [rid for rid in sorted(a) if rid not in order[:6]][:2]


@needs_root
def test_a_small_request_of_another_user_finishes_long_before_a_big_users_requests(data, daemon):
    """A real daemon and worker (dry-run engine): B's 3 images are made among the first
    claims and B's request ends before any of A's five."""
    a, b = queue_two_users(data)
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY="0.02")
    assert d.wait(120) == 0, d.output()[-3000:]
    states = {rid: json.loads((data / "spool" / "requests" / rid / "state.json").read_text()) for rid in [*a, b]}
    assert all(s["state"] == "done" for s in states.values())
    assert states[b]["user"] == "1001" and states[a[0]]["user"] == owner_name(UID_A)
    # claim order, from the workers' logs (one worker at a time; a second one only if the
    # first died) by their time stamps; a ticket reclaimed on a loaded machine counts once
    lines = sorted(
        line
        for log in (data / "logs").glob("worker-*.log")
        for line in log.read_text().splitlines()
        if ": ticket " in line and " image(s), attempt " in line
    )
    claimed = list(dict.fromkeys(line.split(": ticket ", 1)[1].split(":", 1)[0] for line in lines))
    assert len(claimed) == 53, lines
    b_at = [i for i, name in enumerate(claimed) if request_of(name) == b]
    a_last = [max(i for i, name in enumerate(claimed) if request_of(name) == rid) for rid in a]
    assert max(b_at) <= 7, (b_at, d.output()[-3000:])  # every other claim (give or take a turn)
    assert min(a_last) >= 40, (a_last, d.output()[-3000:])  # A's requests end together, near the end
    assert states[b]["finished_at"] < min(states[rid]["finished_at"] for rid in a)
    # `sdgen list --user` and `status --json` show who submitted what
    listed = sdgen(data, "list", "--user", "1001", check=True).stdout.split("\n")
    assert [line.split("\t")[0] for line in listed if line] == [b]
    rows = json.loads(sdgen(data, "status", "--json", check=True).stdout)
    assert {r["id"]: r["user"] for r in rows} == {**{rid: owner_name(UID_A) for rid in a}, b: "1001"}
