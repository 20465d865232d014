"""The engines' knobs, read from the environment so that they reach workers however they
are launched (local processes, ADSP jobs, Slurm jobs). Each bad value is a one-line error."""

from __future__ import annotations

import os

from sdgen.engine.batching import PRECISIONS
from sdgen.exceptions import EngineError


def precision(gpu: bool, given: str | None = None) -> str:
    """SDGEN_PRECISION; default bfloat16 on a GPU (fastest on an H100, no float16
    overflow), float32 on the CPU."""
    value = given or os.environ.get("SDGEN_PRECISION") or ("bfloat16" if gpu else "float32")
    if value not in PRECISIONS:
        raise EngineError(f"SDGEN_PRECISION must be one of {', '.join(PRECISIONS)}, got {value!r}",
                          transient=False)
    return value


def attention() -> str:
    """SDGEN_ATTENTION: fused (one fused dot-product-attention op, attention.py) or stock."""
    value = os.environ.get("SDGEN_ATTENTION") or "fused"
    if value not in ("fused", "stock"):
        raise EngineError(f"SDGEN_ATTENTION must be fused or stock, got {value!r}")
    return value


def group_images(default: int) -> int:
    """SDGEN_GROUP_IMAGES: how many images of one request's small tickets a worker runs
    as one batch (1 turns grouping off)."""
    value = os.environ.get("SDGEN_GROUP_IMAGES")
    try:
        return max(1, int(value)) if value else default
    except ValueError:
        raise EngineError(f"SDGEN_GROUP_IMAGES must be a whole number, got {value!r}", transient=False) from None
