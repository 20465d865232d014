"""The numbers around the model, in numpy: starting noise, the DDIM schedule, pixels.
Shared by the keras path (sampler.py) and the snapshot path (snapshot.py), which must not
import keras."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The most steps a request may ask for (spool/request.py); the compiled loop takes its
# schedule padded to this length plus the real step count, so one executable serves them all.
MAX_STEPS = 1000


def initial_noise(seeds: Sequence[int], height: int, width: int) -> np.ndarray:
    """Each image's starting latent from its own seed only: the same image alone or inside
    any batch starts from the same noise, on every backend."""
    return np.stack(
        [np.random.default_rng(seed).standard_normal((height // 8, width // 8, 4), dtype=np.float32) for seed in seeds]
    )


def schedule(
    num_steps: int, alphas_cumprod: Sequence[float], length: int = MAX_STEPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timesteps and alphas exactly as keras-cv's generate_image computes them (from its
    1,000-entry cumulative alpha table), zero-padded to `length`."""
    ratio = (1000 - 1) / (num_steps - 1) if num_steps > 1 else 1000
    timesteps = (np.arange(0, num_steps) * ratio).round().astype(np.int64)
    alphas = [alphas_cumprod[t] for t in timesteps]
    alphas_prev = [1.0] + alphas[:-1]
    pad = max(0, length - num_steps)
    return tuple(np.pad(np.asarray(a, np.float32), (0, pad)) for a in (timesteps, alphas, alphas_prev))


def to_pixels(decoded) -> np.ndarray:
    """The decoder's output in [-1, 1] to uint8 RGB, as keras-cv does it."""
    decoded = np.asarray(decoded).astype(np.float32)
    return np.clip((decoded + 1) / 2 * 255, 0, 255).astype("uint8")
