"""Where everything lives under the data directory. Pure paths, no I/O (docs/spool.md)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

# Ticket folders under spool/tickets/, one per state: a state change is a rename.
from sdgen.spool.states import TICKET_STATES, TicketState, ticket_state  # noqa: F401 (re-exported)

REQUEST_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
TICKET_NAME = re.compile(r"^(\d{4})\.(\d{6})\.(\d{8}-\d{6}-[0-9a-f]{6})$")


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def tmp(self) -> Path:
        return self.spool / "tmp"

    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    @property
    def incoming(self) -> Path:
        return self.spool / "incoming"

    @property
    def rejected(self) -> Path:
        return self.spool / "rejected"

    @property
    def corrupt(self) -> Path:
        """Spool files that could not be read, moved aside with a reason (never deleted)."""
        return self.spool / "corrupt"

    @property
    def intake_status(self) -> Path:
        """Inbox entries the daemon can neither accept nor reject (cannot move them)."""
        return self.spool / "intake.json"

    def split_cursor(self, request_id: str) -> Path:
        """How far a request's tickets have been written (a split runs across ticks)."""
        return self.request_dir(request_id) / "split.json"

    @property
    def requests(self) -> Path:
        return self.spool / "requests"

    @property
    def leases(self) -> Path:
        return self.spool / "leases"

    @property
    def workers(self) -> Path:
        return self.spool / "workers"

    @property
    def events(self) -> Path:
        return self.spool / "events"

    @property
    def tracking_status(self) -> Path:
        return self.spool / "tracking.json"

    @property
    def notify_status(self) -> Path:
        """The notifier's health (--on-done, --webhook): failures for `sdgen status`."""
        return self.spool / "notify.json"

    def mlflow_record(self, request_id: str) -> Path:
        return self.request_dir(request_id) / "mlflow.json"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def launcher_status(self) -> Path:
        return self.spool / "launcher.json"

    @property
    def daemon_lock(self) -> Path:
        return self.spool / "daemon.lock"

    @property
    def daemon_info(self) -> Path:
        return self.spool / "daemon.json"

    @property
    def claim_lock(self) -> Path:
        return self.spool / "claim.lock"

    def tickets(self, state: TicketState) -> Path:
        """The folder of one ticket state. ValueError for anything that is not one (a real
        check: a typo must never make or read a folder outside the protocol)."""
        return self.spool / "tickets" / ticket_state(state).value

    def ticket(self, state: TicketState, name: str) -> Path:
        return self.tickets(state) / f"{name}.json"

    def ticket_reason(self, state: TicketState, name: str) -> Path:
        """A `.reason` file next to a ticket (left by hand or by older versions; retry removes it)."""
        return self.tickets(state) / f"{name}.reason"

    def event(self, name: str) -> Path:
        return self.events / name

    def jobs_file(self, launcher: str) -> Path:
        """spool/<launcher>-jobs.json: the workers a launcher started and has not reaped."""
        return self.spool / f"{launcher}-jobs.json"

    def lease(self, name: str) -> Path:
        return self.leases / f"{name}.json"

    def request_dir(self, request_id: str) -> Path:
        return self.requests / request_id

    def request_file(self, request_id: str) -> Path:
        return self.request_dir(request_id) / "request.yaml"

    def request_state(self, request_id: str) -> Path:
        return self.request_dir(request_id) / "state.json"

    def done_ledger(self, request_id: str) -> Path:
        """Folded done-markers of a request, one compact JSON line each (daemon, append-only)."""
        return self.request_dir(request_id) / "done.jsonl"

    def folded(self, request_id: str) -> Path:
        """Which ticket indexes of a request are folded into its ledger: {"ranges": [[a, b)...]}."""
        return self.request_dir(request_id) / "folded.json"

    @property
    def ids(self) -> Path:
        """Submitters' own request ids (idempotent submit): <id>.json = {request_id, digest}."""
        return self.spool / "ids"

    def client_id_file(self, client_id: str) -> Path:
        return self.ids / f"{client_id}.json"

    def priority_marker(self, request_id: str) -> Path:
        """`sdgen priority`: {"priority": N, "at"}; overrides request.yaml's priority."""
        return self.request_dir(request_id) / "priority.json"

    def pause_marker(self, request_id: str) -> Path:
        """Present = the request is paused (`sdgen pause`): {"at", "after_ticket"}."""
        return self.request_dir(request_id) / "paused"

    @property
    def pause_all_marker(self) -> Path:
        """Present = the whole queue is paused (`sdgen pause --all`)."""
        return self.spool / "paused"

    def cancel_marker(self, request_id: str) -> Path:
        return self.request_dir(request_id) / "cancel"

    def output_dir(self, request_id: str) -> Path:
        return self.outputs / request_id

    def all_dirs(self) -> list[Path]:
        return [
            self.tmp,
            self.inbox,
            self.incoming,
            self.rejected,
            self.corrupt,
            self.requests,
            self.leases,
            self.ids,
            self.workers,
            self.events,
            self.outputs,
            self.logs,
        ] + [self.tickets(s) for s in TICKET_STATES]


def ticket_name(priority: int, index: int, request_id: str) -> str:
    """Names sort in claim order: higher priority first, then ticket index (so requests of
    equal priority take turns instead of one huge request starving the rest), then
    submission time (request ids start with it)."""
    return f"{1000 - priority:04d}.{index:06d}.{request_id}"


@functools.lru_cache(maxsize=1 << 17)
def parse_ticket_name(name: str) -> tuple[int, int, str] | None:
    # Cached: the daemon parses every listed name on every tick, and a listing changes
    # little from one tick to the next (a 1M-ticket queue: 10,000 names a tick).
    m = TICKET_NAME.match(name)
    if not m:
        return None
    return 1000 - int(m.group(1)), int(m.group(2)), m.group(3)


def image_file_name(prompt_index: int, image_index: int, seed: int) -> str:
    return f"{prompt_index:04d}-{image_index:06d}-{seed}.png"
