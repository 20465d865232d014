"""What state a request is in, derived from where its tickets are. Pure.

`sdgen status` and the daemon both use this, so status is true even while no daemon runs.
"""

from __future__ import annotations

import math

from sdgen.spool.states import TICKET_STATES, RequestState, TicketState


def ticket_size(index: int, images: int, batch_size: int) -> int:
    """Images in ticket `index` (tickets are numbered across prompts, per prompt in order)."""
    per_prompt = math.ceil(images / batch_size)
    chunk = index % per_prompt
    return min(batch_size, images - chunk * batch_size)


def request_state(
    tickets: dict[str, list[int]], tickets_total: int, cancelled: bool, paused: bool = False
) -> RequestState:
    n = {state: len(idx) for state, idx in tickets.items()}
    if cancelled:
        return RequestState.CANCELLED
    if tickets_total and n.get(TicketState.DONE, 0) >= tickets_total:
        return RequestState.DONE
    if paused:
        return RequestState.PAUSED
    active = n.get(TicketState.PENDING, 0) + n.get(TicketState.DEFERRED, 0) + n.get(TicketState.RUNNING, 0)
    unsettled = tickets_total - sum(n.values())  # not published yet: still being accepted
    if active == 0 and unsettled <= 0 and (n.get(TicketState.FAILED, 0) + n.get(TicketState.HELD, 0)):
        return RequestState.FAILED
    if n.get(TicketState.RUNNING) or n.get(TicketState.DONE) or n.get(TicketState.FAILED) or n.get(TicketState.HELD):
        return RequestState.RUNNING
    return RequestState.PENDING


def summarize(meta: dict, tickets: dict[str, list[int]], cancelled: bool, paused: bool = False) -> dict:
    """One request's line of `sdgen status --json`."""
    images, batch = meta["images"], meta["batch_size"]
    done_images = sum(ticket_size(i, images, batch) for i in tickets.get(TicketState.DONE, ()))
    total = meta.get("tickets_total") or sum(len(v) for v in tickets.values())
    out = {
        "id": meta["id"],
        "name": meta.get("name", ""),
        "user": meta.get("user") if isinstance(meta.get("user"), str) else "",  # "": not recorded
        "state": request_state(tickets, total, cancelled, paused),
        "priority": meta.get("priority", 0),
        "images_total": meta["images_total"],
        "images_done": done_images,
        "tickets_total": total,
    }
    for state in TICKET_STATES:
        out[f"tickets_{state.value}"] = len(tickets.get(state, ()))
    if not cancelled:
        # Tickets of a request still being split wait in its split cursor, not in pending/
        # (the split window, docs/spool.md): they are pending all the same.
        out["tickets_pending"] += max(0, total - sum(len(v) for v in tickets.values()))
    return out
