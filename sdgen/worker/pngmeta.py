"""What every PNG says about itself: the A1111-style `parameters` text chunk that many tools
read, and an `sdgen` JSON chunk with everything needed to make the same image again."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdgen import __version__
from sdgen.exceptions import UserError
from sdgen.spool.ticket import ImageSpec, Ticket

SDGEN_KEY = "sdgen"


def parameters_text(ticket: Ticket, spec: ImageSpec) -> str:
    lines = [ticket.prompt]
    if ticket.negative_prompt:
        lines.append(f"Negative prompt: {ticket.negative_prompt}")
    lines.append(f"Steps: {ticket.steps}, Sampler: DDIM, CFG scale: {ticket.guidance:g}, "
                 f"Seed: {spec.seed}, Size: {ticket.width}x{ticket.height}, Model: {ticket.model}")
    return "\n".join(lines)


def sdgen_meta(ticket: Ticket, spec: ImageSpec, engine_info: dict) -> dict:
    meta = {
        "schema": 1, "request_id": ticket.request_id, "ticket": ticket.name,
        "prompt_index": spec.prompt_index, "image_index": spec.image_index, "seed": spec.seed,
        "prompt": ticket.prompt, "negative_prompt": ticket.negative_prompt, "steps": ticket.steps,
        "guidance": ticket.guidance, "width": ticket.width, "height": ticket.height,
        "model": ticket.model, "weights": ticket.weights, "engine": ticket.engine,
        "sdgen": __version__, **engine_info,
    }
    if ticket.weights == "random":
        meta["note"] = "random weights: this image is noise, not a model output"
    if ticket.engine == "dry-run":
        meta["note"] = "dry-run engine: a test pattern, not a model output"
    return meta


def png_info(ticket: Ticket, spec: ImageSpec, engine_info: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", parameters_text(ticket, spec))
    info.add_itxt(SDGEN_KEY, json.dumps(sdgen_meta(ticket, spec, engine_info), sort_keys=True))
    return info


def read_meta(path: Path) -> dict:
    """The sdgen chunk of a PNG, or a UserError that says why there is none."""
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}) or {}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError:
        raise UserError(f"{path} is not a PNG image") from None
    if SDGEN_KEY not in text:
        raise UserError(f"{path} carries no sdgen metadata (was it made by sdgen?)")
    return json.loads(text[SDGEN_KEY]) | {"parameters": text.get("parameters", "")}
