"""`sdgen submit --plan` / `sdgen run --plan`: what a request will make, before it is queued.

One line per fact: templates and their expansions, the sweep's combinations, images,
tickets, and an estimate of GPU time from the benchmark figures (defaults.ESTIMATE_*).
The plan is computed by the same code the daemon and the split run (expand_prompts,
ticket_count), so it cannot drift from what then runs.
"""

from __future__ import annotations

import math

from sdgen import defaults
from sdgen.batch.sweep import axes, describe
from sdgen.spool.request import Request
from sdgen.spool.split import ticket_count
from sdgen.textsafe import printable

SHOWN = 20  # prompts and combinations listed one by one; the rest are counted


def seconds_per_image(batch: int, steps: int, width: int, height: int) -> float:
    """The benchmark's seconds per image at `batch` images per forward pass, scaled by
    steps and pixels (512x512, 50 steps measured). Between batch 1 and 16 the rate is
    interpolated on log2(batch); past 16 it stays at the batch-16 rate."""
    one = defaults.ESTIMATE_SECONDS_PER_IMAGE_B1
    sixteen = 1.0 / defaults.ESTIMATE_IMAGES_PER_SECOND_B16
    share = min(1.0, math.log2(max(1, batch)) / 4)
    base = one + (sixteen - one) * share
    return base * (steps / 50) * (width * height / (512 * 512))


def estimate_seconds(request: Request) -> tuple[float, int]:
    """(GPU seconds, images per forward pass assumed). A JAX worker on a GPU runs up to 16
    images of equal settings together (group claims), so a unit of at least 16 images runs
    at the batch-16 rate whatever its batch_size."""
    per_unit = request.images
    batch = max(request.batch_size, min(16, per_unit * len(request.prompts)))
    total = 0.0
    for c in range(request.combinations):
        s = request.settings(request.combination(c))
        total += len(request.prompts) * per_unit * seconds_per_image(batch, s["steps"], s["width"], s["height"])
    return total, batch


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"


def plan_lines(request: Request, seed_drawn: bool) -> list[str]:
    """The plan of an expanded request (expand_prompts done, seed fixed)."""
    lines = []
    prompts, combos, images = len(request.prompts), request.combinations, request.images
    if request.templates:
        how = "every expansion" if request.expand == "all" else f"{request.expand} random expansions each"
        lines.append(f"templates: {len(request.templates)}, expanded to {prompts} prompts ({how})")
        for t, (template, count) in enumerate(zip(request.templates, request.expansions)):
            if t < SHOWN:
                lines.append(f"template {t}: {printable(template)} -> {count} prompts")
    for p, prompt in enumerate(request.prompts[:SHOWN]):
        lines.append(f"prompt {p}: {printable(prompt)}")
    if prompts > SHOWN:
        lines.append(f"... and {prompts - SHOWN} more prompts")
    if request.sweep:
        values = dict(request.sweep)
        sizes = " x ".join(f"{'+'.join(group)} {len(values[group[0]])}" for group in axes(request.sweep, request.zip))
        lines.append(f"sweep: {sizes} values = {combos} combinations (a+b: zipped, moving together)")
        for c in range(min(combos, SHOWN)):
            lines.append(f"combination {c}: {printable(describe(request.combination(c)))}")
        if combos > SHOWN:
            lines.append(f"... and {combos - SHOWN} more combinations")
    parts = f"{prompts} prompts" + (f" x {combos} combinations" if combos > 1 else "")
    lines.append(f"images: {parts} x {images} images = {request.images_total}")
    lines.append(f"tickets: {ticket_count(request)} (batch size {request.batch_size})")
    seed = f"seed: {request.seed}"
    if seed_drawn:
        seed += " (drawn now: add --seed to submit these very expansions and images)"
    lines.append(seed + " (image i of every combination uses seed+i)")
    if request.engine == "dry-run":
        lines.append("estimate: the dry-run engine uses no GPU (SDGEN_DRY_RUN_DELAY seconds per image)")
    else:
        seconds, batch = estimate_seconds(request)
        lines.append(
            f"estimate: about {_duration(seconds)} of GPU time on one {defaults.ESTIMATE_CARD} "
            f"(keras-cv engine on JAX, {batch} images per pass; benchmark figures scaled by steps and "
            "pixels: an estimate, not a measurement)"
        )
    lines.append("nothing queued (--plan)")
    return lines
