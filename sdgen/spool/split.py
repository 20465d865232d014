"""Split a request into tickets, exactly: 10 images at batch_size 3 give 3, 3, 3 and 1.

A request is P prompts x C combinations of its sweep (1 without one) x N images. Each
(combination, prompt) pair is a unit of N images cut into ceil(N/B) tickets; units are
numbered combination-major (all prompts of combination 0 first), so ticket `index` is
unit index // ceil(N/B). Tickets of one unit share every setting; tickets of different
combinations may differ in steps, size, guidance, model or negative prompt.
"""

from __future__ import annotations

import math

from sdgen.spool.layout import image_file_name
from sdgen.spool.request import SEED_MAX, Request
from sdgen.spool.ticket import ImageSpec, Ticket


def image_seed(base_seed: int, image_index: int) -> int:
    """Image i of a prompt uses seed+i, wrapping at 2**32 so every seed stays valid."""
    return (base_seed + image_index) % (SEED_MAX + 1)


def tickets_per_unit(request: Request) -> int:
    """Tickets of one (combination, prompt) pair: all the same size but the last."""
    return math.ceil(request.images / request.batch_size)


def ticket_count(request: Request) -> int:
    return len(request.prompts) * request.combinations * tickets_per_unit(request)


def ticket_place(request: Request, index: int) -> tuple[int, int, int]:
    """(combination index, prompt index, chunk within the unit) of ticket `index`."""
    unit, chunk = divmod(index, tickets_per_unit(request))
    combination, prompt = divmod(unit, len(request.prompts))
    return combination, prompt, chunk


def ticket_images(request: Request, index: int) -> int:
    """Images in ticket `index`. The same rule as progress.ticket_size(index, images,
    batch_size), which needs no request: every unit is cut alike, sweep or not."""
    _, _, chunk = ticket_place(request, index)
    return min(request.batch_size, request.images - chunk * request.batch_size)


def ticket_at(request_id: str, request: Request, index: int) -> Ticket:
    """Ticket `index` of a request, computed on its own: a split can stop after any ticket
    and go on later (the daemon splits a large request across ticks)."""
    if request.seed is None:
        raise ValueError("fix the seed (Request.with_seed) before splitting")
    if not 0 <= index < ticket_count(request):
        raise IndexError(f"ticket {index} of a request of {ticket_count(request)}")
    c, p, chunk = ticket_place(request, index)
    combination = request.combination(c)
    settings = request.settings(combination)
    start = chunk * request.batch_size
    stop = min(start + request.batch_size, request.images)
    # image i of every combination uses seed+i (the combination's own seed when seed is
    # swept): the same image index across a sweep differs only in the swept fields
    images = tuple(ImageSpec(p, i, image_seed(settings["seed"], i)) for i in range(start, stop))
    return Ticket(
        request_id=request_id,
        index=index,
        priority=request.priority,
        prompt=request.prompts[p],
        negative_prompt=settings["negative_prompt"],
        images=images,
        steps=settings["steps"],
        width=settings["width"],
        height=settings["height"],
        guidance=settings["guidance"],
        model=settings["model"],
        engine=request.engine,
        weights=request.weights,
        template=request.template_of(p),
        combination=combination,
        combination_index=c,
    )


def split_request(request_id: str, request: Request) -> list[Ticket]:
    return [ticket_at(request_id, request, i) for i in range(ticket_count(request))]


def output_file_name(ticket: Ticket, spec: ImageSpec) -> str:
    """An image's file in outputs/<id>/: `<prompt>-<image>-<seed>.png`, and with a sweep
    `c<combination>-<prompt>-<image>-<seed>.png` (the same prompt, image and seed recur in
    every combination, and an image that exists is never made again)."""
    name = image_file_name(spec.prompt_index, spec.image_index, spec.seed)
    return f"c{ticket.combination_index:04d}-{name}" if ticket.combination else name
