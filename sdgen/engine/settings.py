"""The engines' knobs as the engines use them: sdgen/settings.py declares, parses and
checks every variable; this adds the defaults that depend on the device."""

from __future__ import annotations

from sdgen import settings
from sdgen.settings import get  # noqa: F401  (the knobs with no device default, as they are)


def precision(gpu: bool, given: str | None = None) -> str:
    """SDGEN_PRECISION; default bfloat16 on a GPU (fastest on an H100, no float16
    overflow), float32 on the CPU. `given` (an engine's argument) is checked the same way."""
    value = settings.SETTINGS["SDGEN_PRECISION"].value(given) if given else settings.get("SDGEN_PRECISION")
    return value or ("bfloat16" if gpu else "float32")


def attention() -> str:
    """SDGEN_ATTENTION: fused (one fused dot-product-attention op, attention.py) or stock."""
    return settings.get("SDGEN_ATTENTION")


def sampler(given: str | None = None) -> str:
    """SDGEN_SAMPLER: fused (the whole loop as one compiled function) or stock."""
    return settings.SETTINGS["SDGEN_SAMPLER"].value(given) if given else settings.get("SDGEN_SAMPLER")


def jit(gpu: bool) -> bool:
    """SDGEN_JIT; default on a GPU only (XLA is slower on the CPU)."""
    value = settings.get("SDGEN_JIT")
    return gpu if value is None else value


def group_images(default: int) -> int:
    """SDGEN_GROUP_IMAGES: how many images of one request's small tickets a worker runs
    as one batch (0 or 1 turns grouping off); `default` is the engine's own."""
    value = settings.get("SDGEN_GROUP_IMAGES")
    return default if value is None else max(1, value)
