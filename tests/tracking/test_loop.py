"""The tracker's stand-in when tracking is off: spool/events does not grow forever."""

from __future__ import annotations

import os

from sdgen.launchers.local import LocalLauncher
from sdgen.tracking.loop import EventDrain, drain_events
from tests.conftest import sdgen


def test_a_daemon_without_tracking_leaves_no_events(spool, data):
    """A real daemon (in this process) with real worker processes, tracking off."""
    from sdgen.daemon.service import Daemon

    sdgen(
        data,
        "submit",
        "--prompt",
        "a fox",
        "--images",
        "3",
        "--engine",
        "dry-run",
        "--width",
        "128",
        "--height",
        "128",
        check=True,
    )
    launcher = LocalLauncher(data, max_workers=1, idle_exit=2, pin_gpus=False)
    daemon = Daemon(spool, launcher, poll=0.2, rescan=0.3, exit_when_idle=True, tracker=EventDrain(spool, 0.2))
    assert daemon.run() == 0
    assert len(list((spool.layout.outputs / spool.request_ids()[0]).glob("*.png"))) == 3
    assert os.listdir(spool.layout.events) == []


def test_drain_removes_events_and_follows_no_links(spool, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    (spool.layout.events / "1-x-1.json").write_text("{}")
    (spool.layout.events / "2-x-2.json").symlink_to(outside)
    assert drain_events(spool) == 2
    assert os.listdir(spool.layout.events) == [] and outside.read_text() == "keep"
