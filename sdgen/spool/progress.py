"""What state a request is in, derived from where its tickets are. Pure.

`sdgen status` and the daemon both use this, so status is true even while no daemon runs.
"""

from __future__ import annotations

import math


def ticket_size(index: int, images: int, batch_size: int) -> int:
    """Images in ticket `index` (tickets are numbered across prompts, per prompt in order)."""
    per_prompt = math.ceil(images / batch_size)
    chunk = index % per_prompt
    return min(batch_size, images - chunk * batch_size)


def request_state(tickets: dict[str, list[int]], tickets_total: int, cancelled: bool) -> str:
    n = {state: len(idx) for state, idx in tickets.items()}
    if cancelled:
        return "cancelled"
    if tickets_total and n.get("done", 0) >= tickets_total:
        return "done"
    active = n.get("pending", 0) + n.get("deferred", 0) + n.get("running", 0)
    unsettled = tickets_total - sum(n.values())  # not published yet: still being accepted
    if active == 0 and unsettled <= 0 and (n.get("failed", 0) + n.get("held", 0)):
        return "failed"
    if n.get("running") or n.get("done") or n.get("failed") or n.get("held"):
        return "running"
    return "pending"


def summarize(meta: dict, tickets: dict[str, list[int]], cancelled: bool) -> dict:
    """One request's line of `sdgen status --json`."""
    images, batch = meta["images"], meta["batch_size"]
    done_images = sum(ticket_size(i, images, batch) for i in tickets.get("done", ()))
    total = meta.get("tickets_total") or sum(len(v) for v in tickets.values())
    out = {
        "id": meta["id"], "name": meta.get("name", ""),
        "state": request_state(tickets, total, cancelled),
        "priority": meta.get("priority", 0),
        "images_total": meta["images_total"], "images_done": done_images,
        "tickets_total": total,
    }
    for state in ("pending", "deferred", "running", "done", "failed", "held", "cancelled"):
        out[f"tickets_{state}"] = len(tickets.get(state, ()))
    return out
