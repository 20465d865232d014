"""Retention: the rule (`select_prunable`, pure), and the daemon's bounded, periodic pass."""

import json

from sdgen.daemon.retention import Candidate, RetainStep, candidates, select_prunable
from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.store import Spool
from tests.conftest import accept

DAY = 86400.0
NOW = 100 * DAY


def c(rid="a", recorded="done", finished_at=NOW - 40 * DAY, derived="done", active=0, events=0):
    return Candidate(rid, recorded, finished_at, derived, active, events)


def ids(chosen):
    return [x.request_id for x in chosen]


def test_only_requests_ended_before_the_threshold_are_chosen_oldest_first():
    chosen = select_prunable(
        [
            c("done-old", finished_at=NOW - 31 * DAY),
            c("failed-older", "failed", NOW - 60 * DAY, "failed"),
            c("cancelled-at-cutoff", "cancelled", NOW - 30 * DAY, "cancelled"),
            c("done-recent", finished_at=NOW - 29 * DAY),
        ],
        NOW,
        30 * DAY,
    )
    assert ids(chosen) == ["failed-older", "done-old", "cancelled-at-cutoff"]


def test_a_request_that_may_still_run_is_never_chosen_whatever_state_json_says():
    chosen = select_prunable(
        [
            c("running", "running", None, "running", active=1),
            c("pending", "pending", None, "pending", active=3),
            c("paused", "paused", None, "paused", active=2),
            # state.json says done, but tickets are pending again (a hand edit, `sdgen retry`)
            c("says-done-has-pending", "done", derived="running", active=1),
            c("says-failed-derived-pending", "failed", derived="pending", active=0),
            c("done-with-unwritten-tickets", active=5),
            c("no-finished-at", finished_at=None),
            c("bad-finished-at", finished_at="yesterday"),
            c("bool-finished-at", finished_at=True),
            c("events-wait-for-mlflow", events=2),
        ],
        NOW,
        30 * DAY,
    )
    assert chosen == []


def test_the_bound_takes_the_oldest():
    many = [c(f"r{i:03d}", finished_at=NOW - (40 + i) * DAY) for i in range(10)]
    assert ids(select_prunable(many, NOW, 30 * DAY, most=3)) == ["r009", "r008", "r007"]
    assert select_prunable(many, NOW, 30 * DAY, most=0) == []


def test_candidates_derive_from_the_tickets_not_only_state_json(spool):
    """A request whose state.json was edited to `done` while its tickets are still pending
    is seen as active, and is not pruned even far past the threshold."""
    accept(spool, "prompt: a\nimages: 2\nseed: 1\nengine: dry-run\n", "20261126-000000-aaaaaa")
    path = spool.layout.request_state("20261126-000000-aaaaaa")
    state = json.loads(path.read_text())
    path.write_text(json.dumps(dict(state, state="done", finished_at=0.0)))
    (cand,) = candidates(spool)
    assert cand.recorded == "done" and cand.derived == "pending" and cand.active == 2
    assert select_prunable([cand], NOW, 1.0) == []


def _ended(spool: Spool, rid: str, now: float) -> None:
    accept(spool, "prompt: a\nimages: 1\nseed: 1\nengine: dry-run\n", rid)
    claim_next(spool, "w1", skip_request=lambda r: r != rid).finish({})
    Scheduler(spool, launcher=None).update_requests(spool.ticket_counts(), now)
    assert spool.read_state(rid)["state"] == "done"


def test_the_daemons_pass_runs_at_most_every_period_bounded_and_drains_a_backlog_sooner(spool):
    rids = [f"20261126-000000-aaaa{i:02d}" for i in range(5)]
    for rid in rids:
        _ended(spool, rid, now=1000.0)
    step = RetainStep(spool, older_than=60.0, every=3600.0, most=2)
    assert step.maybe_run(now=1030.0, mono=0.0) == []  # nothing ended 60 s ago yet
    assert step.maybe_run(now=5000.0, mono=10.0) == []  # the next pass is an hour later
    pruned = step.maybe_run(now=5000.0, mono=3600.0)
    assert [p.request_id for p in pruned] == rids[:2] and all(p.bytes > 0 for p in pruned)
    # the bound was hit: the rest goes a few seconds later, not an hour
    assert [p.request_id for p in step.maybe_run(now=5000.0, mono=3610.0)] == rids[2:4]
    assert [p.request_id for p in step.maybe_run(now=5000.0, mono=3620.0)] == rids[4:]
    assert step.maybe_run(now=5000.0, mono=3630.0) == []  # under the bound: an hour again
    assert spool.request_ids() == []


def test_a_failing_pass_is_logged_once_and_never_raises(spool, monkeypatch, caplog):
    import sdgen.daemon.retention as retention

    monkeypatch.setattr(retention, "candidates", lambda spool: 1 / 0)
    step = RetainStep(spool, older_than=60.0, every=1.0)
    for mono in (0.0, 2.0, 4.0):
        assert step.maybe_run(now=0.0, mono=mono) == []
    assert sum("retention pass failed" in r.message for r in caplog.records) == 1
