"""The daemon never dies of data (issue 14): a damaged spool, hostile inbox entries and a
large request, with the real daemon process, killed and restarted on the damage."""

import json
import os
import signal
import time

import pytest

from sdgen.cli.status import collect
from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.request import parse_request
from sdgen.spool.store import SplitProgress, Spool, StuckEntry
from tests.conftest import FAST, drop_settled, sdgen, status_json, wait_for

GOOD = "prompt: a fox\nimages: 2\nengine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n"
RID = "20261126-000000-aaaaaa"


def damage(spool: Spool) -> dict[str, str]:
    """Every kind of damage a spool file can carry, planted where the daemon reads it.
    Returns relative path -> what it is."""
    layout = spool.layout
    spool.accept(RID, parse_request(GOOD), source="t", now=time.time())
    planted = {}

    def plant(path, data: bytes, what: str):
        path.write_bytes(data)
        planted[str(path.relative_to(layout.spool))] = what

    plant(layout.request_state(RID), b"{not json", "state.json not JSON")
    plant(layout.ticket("running", f"1000.000099.{RID}"), b"\x00\xff junk", "junk ticket in running/")
    plant(layout.ticket("deferred", f"1000.000098.{RID}"), b'{"request_id": 5}', "ticket of wrong shape")
    plant(layout.ticket("pending", "not-a-ticket"), b"{}", "junk name in pending/")
    plant(layout.lease(f"1000.000099.{RID}"), b"[" * 100_000, "deeply nested lease")
    plant(layout.launcher_status, b"[1, 2", "launcher.json damaged")
    plant(layout.tracking_status, b'"a string"', "tracking.json not an object")
    plant(layout.intake_status, b"\xff\xfe", "intake.json not UTF-8")
    return planted


def hostile_inbox(inbox) -> dict[str, str]:
    files = {
        "nested.yaml": "[" * 5000 + "]" * 5000,
        "dupkeys.yaml": "prompt: a\nimages: 1\nimages: 100000\n",
        "manykeys.yaml": "".join(f"k{i}: 1\n" for i in range(50_000)),
        ("x" * 236) + ".yaml": "prompt: [broken",
        "ctrl.yaml": 'prompt: a\nname: "\\e[2J\\e]0;pwned\\a"\n',
        "alias.yaml": "a: &a [1]\nb: *a\n",
    }
    for name, text in files.items():
        (inbox / name).write_text(text)
    os.mkfifo(inbox / "fifo.yaml")
    (inbox / "dir.yaml").mkdir()
    (inbox / "link.yaml").symlink_to("/etc/passwd")
    old = time.time() - 60
    for name in list(files) + ["fifo.yaml", "dir.yaml"]:
        os.utime(inbox / name, (old, old))
    return files


@pytest.mark.slow
def test_a_damaged_spool_and_a_hostile_inbox_stop_nothing(data, daemon):
    spool = Spool(data).ensure()
    damage(spool)
    hostile_inbox(spool.layout.inbox)
    for command in (["status"], ["status", "--json"], ["list"], ["status", RID]):
        out = sdgen(data, *command)
        assert out.returncode in (0, 2) and "Traceback" not in out.stderr, (command, out.stderr)

    d = daemon("--workers", "1", *FAST)
    wait_for(lambda: "daemon up" in d.output(), what="daemon")
    # everything hostile ends rejected, every damaged file in corrupt/ with a reason
    wait_for(lambda: not [e for e in os.listdir(spool.layout.inbox)], timeout=30, what="inbox emptied")
    reasons = {p.name: p.read_text() for p in spool.layout.rejected.glob("*.reason")}
    assert len(reasons) == 9, reasons
    assert all(len(r) <= 1001 and r.count("\n") == 1 for r in reasons.values())
    joined = "".join(reasons.values())
    for expected in (
        "given twice",
        "nested",
        "more than 64 keys",
        "control character",
        "aliases",
        "not a regular file",
        "symbolic link",
    ):
        assert expected in joined, expected
    assert any(name.endswith(".reason") and "x" * 50 in name for name in reasons)

    # the good work still gets done, and a new request too
    (spool.layout.inbox / ".new.yaml.part").write_text(GOOD)
    os.rename(spool.layout.inbox / ".new.yaml.part", spool.layout.inbox / "new.yaml")
    wait_for(
        lambda: [r for r in status_json(data) if r["state"] == "done" and r["images_total"] == 2 and r["id"] != RID],
        timeout=60,
        what="the new request done",
    )
    # the junk running ticket goes once its (damaged, so absent) lease has been silent 4 s
    wait_for(
        lambda: len([p for p in spool.layout.corrupt.iterdir() if p.name.endswith(".reason")]) == 5,
        timeout=20,
        what="five damaged files moved aside",
    )
    assert d.proc.poll() is None, d.output()[-3000:]

    # SIGKILL and restart on what is left: it comes up and serves
    d.kill_all()
    damage_again = spool.layout.request_state(RID)
    damage_again.write_bytes(b"\x00")
    d2 = daemon("--workers", "1", *FAST)
    wait_for(lambda: "daemon up" in d2.output(), what="restarted daemon")
    wait_for(
        lambda: any(r["id"] == RID and r["state"] == "done" for r in status_json(data)),
        timeout=60,
        what="the damaged request rebuilt and done",
    )
    out = sdgen(data, "status")
    assert out.returncode == 0 and "corrupt/" in out.stdout and "\x1b" not in out.stdout
    assert "Traceback" not in d.output() + d2.output() or "tick step" in d.output() + d2.output()
    assert d2.proc.poll() is None


@pytest.mark.slow
def test_a_file_written_in_place_in_two_writes_is_taken_whole(data, daemon):
    d = daemon("--workers", "1", *FAST)
    wait_for(lambda: "daemon up" in d.output(), what="daemon")
    inbox = data / "spool" / "inbox"
    with open(inbox / "slow.yaml", "w") as f:
        f.write("prompt: a slow fox\nengine: dry-run\n")
        f.flush()
        time.sleep(1.3)  # a tool pausing between writes, file open all along
        f.write("images: 3\nwidth: 128\nheight: 128\n")
    with open(inbox / "twice.yaml", "w") as f:  # two opens, 0.5 s apart: the quiet rule
        f.write("prompt: another\nengine: dry-run\n")
    time.sleep(0.5)
    with open(inbox / "twice.yaml", "a") as f:
        f.write("images: 2\nwidth: 128\nheight: 128\n")
    wait_for(lambda: len([r for r in status_json(data) if r["state"] == "done"]) == 2, timeout=60, what="both done")
    totals = sorted(r["images_total"] for r in status_json(data))
    assert totals == [2, 3]


def test_a_large_request_is_split_across_ticks_and_a_restart_finishes_it_exactly(spool):
    drop_settled(spool, "big.yaml", "prompt: a\nimages: 3000\nengine: dry-run\nseed: 5\n")
    sched = Scheduler(spool, launcher=None, budget=0.05, split_window=3000)
    for _ in range(50):  # on a loaded machine the budget may run out before the file is read
        report = sched.tick(time.time())  # one tick writes a slice, not the whole request
        if report.accepted:
            break
    first = len(spool.ticket_names("pending"))
    assert 0 < first < 3000 and report.splitting == 1 and not report.idle and report.wake_in == 0
    # a worker claims and finishes a few meanwhile
    for name in spool.ticket_names("pending")[:5]:
        os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
    # the daemon dies mid-slice: a cursor says a slice was being written
    rid = report.accepted[0]
    sched2 = Scheduler(spool, launcher=None, budget=0.05, split_window=3000)  # a restarted daemon
    for _ in range(500):
        if not sched2.tick(time.time()).splitting:
            break
    names = [n for s in ("pending", "done") for n in spool.ticket_names(s)]
    assert len(names) == len(set(names)) == 3000
    assert not (spool.layout.incoming / f"{rid}.yaml").exists()
    assert not spool.layout.split_cursor(rid).exists()


def test_a_large_request_keeps_only_its_split_window_written_and_refills_it_as_work_is_taken(spool):
    """What waits costs a cursor, not a file: at most `split_window` tickets of a request are
    in pending/ at any time; they are topped up as workers take them, across a restart, and
    every ticket still comes out exactly once, in order."""
    drop_settled(spool, "big.yaml", "prompt: a\nimages: 2500\nengine: dry-run\nseed: 5\n")
    window = 300
    sched = Scheduler(spool, launcher=None, budget=5.0, split_window=window)
    report = sched.tick(time.time())
    rid = report.accepted[0]
    assert len(spool.ticket_names("pending")) == window
    assert report.splitting == 1 and report.wake_in is None  # a full window: no busy loop
    row = collect(spool)[0]
    assert row["state"] == "pending" and row["tickets_pending"] == 2500 and row["tickets_total"] == 2500
    assert sched.tick(time.time()).splitting == 1 and len(spool.ticket_names("pending")) == window
    seen_most = 0
    for round_ in range(200):
        pending = spool.ticket_names("pending")
        seen_most = max(seen_most, len(pending))
        for name in pending[:120]:  # workers take some
            os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("done", name))
        if round_ == 3:
            sched = Scheduler(spool, launcher=None, budget=5.0, split_window=window)  # a restart
        if not sched.tick(time.time()).splitting and not spool.ticket_names("pending"):
            break
    done = spool.ticket_names("done")
    assert len(done) == len(set(done)) == 2500 and seen_most <= window
    assert sorted(int(n.split(".")[1]) for n in done) == list(range(2500))
    assert not spool.layout.split_cursor(rid).exists() and not list(spool.layout.incoming.iterdir())


def test_a_split_interrupted_inside_a_slice_makes_no_ticket_twice(spool, monkeypatch):
    request = parse_request("prompt: a\nimages: 450\nengine: dry-run\nseed: 5\n")
    (spool.layout.incoming / f"{RID}.yaml").write_text("prompt: a\nimages: 450\nengine: dry-run\nseed: 5\n")
    request = spool.begin_accept(RID, request, "t", time.time())
    written = []
    real_write = spool.write

    def dying_write(target, data):
        if target.parent == spool.layout.tickets("pending"):
            written.append(target)
            if len(written) == 250:  # inside the second slice
                raise KeyboardInterrupt("daemon killed")
        real_write(target, data)

    monkeypatch.setattr(spool, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        spool.continue_split(RID, request, deadline=float("inf"))
    monkeypatch.setattr(spool, "write", real_write)
    # some of the slice went to work meanwhile
    for name in spool.ticket_names("pending")[200:240]:
        os.rename(spool.layout.ticket("pending", name), spool.layout.ticket("running", name))
    assert Spool(spool.layout.root).continue_split(RID, request, deadline=float("inf")) == SplitProgress.ALL_OUT
    names = [n for s in ("pending", "running") for n in spool.ticket_names(s)]
    assert len(names) == len(set(names)) == 450


def test_an_inbox_entry_that_cannot_be_moved_is_reported_once_and_skipped(spool, monkeypatch, caplog):
    inbox = spool.layout.inbox
    old = time.time() - 60
    for name, text in (("stuck.yaml", "prompt: [bad"), ("fine.yaml", "prompt: a\nengine: dry-run\n")):
        (inbox / name).write_text(text)
        os.utime(inbox / name, (old, old))
    real_reject = spool.reject

    def reject(path, reason, now):
        if path.name == "stuck.yaml":
            raise StuckEntry(path, "cannot be moved to rejected/ (Permission denied)")
        return real_reject(path, reason, now)

    monkeypatch.setattr(spool, "reject", reject)
    sched = Scheduler(spool, launcher=None)
    report = sched.tick(time.time())
    assert len(report.accepted) == 1
    sched.tick(time.time())
    assert caplog.text.count("stuck.yaml is stuck") == 1
    status = json.loads(spool.layout.intake_status.read_text())
    assert "Permission denied" in status["stuck"]["stuck.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_daemon_stopped_mid_split_finishes_it_exactly_after_restart(data, daemon, how):
    # a window as large as the request: the split itself is what is interrupted here
    d = daemon("--workers", "1", "--split-window", "6000", *FAST)
    wait_for(lambda: "daemon up" in d.output(), what="daemon")
    inbox = data / "spool" / "inbox"
    drop_settled(Spool(data), ".big.part", "prompt: a\nimages: 6000\nengine: dry-run\nwidth: 128\nheight: 128\n")
    os.rename(inbox / ".big.part", inbox / "big.yaml")
    pending = data / "spool" / "tickets" / "pending"
    # liveness, not a speed target (benchmarks measure that): tickets are claimable long
    # before the split is over
    wait_for(lambda: any(pending.iterdir()), timeout=10, interval=0.02, what="first ticket")
    if how == "SIGKILL":
        d.kill_all()  # the daemon and its workers, mid-slice
    else:
        d.signal(signal.SIGTERM)
        # the loop ends within a tick (the intake budget), then hands its worker's ticket back
        wait_for(
            lambda: d.proc.poll() is not None or "stopping 1 worker" in d.output() or "exiting" in d.output(),
            timeout=10,
            interval=0.02,
            what="the loop to stop",
        )
        d.wait(timeout=40)
    split = {n for s in ("pending", "running", "done") for n in os.listdir(data / "spool" / "tickets" / s)}
    assert len(split) < 6000  # it really was interrupted mid-split
    d2 = daemon("--workers", "1", "--split-window", "6000", *FAST)
    wait_for(lambda: not list((data / "spool" / "incoming").iterdir()), timeout=120, what="split finished")
    d2.signal(signal.SIGTERM)
    d2.wait(timeout=40)
    names = [n for s in ("pending", "running", "done", "deferred") for n in os.listdir(data / "spool" / "tickets" / s)]
    assert len(names) == len(set(names)) == 6000
