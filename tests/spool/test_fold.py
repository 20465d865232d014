"""Folding done-markers into a request's ledger (docs/spool.md, "Folding done tickets"):
done/ keeps recent work only, a finished image costs a ledger line, and every reader
(counts, status, claims, reconcile, the split's recovery, the parent run's manifest) still
sees each done ticket exactly once, across a crash at any step of a fold."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdgen.daemon.policy import foldable_done
from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.progress import summarize
from sdgen.spool.states import TicketState
from sdgen.spool.store import Spool, _ranges
from tests.conftest import accept, drop_settled

RID = "20261126-000000-aaaaaa"


def finish_all(spool: Spool, n: int | None = None) -> list[str]:
    """Do what workers do for the first `n` pending tickets: claim, mark done, retire."""
    names = spool.ticket_names(TicketState.PENDING)[:n]
    for name in names:
        ticket = spool.read_ticket(TicketState.PENDING, name)
        assert spool.claim(name, b'{"worker": "w"}')
        outputs = [
            {
                "file": f"outputs/{RID}/{im.prompt_index:04d}-{im.image_index:06d}-{im.seed}.png",
                "seed": im.seed,
                "prompt_index": im.prompt_index,
                "image_index": im.image_index,
                "sha256": "ab" * 32,
            }
            for im in ticket.images
        ]
        marker = json.loads(ticket.to_json())
        marker["result"] = {"worker": "w", "attempt": 1, "outputs": outputs, "seconds": {"total": 0.1}}
        assert spool.finish(name, json.dumps(marker, indent=1).encode())
        spool.retire(name)
    return names


def done_indexes(spool: Spool) -> list[int]:
    return sorted(spool.ticket_counts().get(RID, {}).get(TicketState.DONE, []))


def test_folded_tickets_are_done_to_every_reader_and_cost_a_line(spool):
    accept(spool, "prompt: a\nimages: 6\nseed: 1\nengine: dry-run\n", RID)
    names = finish_all(spool, 4)
    before = done_indexes(spool)
    assert spool.fold_done(RID, names[:3]) == 3
    assert spool.ticket_names(TicketState.DONE) == names[3:]  # done/ keeps the rest
    assert done_indexes(spool) == before == [0, 1, 2, 3]
    assert json.loads(spool.layout.folded(RID).read_text()) == {"ranges": [[0, 3]]}
    lines = spool.layout.done_ledger(RID).read_bytes().splitlines()
    assert len(lines) == 3 and all(len(line) < 600 for line in lines)  # under 1 KB per image
    markers = spool.done_markers(RID)
    assert [m["name"] for m in markers] == names
    assert all(m["result"]["outputs"][0]["sha256"] == "ab" * 32 for m in markers)
    assert all(spool.is_done(n) for n in names) and spool.find_ticket(names[0]) == [TicketState.DONE]
    meta = spool.read_state(RID)
    row = summarize(meta, spool.ticket_counts()[RID], False)
    assert row["images_done"] == 4 and row["tickets_done"] == 4 and row["tickets_pending"] == 2


def test_a_copy_of_a_folded_ticket_is_never_run_again(spool):
    """A stray copy (a late writer's hand-back, a hand edit) of a folded ticket: a claim
    drops it, and start-up reconciliation removes it."""
    accept(spool, "prompt: a\nimages: 2\nseed: 1\nengine: dry-run\n", RID)
    names = finish_all(spool)
    spool.fold_done(RID, names)
    ticket_json = json.dumps({"request_id": RID}).encode()  # contents do not matter here
    spool.write(spool.layout.ticket(TicketState.PENDING, names[0]), ticket_json)
    assert claim_next(spool, "w2") is None
    assert not spool.ticket_names(TicketState.RUNNING)
    spool.write(spool.layout.ticket(TicketState.DEFERRED, names[1]), ticket_json)
    actions = spool.reconcile()
    assert actions and not spool.ticket_names(TicketState.DEFERRED)
    assert done_indexes(spool) == [0, 1]


@pytest.mark.parametrize("crash_at", ["summary", "unlink"])
def test_a_fold_interrupted_at_any_step_counts_every_ticket_once(spool, monkeypatch, crash_at):
    accept(spool, "prompt: a\nimages: 5\nseed: 1\nengine: dry-run\n", RID)
    names = finish_all(spool)
    real_write, real_unlink = spool.write, type(spool.layout.ticket(TicketState.DONE, names[0])).unlink

    def dying_write(target, data):
        if target == spool.layout.folded(RID):
            raise KeyboardInterrupt("killed before the summary")
        real_write(target, data)

    def dying_unlink(path, missing_ok=False):
        if path.parent == spool.layout.tickets(TicketState.DONE):
            raise KeyboardInterrupt("killed before the markers went")
        real_unlink(path, missing_ok=missing_ok)

    if crash_at == "summary":
        monkeypatch.setattr(spool, "write", dying_write)
    else:
        monkeypatch.setattr(type(spool.layout.ticket(TicketState.DONE, names[0])), "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        spool.fold_done(RID, names)
    monkeypatch.undo()
    fresh = Spool(spool.layout.root)
    assert done_indexes(fresh) == [0, 1, 2, 3, 4]
    assert len(fresh.done_markers(RID)) == 5
    fresh.fold_done(RID, fresh.ticket_names(TicketState.DONE))  # the next tick folds again
    assert fresh.ticket_names(TicketState.DONE) == [] and done_indexes(fresh) == [0, 1, 2, 3, 4]
    assert [m["name"] for m in fresh.done_markers(RID)] == names


def test_a_damaged_summary_is_rebuilt_from_the_ledger(spool):
    accept(spool, "prompt: a\nimages: 3\nseed: 1\nengine: dry-run\n", RID)
    spool.fold_done(RID, finish_all(spool))
    spool.layout.folded(RID).write_text('{"ranges": "garbage"')
    with open(spool.layout.done_ledger(RID), "ab") as f:
        f.write(b'{"name": "torn')  # a crash mid-append
    assert done_indexes(Spool(spool.layout.root)) == [0, 1, 2]


def test_the_daemon_folds_only_settled_tickets_after_the_delay(spool):
    accept(spool, "prompt: a\nimages: 4\nseed: 1\nengine: dry-run\n", RID)
    names = finish_all(spool, 3)
    # a stray running copy and a lease of ticket 2 (a late writer): it must stay in done/
    spool.write(spool.layout.lease(names[2]), b'{"worker": "late"}')
    sched = Scheduler(spool, launcher=None, fold_after=60)
    sched.tick(time.time(), mono=1000.0)
    assert spool.ticket_names(TicketState.DONE) == names  # too recent
    sched.tick(time.time(), mono=1061.0)
    assert spool.ticket_names(TicketState.DONE) == [names[2]]
    assert done_indexes(spool) == [0, 1, 2] and spool.read_state(RID)["state"] == "running"
    spool.release_lease(names[2])
    finish_all(spool)
    sched.tick(time.time(), mono=1070.0)
    sched.tick(time.time(), mono=1200.0)
    assert spool.ticket_names(TicketState.DONE) == [] and spool.read_state(RID)["state"] == "done"
    assert Scheduler(spool, launcher=None, fold_after=-1).tick(time.time()).open_requests == 0


def test_foldable_done_is_oldest_first_bounded_and_skips_active_and_leased():
    seen = {f"1000.{i:06d}.{RID}": float(i) for i in range(10)}
    plan = foldable_done(seen, mono=100.0, after=95.0, active={RID: {1}}, leased={f"1000.000002.{RID}"}, most=3)
    assert plan == {RID: [f"1000.000000.{RID}", f"1000.000003.{RID}", f"1000.000004.{RID}"]}
    assert foldable_done(seen, mono=5.0, after=10.0, active={}, leased=set(), most=100) == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.integers(0, 300), max_size=40), max_size=8))
def test_ranges_hold_exactly_the_folded_indexes(batches):
    folded: set[int] = set()
    for batch in batches:
        folded |= batch
        ranges = _ranges(sorted(folded))
        assert {i for a, b in ranges for i in range(a, b)} == folded
        assert all(a < b for a, b in ranges) and all(r[1] < s[0] for r, s in zip(ranges, ranges[1:]))


def test_remove_request_takes_its_records_and_nothing_of_another(spool):
    """`sdgen prune`'s step: an ended request's tickets, ledger and folder go (outputs only
    when asked); another request's records stay."""
    accept(spool, "prompt: a\nimages: 3\nseed: 1\nengine: dry-run\n", RID)
    other = "20261126-000000-cccccc"
    accept(spool, "prompt: b\nimages: 2\nseed: 1\nengine: dry-run\n", other)
    names = [n for n in finish_all(spool) if n.endswith(RID)]
    spool.fold_done(RID, names[:2])
    out = spool.layout.output_dir(RID)
    out.mkdir(parents=True)
    (out / "x.png").write_bytes(b"png" * 1000)
    freed = spool.remove_request(RID)
    assert freed > 0 and not spool.layout.request_dir(RID).exists() and (out / "x.png").exists()
    assert not [n for s in TicketState for n in spool.ticket_names(s) if n.endswith(RID)]
    assert len(spool.ticket_names(TicketState.DONE)) == 2 and spool.read_state(other)
    assert spool.remove_request(RID, outputs=True) > 0 and not out.exists()
    with pytest.raises(ValueError):
        spool.remove_request("../../etc")


def test_a_prune_beside_a_live_daemon_leaves_no_half_request(spool, monkeypatch):
    """The daemon ticks while a prune removes a request's tickets: it must not see the
    request (derive it as pending from no tickets and write its state.json back)."""
    accept(spool, "prompt: a\nimages: 2\nseed: 1\nengine: dry-run\n", RID)
    finish_all(spool, 1)
    claim_next(spool, "w").fail("bad input", transient=False, now=time.time())
    sched = Scheduler(spool.__class__(spool.layout.root), launcher=None)
    sched.tick(time.time())
    assert spool.read_state(RID)["state"] == "failed"  # re-derived every tick (it may be retried)
    real_rmdir = Path.rmdir

    def tick_then_rmdir(path):
        sched.tick(time.time())  # the daemon ticks after the prune emptied the folder
        real_rmdir(path)

    monkeypatch.setattr(Path, "rmdir", tick_then_rmdir)
    spool.remove_request(RID)
    monkeypatch.undo()
    assert not spool.layout.request_dir(RID).exists() and RID not in spool.request_ids()
    assert not [p for p in spool.layout.tmp.iterdir() if p.name.startswith("removing-")]


def test_the_tmp_sweep_removes_old_folders_and_is_stopped_by_nothing(spool, monkeypatch, caplog):
    old = spool.layout.tmp / "removing-20261126-000000-aaaaaa-abcdef"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "state.json").write_text("{}")
    (spool.layout.tmp / "x.part").write_text("half")
    assert spool.sweep_tmp(time.time() + 3600, older_than=60) == 2 and not list(spool.layout.tmp.iterdir())
    (spool.layout.tmp / "stuck.part").write_text("x")

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("os.unlink", refuse)
    assert spool.sweep_tmp(time.time() + 3600, older_than=60) == 0  # logged, not raised
    assert "cannot sweep spool/tmp/stuck.part" in caplog.text


def test_a_lying_folded_summary_marks_nothing_done_and_is_rebuilt_from_the_ledger(spool):
    """An attacker's folded.json ([[0, 10000000]] on a 6-ticket request) once marked the
    request done and made claims drop its pending tickets. Out-of-range ranges are set
    aside; a summary the ledger does not back never drops a ticket."""
    accept(spool, "prompt: a\nimages: 6\nseed: 1\nengine: dry-run\n", RID)
    names = finish_all(spool, 2)
    spool.fold_done(RID, names)
    spool.layout.folded(RID).write_text('{"ranges": [[0, 10000000]]}')
    fresh = Spool(spool.layout.root)
    assert done_indexes(fresh) == [0, 1]
    assert any(p.name.endswith("folded.json") for p in spool.layout.corrupt.iterdir())
    assert json.loads(spool.layout.folded(RID).read_text()) == {"ranges": [[0, 2]]}
    spool.layout.folded(RID).write_text('{"ranges": [[0, 4]]}')  # in range, but a lie
    fresh = Spool(spool.layout.root)
    claimed = [claim_next(fresh, f"w{i}") for i in range(4)]
    assert all(c is not None for c in claimed)  # tickets 2..5 still run
    assert sorted(c.ticket.index for c in claimed) == [2, 3, 4, 5]


def test_a_split_cursor_past_the_end_is_set_aside_and_the_split_goes_on(spool):
    drop_settled(spool, "big.yaml", "prompt: a\nimages: 500\nengine: dry-run\nseed: 1\n")
    import os

    sched = Scheduler(spool, launcher=None, split_window=50, budget=5.0)
    [rid] = sched.tick(time.time()).accepted
    spool.layout.split_cursor(rid).write_text('{"next": 999999, "upto": 999999}')
    for _ in range(100):
        for name in spool.ticket_names("pending"):
            os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
        if not sched.tick(time.time()).splitting and not spool.ticket_names("pending"):
            break
    done = sorted(int(n.split(".")[1]) for n in spool.ticket_names("done"))
    assert done == list(range(500))  # every ticket, once
    assert any(p.name.endswith("split.json") for p in spool.layout.corrupt.iterdir())


def test_a_lying_summary_never_makes_a_reclaim_drop_a_running_ticket(spool):
    """The reclaim of a dead worker's ticket drops it when it is done: a summary that the
    ledger does not back must not count as done there either."""
    accept(spool, "prompt: a\nimages: 3\nseed: 1\nengine: dry-run\n", RID)
    spool.fold_done(RID, finish_all(spool, 1))
    name = spool.ticket_names(TicketState.PENDING)[0]
    ticket = spool.read_ticket(TicketState.PENDING, name)
    assert spool.claim(name, b'{"worker": "dead"}')
    spool.layout.folded(RID).write_text('{"ranges": [[0, 3]]}')  # a lie: only ticket 0 is folded
    assert Spool(spool.layout.root).reclaim(name, TicketState.PENDING, ticket) is True
    assert spool.find_ticket(name) == [TicketState.PENDING]
