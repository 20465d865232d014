"""Filesystem events as a hint to tick early. The periodic rescan stays the truth: inotify
sees nothing written by other NFS hosts, can overflow, and its thread can die."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from sdgen import defaults

log = logging.getLogger(__name__)


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event):
        self.event = event

    # Reads make events too (inotify open / close-without-write): reacting to them would
    # let the daemon's own reads wake it forever.
    IGNORED = ("opened", "closed_no_write")

    def on_any_event(self, event):  # never raise here: it would kill the dispatch thread
        if event.event_type not in self.IGNORED:
            self.event.set()


class Watcher:
    def __init__(self, paths: list[Path], wake: threading.Event):
        self.paths = paths
        self.wake = wake
        self.observer = None
        self._reported_dead = False

    def start(self) -> bool:
        try:
            observer = Observer()
            for path in self.paths:
                observer.schedule(_Wake(self.wake), str(path), recursive=True)
            observer.start()
        except Exception as e:  # noqa: BLE001 - e.g. inotify limits; rescans carry on
            log.warning("file watcher unavailable (%s): relying on periodic rescans", e)
            return False
        self.observer = observer
        return True

    def healthy(self) -> bool:
        """False (logged once) when the observer died; the daemon then lives on rescans."""
        if self.observer is None:
            return False
        alive = self.observer.is_alive() and all(
            getattr(e, "is_alive", lambda: True)() for e in getattr(self.observer, "emitters", ())
        )
        if not alive and not self._reported_dead:
            log.warning("file watcher stopped: relying on periodic rescans")
            self._reported_dead = True
        return alive

    def stop(self) -> None:
        if self.observer is not None:
            # watchdog 7 logs an ERROR ("queue_events() called when the thread is inactive")
            # when its inotify thread is stopped mid-read: a normal shutdown, not a failure
            inotify_log = logging.getLogger("watchdog.observers.inotify")
            level = inotify_log.level
            inotify_log.setLevel(logging.CRITICAL)
            try:
                self.observer.stop()
                self.observer.join(timeout=defaults.WATCHER_STOP_SECONDS)
            finally:
                inotify_log.setLevel(level)
