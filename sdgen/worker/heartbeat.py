"""Keeps a claim's lease fresh from a background thread while the engine works."""

from __future__ import annotations

import logging
import threading

from sdgen.spool.claim import Claim

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, claim: Claim, interval: float):
        self.claim = claim
        self.interval = interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.name}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.claim.heartbeat():
                    log.warning("lost the lease on %s: stopping it at the next image", self.claim.name)
                    self.lost.set()
                    return
            except OSError as e:  # a full or flaky disk must not kill the worker
                log.warning("heartbeat for %s failed: %s", self.claim.name, e)
