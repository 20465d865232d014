"""The watcher is only a hint; when its observer dies the daemon is told once."""

import logging
import threading
import time

from sdgen.daemon.watcher import Watcher
from tests.conftest import wait_for


def test_events_wake_the_daemon_and_a_dead_observer_is_reported_once(tmp_path, caplog):
    wake = threading.Event()
    w = Watcher([tmp_path], wake)
    assert w.start() and w.healthy()
    (tmp_path / "x.yaml").write_text("prompt: a\n")
    wait_for(wake.is_set, timeout=5, what="a wake-up")
    w.observer.stop()
    w.observer.join(5)
    with caplog.at_level(logging.WARNING):
        assert w.healthy() is False
        assert w.healthy() is False
    assert [r.message for r in caplog.records].count("file watcher stopped: relying on periodic rescans") == 1
    w.stop()


def test_a_watcher_that_cannot_start_leaves_rescans(tmp_path):
    w = Watcher([tmp_path / "missing"], threading.Event())
    assert w.start() is False and w.healthy() is False


def test_reading_files_does_not_wake_the_daemon(tmp_path):
    f = tmp_path / "state.json"
    f.write_text("{}")
    wake = threading.Event()
    w = Watcher([tmp_path], wake)
    assert w.start()
    time.sleep(0.3)
    wake.clear()
    for _ in range(20):
        f.read_text()
    time.sleep(0.5)
    assert not wake.is_set()
    f.write_text("{1}")
    wait_for(wake.is_set, timeout=5, what="a wake-up on a write")
    w.stop()
