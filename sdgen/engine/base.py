"""The engine interface the worker uses, and the registry of engines by name."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Sequence

from PIL import Image

from sdgen import settings
from sdgen.exceptions import EngineError
from sdgen.spool.ticket import ImageSpec, Ticket


class Engine(ABC):
    """Generates images for tickets. One instance per worker process, kept warm."""

    name: str = ""

    def chunk_size(self, ticket: Ticket) -> int:
        """How many images one `generate` call makes: cancel and shutdown are checked
        between calls."""
        return len(ticket.images)

    def describe(self) -> dict:
        """What made the images (engine, backend, precision, versions), for their metadata."""
        return {"engine": self.name}

    def prepare(self, ticket: Ticket) -> dict[str, float]:
        """Build whatever `ticket` needs (cached across tickets); returns timings in seconds
        of work actually done now (empty when everything was warm)."""
        return {}

    @abstractmethod
    def generate(self, ticket: Ticket, images: Sequence[ImageSpec]) -> list[Image.Image]:
        """One image per spec, in order; image i must depend only on its own seed."""

    def group_limit(self, ticket: Ticket) -> int:
        """How many images of several tickets of `ticket`'s request one `generate_group`
        call should take (1: this engine gains nothing from running tickets together)."""
        return 1

    def generate_group(self, items: Sequence[tuple[Ticket, Sequence[ImageSpec]]]) -> list[list[Image.Image]]:
        """Images for several tickets of ONE request (same model, size, steps, guidance),
        as one batch where the engine can; one list of images per item, in order."""
        return [self.generate(ticket, specs) for ticket, specs in items]


def _dry_run(data_root):
    from sdgen.engine.dryrun import DryRunEngine

    return DryRunEngine()


def _snapshots_apply() -> bool:
    """On JAX with the fused sampler, workers run from model snapshots (exported.py) and
    skip importing keras; any other set-up builds the keras models in every worker."""
    return (os.environ.get("KERAS_BACKEND") == "jax" and settings.get("SDGEN_SNAPSHOT")
            and settings.get("SDGEN_SAMPLER") == "fused")


def _keras_cv(data_root):
    try:
        if _snapshots_apply():
            from sdgen.engine.exported import ExportedEngine

            return ExportedEngine(data_root)
        from sdgen.engine.kerascv import KerasCVEngine
    except ImportError as e:
        raise EngineError(
            f"the keras-cv engine needs the ML packages ({e.name or e}): "
            "install them with `pip install 'sdgen[ml]'` (or `make run` does it), "
            "or use `engine: dry-run` to try a set-up without a model"
        ) from None
    return KerasCVEngine(data_root)


ENGINES = {"dry-run": _dry_run, "keras-cv": _keras_cv}


def get_engine(name: str, data_root=None) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None
    return factory(data_root)
