"""A request's finished images, as its done tickets record them: what `sdgen grid`,
`sdgen export` and the tracker's grid read.

The done-markers (folded ones included) are the record of what exists, not a listing of
outputs/<id>/: a file there may be half-written, planted or from a late attempt. Each
image comes with the ticket that made it, recomputed from request.yaml and the ticket's
index (split.ticket_at), because a folded marker keeps only its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdgen.exceptions import UserError
from sdgen.spool.layout import REQUEST_ID, parse_ticket_name
from sdgen.spool.records import CorruptRecord
from sdgen.spool.request import Request
from sdgen.spool.split import ticket_at, ticket_count
from sdgen.spool.store import Spool
from sdgen.spool.ticket import ImageSpec, Ticket


@dataclass(frozen=True)
class Finished:
    ticket: Ticket  # the ticket that made it: prompt, settings, template, combination
    spec: ImageSpec
    path: Path  # a plain file in the request's own output folder


def accepted_request(spool: Spool, request_id: str) -> Request:
    """The accepted request, or a one-line UserError saying why there is none."""
    if not REQUEST_ID.match(request_id):
        raise UserError(f"{request_id!r} is not a request id (like 20261126-065149-a1b2c3): see `sdgen list`")
    if not spool.layout.request_file(request_id).exists():
        for folder in (spool.layout.inbox, spool.layout.incoming):
            if any((folder / f"{request_id}{ext}").exists() for ext in (".yaml", ".yml")):
                raise UserError(f"request {request_id} is not accepted yet: it has no images (see `sdgen status`)")
        raise UserError(f"unknown request id {request_id!r}: `sdgen list` shows the known ones")
    try:
        return spool.read_request(request_id)
    except (CorruptRecord, OSError, ValueError) as e:
        raise UserError(f"request {request_id}: its request.yaml cannot be read ({e})") from None


def finished_images(spool: Spool, request_id: str, request: Request) -> list[Finished]:
    """Every image of the request's done tickets that is still in its output folder, in
    (combination, prompt, image) order, each once."""
    folder = spool.layout.output_dir(request_id)
    total = ticket_count(request)
    seen: dict[tuple[int, int, int], Finished] = {}
    for marker in spool.done_markers(request_id):
        parsed = parse_ticket_name(str(marker.get("name", "")))
        result = marker.get("result")
        if parsed is None or not 0 <= parsed[1] < total or not isinstance(result, dict):
            continue
        ticket = ticket_at(request_id, request, parsed[1])
        for o in result.get("outputs") or []:
            # a marker is spool data: only well-formed entries naming a plain file of this
            # request's own folder count (not `..`, not an absolute path, not a symlink)
            if not isinstance(o, dict) or not isinstance(o.get("file"), str):
                continue
            if not all(isinstance(o.get(k), int) and not isinstance(o.get(k), bool) for k in _INDEXES):
                continue
            path = spool.layout.root / o["file"]
            if path.parent != folder or not path.name.endswith(".png") or path.name.startswith("."):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            spec = ImageSpec(o["prompt_index"], o["image_index"], o["seed"])
            seen.setdefault(
                (ticket.combination_index, spec.prompt_index, spec.image_index), Finished(ticket, spec, path)
            )
    return [seen[k] for k in sorted(seen)]


_INDEXES = ("prompt_index", "image_index", "seed")
