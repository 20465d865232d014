"""The states of tickets and requests: the only spelling of a state outside serialised files.

Both are `str` enums, so a member is equal to (and hashes like) the string it stands for,
and json writes it as that string: files and `sdgen status --json` keep the plain words.
"""

from __future__ import annotations

from enum import Enum


class _StrState(str, Enum):
    # Print, format and hash as the plain word, on every Python sdgen supports (3.10+).
    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__


class TicketState(_StrState):
    """A ticket's state is the folder it is in: spool/tickets/<state>/ (docs/spool.md)."""

    PENDING = "pending"
    DEFERRED = "deferred"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    CANCELLED = "cancelled"


class RequestState(_StrState):
    """A row of `sdgen status`. The first seven are states of a request (state.json, derived
    from its tickets; `rejected` is a dropped file quarantined in spool/rejected/). The last
    three are status-only rows, never written to state.json: `corrupt` (a spool file moved
    to spool/corrupt/), `stuck` (an inbox entry that can be neither accepted nor rejected)
    and `ignored` (an inbox file the daemon does not take)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"  # `sdgen pause`: its pending tickets are not claimed (not an end)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    CORRUPT = "corrupt"
    STUCK = "stuck"
    IGNORED = "ignored"


# Ticket folders in listing order (spool/tickets/<state>/).
TICKET_STATES: tuple[TicketState, ...] = tuple(TicketState)

# When a crash leaves one ticket in two folders, the first state here wins.
PRECEDENCE = (
    TicketState.DONE,
    TicketState.CANCELLED,
    TicketState.FAILED,
    TicketState.HELD,
    TicketState.PENDING,
    TicketState.DEFERRED,
    TicketState.RUNNING,
)

# States a request keeps once in them; a request in them has no tickets left to run.
REQUEST_TERMINAL = (RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED)

# States of a request proper (state.json); the status-only rows come after them.
REQUEST_STATES = (
    RequestState.PENDING,
    RequestState.RUNNING,
    RequestState.DONE,
    RequestState.FAILED,
    RequestState.CANCELLED,
    RequestState.REJECTED,
)
STATUS_ONLY = (RequestState.CORRUPT, RequestState.STUCK, RequestState.IGNORED)


def ticket_state(value: object) -> TicketState:
    """`value` as a TicketState; ValueError when it is none (a real check, not an assert)."""
    if isinstance(value, TicketState):
        return value
    if isinstance(value, str) and not isinstance(value, Enum):
        try:
            return TicketState(value)
        except ValueError:
            pass
    raise ValueError(f"not a ticket state: {value!r} (one of {', '.join(s.value for s in TicketState)})")
