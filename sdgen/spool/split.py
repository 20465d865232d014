"""Split a request into tickets, exactly: 10 images at batch_size 3 give 3, 3, 3 and 1."""

from __future__ import annotations

from sdgen.spool.request import SEED_MAX, Request
from sdgen.spool.ticket import ImageSpec, Ticket


def image_seed(base_seed: int, image_index: int) -> int:
    """Image i of a prompt uses seed+i, wrapping at 2**32 so every seed stays valid."""
    return (base_seed + image_index) % (SEED_MAX + 1)


def split_request(request_id: str, request: Request) -> list[Ticket]:
    if request.seed is None:
        raise ValueError("fix the seed (Request.with_seed) before splitting")
    tickets = []
    for p, prompt in enumerate(request.prompts):
        for start in range(0, request.images, request.batch_size):
            stop = min(start + request.batch_size, request.images)
            images = tuple(ImageSpec(p, i, image_seed(request.seed, i)) for i in range(start, stop))
            tickets.append(Ticket(
                request_id=request_id, index=len(tickets), priority=request.priority,
                prompt=prompt, negative_prompt=request.negative_prompt, images=images,
                steps=request.steps, width=request.width, height=request.height,
                guidance=request.guidance, model=request.model, engine=request.engine,
                weights=request.weights,
            ))
    return tickets
