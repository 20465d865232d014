"""The daemon and its local workers as real processes, with real signals."""

import json
import os
import signal
import time

import pytest

from tests.conftest import (
    FAST,
    DaemonProc,
    claims_in_worker_logs,
    kill_workers,
    sdgen,
    status_json,
    submit,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.slow


def pngs(data, rid) -> list[str]:
    out = data / "outputs" / rid
    return sorted(p.name for p in out.glob("*.png")) if out.exists() else []


def expected_pngs(seed: int, n: int, prompts: int = 1) -> list[str]:
    return sorted(f"{p:04d}-{i:06d}-{seed + i}.png" for p in range(prompts) for i in range(n))


def assert_no_leftovers(data):
    spool = data / "spool"
    assert list((spool / "tickets" / "running").iterdir()) == []
    assert list((spool / "leases").iterdir()) == []
    assert [p for p in (data / "outputs").rglob("*") if p.name.endswith(".part")] == []


def test_many_workers_make_every_image_exactly_once(data, daemon):
    r1 = submit(data, "--prompt", "a", "--images", "200", "--seed", "1000")
    r2 = submit(data, "--prompt", "b", "--prompt", "c", "--images", "75", "--batch-size", "2", "--seed", "7")
    d = daemon("--workers", "3", "--exit-when-idle", *FAST)
    assert d.wait(120) == 0, d.output()
    assert pngs(data, r1) == expected_pngs(1000, 200)
    assert pngs(data, r2) == expected_pngs(7, 75, prompts=2)
    claims = claims_in_worker_logs(data)
    assert len(claims) == 200 + 2 * 38 and set(claims.values()) == {1}  # no ticket ran twice
    assert len([1 for line in d.output().splitlines() if "started worker" in line]) >= 3
    rows = {r["id"]: r for r in status_json(data)}
    assert rows[r1]["state"] == rows[r2]["state"] == "done"
    assert rows[r2]["images_done"] == rows[r2]["images_total"] == 150
    assert_no_leftovers(data)


def test_a_worker_killed_mid_ticket_loses_nothing(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "12", "--batch-size", "4", "--seed", "1")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY="0.3")
    # kill the worker once it has written part of its first ticket
    wait_for(lambda: len(pngs(data, rid)) >= 2, what="first images")
    [pid] = wait_for(lambda: worker_pids(data), what="worker")
    os.kill(pid, signal.SIGKILL)
    assert d.wait(120) == 0, d.output()
    assert pngs(data, rid) == expected_pngs(1, 12)
    assert "exited with code -9" in d.output()
    claims = claims_in_worker_logs(data)
    assert sorted(claims.values()) == [1, 1, 2]  # only the killed ticket ran again
    assert_no_leftovers(data)


def test_the_daemon_killed_and_restarted_picks_up_where_it_was(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "30", "--batch-size", "3", "--seed", "5")
    d = daemon("--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY="0.1")
    wait_for(lambda: len(pngs(data, rid)) >= 6, what="some images")
    d.kill_all()  # SIGKILL the daemon and its workers
    assert len(pngs(data, rid)) < 30
    d2 = daemon("--workers", "2", "--exit-when-idle", *FAST)
    assert d2.wait(120) == 0, d2.output()
    assert pngs(data, rid) == expected_pngs(5, 30)
    assert status_json(data)[0]["state"] == "done"
    assert_no_leftovers(data)


def test_a_restarted_daemon_counts_the_workers_its_killed_predecessor_left(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "40", "--batch-size", "2", "--seed", "5")
    d = daemon("--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY="0.15")
    wait_for(lambda: len(worker_pids(data)) == 2 and len(pngs(data, rid)) >= 2, what="two busy workers")
    orphans = set(worker_pids(data))
    d.signal(signal.SIGKILL)  # the daemon only: its workers go on
    d.wait(10)
    d2 = daemon("--workers", "2", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY="0.15")
    most = 0
    while d2.proc.poll() is None:
        most = max(most, len(worker_pids(data)))
        time.sleep(0.05)
    assert d2.wait(5) == 0, d2.output()
    assert most == 2, most
    assert "adopted 2 worker(s) of an earlier daemon" in d2.output()
    assert pngs(data, rid) == expected_pngs(5, 40)
    assert not orphans & set(worker_pids(data))  # they left or were stopped with the daemon


def test_sigterm_hands_tickets_back_and_a_restart_finishes(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "8", "--batch-size", "4", "--seed", "3")
    d = daemon("--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY="0.5")
    wait_for(lambda: len(pngs(data, rid)) >= 1, what="first image")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.output()
    assert worker_pids(data) == []
    made_before = set(pngs(data, rid))
    spool = data / "spool" / "tickets"
    assert list((spool / "running").iterdir()) == []
    assert len(list((spool / "pending").iterdir())) + len(list((spool / "done").iterdir())) == 2
    mtimes = {n: (data / "outputs" / rid / n).stat().st_mtime_ns for n in made_before}
    d2 = daemon("--workers", "2", "--exit-when-idle", *FAST)
    assert d2.wait(60) == 0, d2.output()
    assert pngs(data, rid) == expected_pngs(3, 8)
    # nothing that was done was redone
    assert all((data / "outputs" / rid / n).stat().st_mtime_ns == m for n, m in mtimes.items())


def test_only_one_daemon_per_data_directory(data, daemon):
    d = daemon(*FAST)
    wait_for(lambda: "daemon up" in d.output(), what="first daemon")
    second = sdgen(data, "daemon", "--exit-when-idle")
    assert second.returncode == 2
    assert "another sdgen daemon (pid" in second.stderr and "Traceback" not in second.stderr


@pytest.mark.parametrize("mode", ["watch", "poll"])
def test_a_dropped_file_is_picked_up_quickly(data, daemon, mode):
    args = ("--rescan", "30") if mode == "watch" else ("--poll", "--rescan", "0.5")
    d = daemon("--workers", "1", "--lease-timeout", "4", *args)
    wait_for(lambda: "daemon up" in d.output(), what="daemon")
    time.sleep(0.5)
    inbox = data / "spool" / "inbox"
    (inbox / ".drop.yaml.part").write_text("prompt: a\nimages: 1\nengine: dry-run\nwidth: 128\nheight: 128\n")
    # dated back before the rename: complete, so the quiet-file rule has nothing to wait for
    old = time.time() - 5
    os.utime(inbox / ".drop.yaml.part", (old, old))
    t0 = time.monotonic()
    os.rename(inbox / ".drop.yaml.part", inbox / "drop.yaml")
    wait_for(
        lambda: list((data / "spool" / "requests").glob("*/state.json")), timeout=10, interval=0.01, what="acceptance"
    )
    accepted = time.monotonic() - t0
    assert accepted < 1.0, f"{mode}: accepted after {accepted:.2f}s"
    wait_for(lambda: status_json(data)[0]["state"] == "done", timeout=30, what="done")


def test_a_poison_ticket_is_held_and_retry_finishes_it(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "1", "--seed", "9")
    d = daemon("--workers", "1", *FAST, SDGEN_DRY_RUN_DELAY="30")
    lease_dir = data / "spool" / "leases"
    for attempt in range(2):
        wait_for(lambda: list(lease_dir.iterdir()), what=f"claim {attempt}")
        [pid] = wait_for(lambda: worker_pids(data), what="worker")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not list(lease_dir.iterdir()), what="reclaim")
    wait_for(lambda: status_json(data)[0]["state"] == "failed", what="failed")
    row = status_json(data)[0]
    assert row["tickets_held"] == 1 and "poison ticket" in row["reason"]
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    out = sdgen(data, "retry", rid, check=True)
    assert "1 ticket(s)" in out.stdout
    d2 = daemon("--workers", "1", "--exit-when-idle", *FAST)
    assert d2.wait(60) == 0, d2.output()
    assert status_json(data)[0]["state"] == "done" and pngs(data, rid) == expected_pngs(9, 1)


def test_cancel_stops_pending_and_running_tickets(data, daemon):
    rid = submit(data, "--prompt", "a", "--images", "20", "--batch-size", "5", "--seed", "1")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY="0.3")
    wait_for(lambda: len(pngs(data, rid)) >= 1, what="first image")
    assert "cancelled" in sdgen(data, "cancel", rid, check=True).stdout
    assert d.wait(30) == 0, d.output()
    row = status_json(data)[0]
    assert row["state"] == "cancelled" and row["tickets_cancelled"] >= 3
    assert len(pngs(data, rid)) <= 6  # the running ticket stopped at an image boundary


def test_priority_runs_first(data, daemon):
    low = submit(data, "--prompt", "low", "--images", "3", "--seed", "1")
    high = submit(data, "--prompt", "high", "--images", "3", "--seed", "1", "--priority", "5")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST)
    assert d.wait(60) == 0
    first_low = min(p.stat().st_mtime_ns for p in (data / "outputs" / low).glob("*.png"))
    last_high = max(p.stat().st_mtime_ns for p in (data / "outputs" / high).glob("*.png"))
    assert last_high <= first_low


def test_run_is_one_command_end_to_end(data):
    proc = sdgen(
        data,
        "run",
        "--prompt",
        "a",
        "--images",
        "3",
        "--engine",
        "dry-run",
        "--width",
        "128",
        "--height",
        "128",
        "--seed",
        "4",
        *FAST,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out_dir = proc.stdout.strip().splitlines()[-1]
    assert sorted(n for n in os.listdir(out_dir) if n.endswith(".png")) == expected_pngs(4, 3)
    assert "3/3 images" in proc.stderr and "(done)" in proc.stderr
    assert "ERROR" not in proc.stderr and "Traceback" not in proc.stderr  # a clean run says nothing alarming


def test_a_full_disk_defers_work_until_space_is_freed(tmp_path):
    """The data directory on a 6 MiB tmpfs, filled up: tickets are deferred with the reason,
    the daemon stays up, and everything completes once space is freed."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs needs root")
    try:
        data = mnt / "data"
        rid = submit(data, "--prompt", "a", "--images", "6", "--seed", "1", "--width", "1024", "--height", "1024")
        d = DaemonProc(data, "--workers", "1", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY="1")
        wait_for(lambda: list((data / "spool" / "requests").glob("*/state.json")), what="acceptance")
        # leave room for small spool files (tickets, leases) but not for a 78 kB image
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (free - 48 * 1024))
        spool_deferred = data / "spool" / "tickets" / "deferred"
        wait_for(lambda: spool_deferred.exists() and os.listdir(spool_deferred), timeout=60, what="a deferred ticket")
        ticket = json.loads(next(spool_deferred.iterdir()).read_text())
        assert "No space left on device" in ticket["reason"] and ticket["attempt"] == 0
        time.sleep(12)  # a full disk for a while: nothing gets held, the daemon stays up
        assert d.proc.poll() is None
        assert not os.listdir(data / "spool" / "tickets" / "held")
        filler.unlink()
        assert d.wait(180) == 0, d.output()
        assert pngs(data, rid) == expected_pngs(1, 6)
        assert [p for p in (data / "outputs").rglob("*.part")] == []
        assert "Traceback" not in d.output()
        d.close()
    finally:
        kill_workers(mnt / "data")
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
