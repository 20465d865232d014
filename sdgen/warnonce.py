"""Warn once that something fails, not on every tick, and once more when it works again.

Shared by everything that polls a service on a loop (the launchers' job services, the MLflow
tracker): a service that is down for an hour is one warning and one "back after", not one
line per tick.
"""

from __future__ import annotations

import logging


class WarnOnce:
    """`fail(key, now, msg, *args)` logs on the first failure of `key` only; `ok(key, now, msg)`
    logs `msg % seconds_down` if `key` was failing. A key that never comes back (an unknown
    state of one job) just uses `fail`. It logs through the caller's logger, so that each
    warning names the module it is about."""

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self._since: dict[object, float] = {}

    def fail(self, key, now: float, msg: str, *args) -> bool:
        if key in self._since:
            return False
        self._since[key] = now
        self.log.warning(msg, *args)
        return True

    def ok(self, key, now: float, msg: str) -> bool:
        since = self._since.pop(key, None)
        if since is None:
            return False
        self.log.warning(msg, now - since)
        return True

    def since(self, key) -> float | None:
        """When `key` started failing; None while it works."""
        return self._since.get(key)
