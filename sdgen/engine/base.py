"""The engine interface the worker uses, and what it is given: prompts, sizes and seeds.

An engine knows nothing of spools, tickets or requests: the worker (worker/runner.py)
turns a ticket into an `ImageJob`. The registry of engines by name is engine/registry.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, Sequence

from PIL import Image


class Seeded(Protocol):
    """One image to make: all an engine reads of it is its seed (the worker passes its own
    image records, which carry more, and gets the images back in the same order)."""

    seed: int


@dataclass(frozen=True)
class ImageJob:
    """Images of one prompt at one size and setting; `images` says which (one per seed)."""

    prompt: str
    negative_prompt: str
    images: tuple[Seeded, ...]
    steps: int
    width: int
    height: int
    guidance: float
    model: str  # sd-v1 | sd-v2
    weights: str  # pretrained | random


class Engine(ABC):
    """Generates images for jobs. One instance per worker process, kept warm."""

    name: str = ""

    def chunk_size(self, job: ImageJob) -> int:
        """How many images one `generate` call makes: cancel and shutdown are checked
        between calls."""
        return len(job.images)

    def describe(self) -> dict:
        """What made the images (engine, backend, precision, versions), for their metadata."""
        return {"engine": self.name}

    def prepare(self, job: ImageJob) -> dict[str, float]:
        """Build whatever `job` needs (cached across jobs); returns timings in seconds
        of work actually done now (empty when everything was warm)."""
        return {}

    @abstractmethod
    def generate(self, job: ImageJob, images: Sequence[Seeded]) -> list[Image.Image]:
        """One image per item, in order; image i must depend only on its own seed."""

    def group_limit(self, job: ImageJob) -> int:
        """How many images of several jobs like `job` (one request's) one `generate_group`
        call should take (1: this engine gains nothing from running jobs together)."""
        return 1

    def generate_group(self, items: Sequence[tuple[ImageJob, Sequence[Seeded]]]) -> list[list[Image.Image]]:
        """Images for several jobs of ONE request (same model, size, steps, guidance),
        as one batch where the engine can; one list of images per item, in order."""
        return [self.generate(job, specs) for job, specs in items]
