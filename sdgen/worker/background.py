"""A thread that runs beside a ticket for as long as a `with` block lasts."""

from __future__ import annotations

import threading


class Background:
    """`with Sub(...):` starts `Sub.run_until_stopped` in a daemon thread; leaving the block
    sets `self.stopping` and waits for it. Subclasses loop on `self.stopping.wait(t)`."""

    thread_name = "background"

    def __init__(self):
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.run_until_stopped, name=self.thread_name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._thread.join()

    def run_until_stopped(self) -> None:
        raise NotImplementedError
