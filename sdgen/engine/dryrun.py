"""The dry-run engine: a deterministic picture from each image's seed, no model.

For trying a set-up and load-testing without a GPU. SDGEN_DRY_RUN_DELAY (seconds per
image, default 0) stands in for generation time; being an environment variable it reaches
every worker however it was launched.
"""

from __future__ import annotations

import random
import time
from typing import Sequence

from PIL import Image, ImageDraw

from sdgen.engine import settings
from sdgen.engine.base import Engine, ImageJob, Seeded


def dry_run_image(prompt: str, seed: int, width: int, height: int) -> Image.Image:
    rng = random.Random(seed)
    corners = Image.new("RGB", (2, 2))
    corners.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(4)])
    img = corners.resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    draw.text((6, 6), f"seed {seed}", fill=(255, 255, 255))
    draw.text((6, 20), prompt[:40], fill=(255, 255, 255))
    return img


class DryRunEngine(Engine):
    name = "dry-run"

    def __init__(self, delay: float | None = None):
        # read here, so a bad value fails the job with its reason like any engine setting
        self.delay = settings.get("SDGEN_DRY_RUN_DELAY") if delay is None else delay
        self.group_images = settings.group_images(1)  # off unless asked: it has no batch to fill

    def chunk_size(self, job: ImageJob) -> int:
        return 1  # image by image, so cancel and shutdown act at every image boundary

    def group_limit(self, job: ImageJob) -> int:
        return self.group_images

    def generate(self, job: ImageJob, images: Sequence[Seeded]) -> list[Image.Image]:
        out = []
        for spec in images:
            if self.delay > 0:
                time.sleep(self.delay)
            out.append(dry_run_image(job.prompt, spec.seed, job.width, job.height))
        return out
