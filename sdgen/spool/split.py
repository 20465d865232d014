"""Split a request into tickets, exactly: 10 images at batch_size 3 give 3, 3, 3 and 1."""

from __future__ import annotations

import math

from sdgen.spool.request import SEED_MAX, Request
from sdgen.spool.ticket import ImageSpec, Ticket


def image_seed(base_seed: int, image_index: int) -> int:
    """Image i of a prompt uses seed+i, wrapping at 2**32 so every seed stays valid."""
    return (base_seed + image_index) % (SEED_MAX + 1)


def ticket_count(request: Request) -> int:
    return len(request.prompts) * math.ceil(request.images / request.batch_size)


def ticket_at(request_id: str, request: Request, index: int) -> Ticket:
    """Ticket `index` of a request, computed on its own: a split can stop after any ticket
    and go on later (the daemon splits a large request across ticks)."""
    if request.seed is None:
        raise ValueError("fix the seed (Request.with_seed) before splitting")
    per_prompt = math.ceil(request.images / request.batch_size)
    p, chunk = divmod(index, per_prompt)
    start = chunk * request.batch_size
    stop = min(start + request.batch_size, request.images)
    images = tuple(ImageSpec(p, i, image_seed(request.seed, i)) for i in range(start, stop))
    return Ticket(
        request_id=request_id,
        index=index,
        priority=request.priority,
        prompt=request.prompts[p],
        negative_prompt=request.negative_prompt,
        images=images,
        steps=request.steps,
        width=request.width,
        height=request.height,
        guidance=request.guidance,
        model=request.model,
        engine=request.engine,
        weights=request.weights,
    )


def split_request(request_id: str, request: Request) -> list[Ticket]:
    return [ticket_at(request_id, request, i) for i in range(ticket_count(request))]
