"""The scheduler's decisions as pure, `now`-driven units: when a lease has expired, what a
worker's exit means for launching (start-up crash streak, backoff, blocked), and how many
workers the queue wants. No I/O here: `Scheduler.tick` feeds them and acts on the answer,
and tests drive them directly."""

from __future__ import annotations

from dataclasses import dataclass

from sdgen import defaults
from sdgen.spool.ticket import backoff_seconds


def lease_expired(unchanged_since: float, mono: float, timeout: float) -> bool:
    """A lease whose bytes have not changed since `unchanged_since` (the daemon's monotonic
    clock) is expired once `timeout` seconds have passed on that clock."""
    return mono - unchanged_since >= timeout


def workers_wanted(max_workers: int, pending: int, running: int) -> int:
    """One worker per ticket that is pending or running, up to the launcher's limit."""
    return max(0, min(max_workers, pending + running))


@dataclass(frozen=True)
class ExitVerdict:
    """What one worker's exit means: `crashed` at start-up or not; when it did, either a
    `delay` before the next launch or the `blocked` reason that stops launching."""

    crashed: bool = False
    delay: float = 0.0
    blocked: str | None = None


@dataclass
class StartupGuard:
    """Workers that fail at start-up, in a row, back launching off (2, 4, 8 ... s, capped),
    and after `max_failures` stop it: a broken install or a wrong partition would otherwise
    fill a cluster's queue with failures. Any worker that ran long enough, exited cleanly,
    or was ended from outside resets the streak."""

    max_failures: int = defaults.MAX_STARTUP_FAILURES
    startup_seconds: float = defaults.STARTUP_SECONDS
    backoff_base: float = defaults.STARTUP_BACKOFF_BASE_SECONDS
    backoff_cap: float = defaults.STARTUP_BACKOFF_CAP_SECONDS
    streak: int = 0
    launch_after: float = 0.0
    blocked: str | None = None
    blocked_since: float | None = None

    def note_exit(
        self, worker_id: str, returncode: int | None, ran_seconds: float, detail: str, now: float
    ) -> ExitVerdict:
        if (
            returncode is None
            or returncode in (defaults.WORKER_EXIT_OK, defaults.WORKER_EXIT_FATAL)
            or ran_seconds >= self.startup_seconds
        ):
            self.streak = 0
            return ExitVerdict()
        self.streak += 1
        how = detail or f"exited with code {returncode}"
        if self.streak >= self.max_failures:
            if self.blocked is None:
                self.blocked_since = now
            self.blocked = (
                f"{self.streak} workers in a row failed at start-up; last: {worker_id} "
                f"{how} after {ran_seconds:.0f}s (see logs/worker-{worker_id}.log). "
                f"Fix the cause, then restart the daemon"
            )
            return ExitVerdict(crashed=True, blocked=self.blocked)
        delay = backoff_seconds(self.streak, base=self.backoff_base, cap=self.backoff_cap)
        self.launch_after = now + delay
        return ExitVerdict(crashed=True, delay=delay)

    def may_launch(self, now: float) -> bool:
        return self.blocked is None and now >= self.launch_after


def foldable_done(
    first_seen: dict[str, float],
    mono: float,
    after: float,
    active: dict[str, set[int]],
    leased: set[str],
    most: int,
) -> dict[str, list[str]]:
    """Done tickets that may be folded into their request's ledger now, by request id: seen
    in done/ for `after` seconds of the daemon's clock, with no other copy of the ticket
    (pending, deferred or running: `active` indexes by request) and no lease, at most `most`
    in all (oldest first). Such a ticket cannot come back (docs/spool.md)."""
    out: dict[str, list[str]] = {}
    taken = 0
    for name, seen in sorted(first_seen.items(), key=lambda kv: kv[1]):
        if taken >= most or mono - seen < after:
            break
        _, index, rid = name.split(".", 2)
        if name in leased or int(index) in active.get(rid, ()):
            continue
        out.setdefault(rid, []).append(name)
        taken += 1
    return out
