"""How many images go through the model at once: fixed batch buckets and a memory model.
Pure functions, no model imports."""

from __future__ import annotations

from sdgen import settings
from sdgen.settings import LARGEST_BATCH, PRECISIONS  # noqa: F401  (engines import PRECISIONS from here)

# Every call is padded up to one of these, so XLA compiles a handful of shapes, not one per
# odd-sized last ticket. The largest is declared with SDGEN_MAX_BATCH, its upper limit.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, LARGEST_BATCH)

# Peak GPU memory of the fused loop, measured on an H100 (docs/benchmarks.md, bfloat16,
# fused attention): 3.1 GiB at B=1, 5.0 at 8, 8.0 at 16, 14.0 at 32, 26.0 at 64 for 512x512,
# 8.0 at B=4 for 1024x1024: about 2 GiB plus 0.375 GiB per image per 512x512 of pixels.
# float32 weights (float32 and mixed_ policies) add 2 GiB; float32 compute doubles the rest.
BASE_GIB = 2.0
PER_IMAGE_GIB_512 = 0.375


def bucket(n: int) -> int:
    return next(b for b in BATCH_BUCKETS if b >= n)


def max_batch_for(
    memory_gib: float | None, height: int, width: int, precision: str, cap: int = BATCH_BUCKETS[-1]
) -> int:
    """The largest batch bucket whose estimated peak fits in 90% of the GPU's memory (no
    limit known, as on the CPU: just `cap`)."""
    fitting = [b for b in BATCH_BUCKETS if b <= cap] or [1]
    if not memory_gib:
        return fitting[-1]
    base = BASE_GIB + (2.0 if precision in ("float32", "mixed_float16", "mixed_bfloat16") else 0.0)
    per_image = PER_IMAGE_GIB_512 * height * width / 512**2 * (2 if precision == "float32" else 1)
    return max([1] + [b for b in fitting if base + b * per_image <= 0.9 * memory_gib])


def chunk_for(images: int, height: int, width: int, memory_gib: float | None, precision: str) -> int:
    """Images per forward pass: a ticket's batch, cut to what fits the GPU's memory (and to
    SDGEN_MAX_BATCH if set), so a big batch at a big size never runs out."""
    cap = settings.get("SDGEN_MAX_BATCH")
    return max(1, min(images, max_batch_for(memory_gib, height, width, precision, cap)))


def jax_memory_gib() -> float | None:
    """The first JAX device's memory, or None where JAX does not say (the CPU)."""
    import jax

    try:
        return jax.devices()[0].memory_stats()["bytes_limit"] / 2**30
    except (KeyError, TypeError, AttributeError):
        return None
