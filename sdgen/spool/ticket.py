"""Tickets: one batch of images of one request, and the pure rules for moving them between
states after a failure, a worker's death or a hand-back."""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass, field, fields, replace

from sdgen import defaults
from sdgen.spool.layout import ticket_name
from sdgen.spool.states import TicketState


@dataclass(frozen=True)
class ImageSpec:
    prompt_index: int
    image_index: int
    seed: int


@dataclass(frozen=True)
class Ticket:
    request_id: str
    index: int
    priority: int
    prompt: str
    negative_prompt: str
    images: tuple[ImageSpec, ...]
    steps: int
    width: int
    height: int
    guidance: float
    model: str
    engine: str
    weights: str
    # Batch programs (issue 18): the prompt as written that `prompt` was expanded from (the
    # prompt itself when it was no template), and the sweep's combination this ticket is
    # ({swept field: value}, {} without a sweep) with its index in the request's sweep.
    template: str = ""
    combination: dict = field(default_factory=dict)
    combination_index: int = 0
    attempt: int = 0  # attempts that ended without a result (failures and deaths)
    deaths: int = 0  # attempts whose worker died without a word
    # attempts made before the last `sdgen retry`: `attempt` restarts at 0 there (it decides
    # backoff and holding), but attempt numbers in events and MLflow keep counting
    attempts_before: int = 0
    wait_s: float = 0.0  # deferred: how long to wait, counted from when the daemon sees it
    not_before: float = 0.0  # deferred until this time, stamped by the daemon on its own clock
    reason: str = ""  # why it is failed, held or deferred
    history: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def attempt_number(self) -> int:
        """The number of the attempt now running (1-based), counted across retries."""
        return self.attempts_before + self.attempt + 1

    @property
    def name(self) -> str:
        return ticket_name(self.priority, self.index, self.request_id)

    def generation_key(self) -> tuple:
        """What one forward pass shares: tickets whose keys differ never run together."""
        return (
            self.engine,
            self.model,
            self.weights,
            self.steps,
            self.width,
            self.height,
            float(self.guidance),
            self.negative_prompt,
        )

    def to_json(self) -> bytes:
        d = asdict(self)
        d["images"] = [asdict(i) for i in self.images]
        d["history"] = list(self.history)
        return json.dumps(d, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "Ticket":
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, d: dict) -> "Ticket":
        """A ticket from its JSON form, every field's type checked (the file is untrusted):
        KeyError, TypeError or ValueError when it is not a ticket."""
        d = dict(d)
        d.pop("result", None)  # a done-marker is a ticket plus its result
        d["images"] = tuple(ImageSpec(**i) for i in d["images"])
        d["history"] = tuple(h for h in d.get("history", ()) if isinstance(h, dict))
        ticket = cls(**d)
        for f in fields(cls):
            value = getattr(ticket, f.name)
            kind = _FIELD_TYPES.get(f.name)
            if kind and (isinstance(value, bool) or not isinstance(value, kind)):
                raise TypeError(f"field {f.name!r} must be {kind.__name__ if isinstance(kind, type) else 'a number'}")
        if not all(
            isinstance(k, str) and (isinstance(v, (str, int, float)) and not isinstance(v, bool))
            for k, v in ticket.combination.items()
        ):
            raise TypeError("combination must map field names to plain values")
        for image in ticket.images:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in astuple(image)):
                raise TypeError("images must hold whole numbers")
        if not ticket.images:
            raise ValueError("a ticket has at least one image")
        return ticket


_NUMBER = (int, float)
_FIELD_TYPES = {
    "request_id": str,
    "index": int,
    "priority": int,
    "prompt": str,
    "negative_prompt": str,
    "steps": int,
    "width": int,
    "height": int,
    "guidance": _NUMBER,
    "model": str,
    "engine": str,
    "weights": str,
    "template": str,
    "combination": dict,
    "combination_index": int,
    "attempt": int,
    "deaths": int,
    "attempts_before": int,
    "wait_s": _NUMBER,
    "not_before": _NUMBER,
    "reason": str,
}


def backoff_seconds(
    attempt: int, base: float = defaults.BACKOFF_BASE_SECONDS, cap: float = defaults.BACKOFF_CAP_SECONDS
) -> float:
    """Capped exponential backoff after the `attempt`-th failed attempt (1-based)."""
    return min(cap, base * 2 ** max(0, attempt - 1))


def _record(ticket: Ticket, event: str, detail: str, worker: str, now: float) -> tuple[dict, ...]:
    entry = {"event": event, "detail": detail[:2000], "worker": worker, "at": now}
    # Keep the newest entries only: a ticket file must stay small.
    return (ticket.history + (entry,))[-20:]


def due_at(ticket: Ticket, now: float) -> float:
    """When a deferred ticket may run again, on the daemon's clock. A worker only says how
    long to wait: its own clock may be minutes off, so `now + wait` from a worker would
    retry at once or stall. The daemon stamps the due time when it first sees the ticket."""
    return ticket.not_before if ticket.not_before else now + ticket.wait_s


def after_failure(
    ticket: Ticket, error: str, transient: bool, worker: str, now: float, max_attempts: int = defaults.MAX_ATTEMPTS
) -> tuple[TicketState, Ticket]:
    """Where a ticket goes when its attempt raised: (state, updated ticket)."""
    attempt = ticket.attempt + 1
    history = _record(ticket, "failed" if not transient else "error", error, worker, now)
    if not transient:
        return TicketState.FAILED, replace(ticket, attempt=attempt, reason=error, history=history)
    if attempt >= max_attempts:
        reason = f"gave up after {attempt} attempts; last error: {error}"
        return TicketState.HELD, replace(ticket, attempt=attempt, reason=reason, history=history)
    return TicketState.DEFERRED, replace(
        ticket, attempt=attempt, reason=error, history=history, wait_s=backoff_seconds(attempt), not_before=0.0
    )


def after_pause(ticket: Ticket, reason: str, worker: str, now: float, wait: float) -> tuple[TicketState, Ticket]:
    """An environmental stop (the disk is full): deferred, but not a failed attempt, so a
    long outage can never hold or poison a ticket."""
    return TicketState.DEFERRED, replace(
        ticket,
        wait_s=wait,
        not_before=0.0,
        reason=f"waiting: {reason}",
        history=_record(ticket, "paused", reason, worker, now),
    )


def after_death(
    ticket: Ticket, detail: str, worker: str, now: float, max_deaths: int = defaults.MAX_WORKER_DEATHS
) -> tuple[TicketState, Ticket]:
    """Where a ticket goes when its worker died or its lease expired."""
    deaths = ticket.deaths + 1
    history = _record(ticket, "worker-lost", detail, worker, now)
    updated = replace(ticket, attempt=ticket.attempt + 1, deaths=deaths, history=history, reason=detail)
    if deaths >= max_deaths:
        reason = f"poison ticket: its worker died {deaths} times without a result ({detail})"
        return TicketState.HELD, replace(updated, reason=reason)
    return TicketState.PENDING, updated


def after_retry(ticket: Ticket, now: float) -> Ticket:
    """`sdgen retry`: a fresh start for a failed or held ticket, history kept. Only what
    decides backoff and holding restarts; the attempts made so far are kept as a total, so
    the next attempt is not numbered 1 again (two MLflow runs `ticket 1 attempt 1`)."""
    return replace(
        ticket,
        attempt=0,
        attempts_before=ticket.attempts_before + ticket.attempt,
        deaths=0,
        wait_s=0.0,
        not_before=0.0,
        reason="",
        history=_record(ticket, "retry", "retried by user", "", now),
    )


def attempt_event(
    ticket: Ticket,
    status: str,
    worker: str,
    host: str,
    started_at: float,
    ended_at: float,
    error: str = "",
    result: dict | None = None,
    engine: dict | None = None,
    gpu: str | None = None,
) -> dict:
    """What the tracker needs to log one attempt as an MLflow child run.
    status: FINISHED, FAILED or KILLED (worker lost, or cancelled)."""
    return {
        "kind": "attempt",
        "request_id": ticket.request_id,
        "ticket": ticket.name,
        "attempt": ticket.attempt_number,
        "status": status,
        "worker": worker,
        "host": host,
        "gpu": gpu,
        "started_at": started_at,
        "ended_at": ended_at,
        "error": error[:4000],
        "result": result or {},
        "engine": engine or {},
        "ticket_data": json.loads(ticket.to_json()),
    }
