from dataclasses import replace

from sdgen.spool.layout import parse_ticket_name, ticket_name
from sdgen.spool.request import parse_request
from sdgen.spool.split import split_request
from sdgen.spool.ticket import Ticket, after_death, after_failure, after_retry, backoff_seconds, due_at


def a_ticket(**kw) -> Ticket:
    t = split_request("20261126-000000-abcdef", parse_request("prompt: a\nseed: 1\n"))[0]
    return t if not kw else Ticket(**{**t.__dict__, **kw})


def test_json_round_trip():
    t = a_ticket()
    assert Ticket.from_json(t.to_json()) == t


def test_backoff_is_exponential_and_capped():
    assert [backoff_seconds(a, base=5, cap=60) for a in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]


def test_a_deferred_ticket_is_due_on_the_daemons_clock_not_the_workers():
    # a worker whose clock is an hour ahead defers a ticket: the wait counts from when the
    # daemon first sees it, and once stamped the due time stays put
    _, t = after_failure(a_ticket(), "OSError: disk", True, "w1", now=3600.0 + 50.0)
    assert due_at(t, now=50.0) == 50.0 + backoff_seconds(1)
    stamped = replace(t, not_before=due_at(t, now=50.0))
    assert due_at(stamped, now=53.0) == 50.0 + backoff_seconds(1)


def test_transient_failures_defer_then_hold():
    t = a_ticket()
    state, t = after_failure(t, "OSError: disk", True, "w1", now=1000.0, max_attempts=3)
    assert state == "deferred" and t.attempt == 1 and t.wait_s == backoff_seconds(1) and t.not_before == 0
    state, t = after_failure(t, "OSError: disk", True, "w1", now=2000.0, max_attempts=3)
    assert state == "deferred" and t.attempt == 2
    state, t = after_failure(t, "OSError: disk", True, "w1", now=3000.0, max_attempts=3)
    assert state == "held" and "gave up after 3 attempts" in t.reason
    assert [h["event"] for h in t.history] == ["error"] * 3


def test_deterministic_failure_fails_at_once():
    state, t = after_failure(a_ticket(), "weights missing", False, "w1", now=1.0)
    assert state == "failed" and t.reason == "weights missing" and t.attempt == 1


def test_a_ticket_whose_worker_died_twice_is_held():
    state, t = after_death(a_ticket(), "lease expired", "w1", now=1.0)
    assert state == "pending" and t.deaths == 1
    state, t = after_death(t, "lease expired", "w2", now=2.0)
    assert state == "held" and "poison" in t.reason


def test_retry_resets_counters_but_keeps_history():
    _, t = after_failure(a_ticket(), "boom", False, "w1", now=1.0)
    r = after_retry(t, now=2.0)
    assert (r.attempt, r.deaths, r.reason) == (0, 0, "") and len(r.history) == 2
    # the attempt number goes on counting (events, MLflow run names), backoff starts over
    assert (r.attempts_before, r.attempt_number) == (1, 2)
    assert Ticket.from_json(r.to_json()) == r


def test_names_sort_by_priority_then_turn_then_submission():
    names = sorted(
        [
            ticket_name(0, 1, "20261126-000000-aaaaaa"),
            ticket_name(0, 0, "20261126-000001-bbbbbb"),
            ticket_name(5, 3, "20261126-000002-cccccc"),
            ticket_name(0, 0, "20261126-000000-aaaaaa"),
            ticket_name(-3, 0, "20261126-000000-dddddd"),
        ]
    )
    assert [parse_ticket_name(n)[:2] for n in names] == [(5, 3), (0, 0), (0, 0), (0, 1), (-3, 0)]
    assert parse_ticket_name(names[1])[2] == "20261126-000000-aaaaaa"
