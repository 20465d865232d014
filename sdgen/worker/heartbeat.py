"""Keeps a claim's lease fresh from a background thread while the engine works."""

from __future__ import annotations

import logging
import threading

from sdgen.spool.claim import Claim
from sdgen.worker.background import Background

log = logging.getLogger(__name__)


class Heartbeat(Background):
    thread_name = "heartbeat"

    def __init__(self, claim: Claim, interval: float):
        super().__init__()
        self.claim = claim
        self.interval = interval
        self.lost = threading.Event()

    def run_until_stopped(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if not self.claim.heartbeat():
                    log.warning("lost the lease on %s: stopping it at the next image", self.claim.name)
                    self.lost.set()
                    return
            except OSError as e:  # a full or flaky disk must not kill the worker
                log.warning("heartbeat for %s failed: %s", self.claim.name, e)
