"""`sdgen prune --older-than AGE [--outputs] [--dry-run]` on a spool with finished, running
and pending requests."""

import json
import time

import pytest

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.store import Spool
from tests.conftest import accept, run_in_process
from tests.harness import sdgen_env

DONE, FAILED, CANCELLED = "20261126-000000-d00000", "20261126-000000-f00000", "20261126-000000-c00000"
RUNNING, PENDING, RECENT = "20261126-000000-a00000", "20261126-000000-b00000", "20261126-000000-e00000"
REQ = "prompt: a\nimages: 2\nseed: 1\nengine: dry-run\n"


def prune(data, *args):
    return run_in_process(["--data", str(data), "prune", *args], sdgen_env(data), cwd=data.parent)


def mine(rid):
    return lambda r: r != rid


@pytest.fixture
def mixed(spool: Spool):
    """Three requests that ended 40 days ago (done, failed, cancelled), one that ended just
    now, one running and one pending; every state recorded by the daemon's own step."""
    for rid in (DONE, FAILED, CANCELLED, RUNNING, PENDING, RECENT):
        accept(spool, REQ, rid)
    for rid in (DONE, RECENT):
        claim_next(spool, "w", skip_request=mine(rid)).finish({})
        claim_next(spool, "w", skip_request=mine(rid)).finish({})
    claim_next(spool, "w", skip_request=mine(FAILED)).finish({})
    claim_next(spool, "w", skip_request=mine(FAILED)).fail("weights missing", transient=False, now=0)
    spool.cancel(CANCELLED, now=0)
    claim_next(spool, "w", skip_request=mine(RUNNING))  # held by a live worker
    long_ago = time.time() - 40 * 86400
    sched = Scheduler(spool, launcher=None)
    sched.tick(now=long_ago)
    spool.write_state(RECENT, dict(spool.read_state(RECENT), finished_at=time.time()))
    for rid in (DONE, FAILED, CANCELLED, RUNNING, PENDING):
        (spool.layout.output_dir(rid)).mkdir(parents=True, exist_ok=True)
        (spool.layout.output_dir(rid) / "0000-000000-1.png").write_bytes(b"p" * 5000)
    states = {rid: spool.read_state(rid)["state"] for rid in spool.request_ids()}
    assert states == {
        DONE: "done",
        FAILED: "failed",
        CANCELLED: "cancelled",
        RUNNING: "running",
        PENDING: "pending",
        RECENT: "done",
    }
    return spool


def test_a_dry_run_says_what_would_go_and_removes_nothing(mixed, data):
    before = sorted(p for p in data.rglob("*"))
    r = prune(data, "--older-than", "30d", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert {line.split()[2] for line in lines[:-1]} == {DONE, FAILED, CANCELLED}
    assert all(line.startswith("would remove ") for line in lines[:-1])
    assert "would remove the records of 3 request(s); would free" in lines[-1] and "images kept" in lines[-1]
    assert sorted(p for p in data.rglob("*")) == before


def test_prune_removes_ended_records_only_and_keeps_images_unless_asked(mixed, data):
    spool = mixed
    r = prune(data, "--older-than", "720h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("removed ") == 4 and "removed the records of 3 request(s); freed" in r.stdout
    assert spool.request_ids() == sorted([RUNNING, PENDING, RECENT])
    names = [n for s in ("pending", "running", "done", "failed", "cancelled") for n in spool.ticket_names(s)]
    assert not [n for n in names if n.endswith((DONE, FAILED, CANCELLED))]
    assert len([n for n in names if n.endswith(RUNNING)]) == 2 and len([n for n in names if n.endswith(PENDING)]) == 2
    assert all((spool.layout.output_dir(rid) / "0000-000000-1.png").exists() for rid in (DONE, FAILED, CANCELLED))
    # nothing left that old: a second run says so
    assert "nothing to remove" in prune(data, "--older-than", "2592000s").stdout
    # the live requests go on: the daemon's next step still sees them
    assert Scheduler(spool, launcher=None).tick(now=time.time()).open_requests == 2


def test_with_outputs_the_images_go_too(mixed, data):
    r = prune(data, "--older-than", "43200m", "--outputs")
    assert r.returncode == 0 and "records and outputs of 3 request(s)" in r.stdout
    for rid in (DONE, FAILED, CANCELLED):
        assert not mixed.layout.output_dir(rid).exists()
    assert (mixed.layout.output_dir(RUNNING) / "0000-000000-1.png").exists()


def test_a_request_whose_state_json_says_ended_but_has_tickets_to_run_is_kept(mixed, data):
    path = mixed.layout.request_state(PENDING)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), state="done", finished_at=0.0)))
    assert prune(data, "--older-than", "1h").returncode == 0
    assert PENDING in mixed.request_ids()
    assert len([n for n in mixed.ticket_names("pending") if n.endswith(PENDING)]) == 2


@pytest.mark.parametrize("age", ["30", "30x", "d", "-1d", ""])
def test_a_bad_age_is_one_line_and_exit_2(mixed, data, age):
    r = prune(data, "--older-than", age)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "--older-than" in r.stderr and len(mixed.request_ids()) == 6


def test_no_spool_is_an_error_not_an_empty_prune(tmp_path):
    r = prune(tmp_path / "nowhere", "--older-than", "30d")
    assert r.returncode == 2 and "no spool in" in r.stderr
