"""The samplers: DDIM (keras-cv's, the default), Euler, Euler ancestral, DPM++ 2M and
DPM++ 2M Karras, as pure functions a compiled sampling loop can call.

Two halves:
- host tables (numpy, no keras): per step count, the timesteps the UNet sees and the
  sampler's schedule (alphas for DDIM, sigmas for the others), padded to a fixed length so
  one compiled program serves every step count. Built from keras-cv's cumulative alpha
  table (SD's scaled-linear betas, 0.00085 -> 0.012 over 1,000 steps), like today's DDIM.
- the loop's arithmetic: `initial`, `model_input`, `step`. They take the array namespace
  `xp` (jax.numpy, keras.ops or numpy: only names the three share are used) and carry the
  sampler's state explicitly: `(latent, previous data prediction)`; the second is used by
  DPM++ 2M only and is the latent's shape for every sampler, so the loop's carry is fixed.

What each is (the reference every sampler is tested against, tests/engine/test_samplers.py,
on trajectories made by diffusers, benchmarks/sampler_reference.py):
- ddim: keras-cv's generate_image, bit for bit as before (timesteps round(i*999/(N-1)), both
  0 and 999; each step's previous alpha is the next listed timestep's, 1.0 after t=0).
  Its step is diffusers' `DDIMScheduler.step` (eta 0) arithmetic; its schedule is keras-cv's,
  which no DDIMScheduler configuration gives (diffusers steps to t - 1000//N, not to the next
  listed timestep): kept so that the original example's images stay reproducible.
- euler: `EulerDiscreteScheduler` with SD's configuration (timestep_spacing "linspace":
  float timesteps linspace(0, 999, N) descending, sigmas interpolated, a final 0; the
  first latent is the noise times the largest sigma; the UNet sees latent/sqrt(sigma^2+1)).
- euler_a: `EulerAncestralDiscreteScheduler`, the same schedule; each step adds fresh noise
  times sigma_up. The noise is an argument of `step`: the loop draws it per image from that
  image's own key (`ancestral_noise`), so an image is the same alone or in any batch.
- dpmpp_2m: `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint, final sigma 0:
  the first and the last step are first order), integer timesteps
  round(linspace(0, 999, N+1))[::-1][:-1].
- dpmpp_2m_karras: the same with `use_karras_sigmas=True` (rho 7 between the table's smallest
  and largest sigma; timesteps interpolated back from log sigma and rounded).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sdgen.engine.diffusion import MAX_STEPS, schedule

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")
DEFAULT = "ddim"
# the names AUTOMATIC1111 writes in a PNG's `parameters` chunk ("Sampler: DPM++ 2M Karras")
A1111_NAMES = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
}
ANCESTRAL = frozenset({"euler_a"})
KARRAS_RHO = 7.0
TRAIN_STEPS = 1000


def from_a1111(name: str, schedule_type: str = "") -> str | None:
    """sdgen's name for an A1111 sampler name (newer A1111 writes `Sampler: DPM++ 2M,
    Schedule type: Karras`); None if sdgen has no such sampler."""
    name = name.strip()
    if schedule_type.strip().lower() == "karras" and not name.lower().endswith("karras"):
        name += " Karras"
    for key, a1111 in A1111_NAMES.items():
        if a1111.lower() == name.lower():
            return key
    return None


# -- host tables -------------------------------------------------------------------------------
def train_sigmas(alphas_cumprod: Sequence[float]) -> np.ndarray:
    """sqrt((1 - alpha_bar) / alpha_bar) for each of the 1,000 training timesteps, float32."""
    ac = np.asarray(alphas_cumprod, np.float32)
    return np.sqrt((np.float32(1) - ac) / ac).astype(np.float32)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho), largest first."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_timestep(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma: linear in log sigma between the two
    neighbouring entries of the training table, clipped to its ends."""
    log_s = np.log(np.maximum(sigmas, 1e-10))
    # index of the last table entry whose log sigma is <= log_s (the table increases with t)
    low = np.clip(np.searchsorted(log_train_sigmas, log_s, side="right") - 1, 0, len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_s) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def sigma_schedule(sampler: str, num_steps: int, alphas_cumprod: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps (N,), sigmas (N+1,), the last 0), float32, in running order."""
    table = train_sigmas(alphas_cumprod)
    if sampler in ("euler", "euler_a"):
        timesteps = np.linspace(0, TRAIN_STEPS - 1, num_steps, dtype=np.float32)[::-1]
        sigmas = np.interp(timesteps, np.arange(TRAIN_STEPS), table)
    elif sampler == "dpmpp_2m":
        timesteps = np.linspace(0, TRAIN_STEPS - 1, num_steps + 1).round()[::-1][:-1]
        sigmas = np.interp(timesteps, np.arange(TRAIN_STEPS), table)
    elif sampler == "dpmpp_2m_karras":
        sigmas = karras_sigmas(float(table[0]), float(table[-1]), num_steps)
        timesteps = sigma_to_timestep(sigmas, np.log(table)).round()
    else:
        raise ValueError(f"{sampler!r} has no sigma schedule")
    sigmas = np.concatenate([sigmas, [0.0]])
    return np.ascontiguousarray(timesteps, np.float32), sigmas.astype(np.float32)


def tables(
    sampler: str, num_steps: int, alphas_cumprod: Sequence[float], length: int = MAX_STEPS
) -> tuple[np.ndarray, ...]:
    """What the loop takes for `num_steps` steps, zero-padded so that the shapes depend on
    the sampler only: DDIM (timesteps, alphas, alphas_prev) ascending, each of `length`
    (diffusion.schedule, as before); the others (timesteps of `length`, sigmas of
    `length + 1`) in running order."""
    check(sampler)
    if sampler == "ddim":
        return schedule(num_steps, alphas_cumprod, length)
    timesteps, sigmas = sigma_schedule(sampler, num_steps, alphas_cumprod)
    pad = max(0, length - num_steps)
    return np.pad(timesteps, (0, pad)), np.pad(sigmas, (0, pad))


def check(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    return sampler


# -- the loop's arithmetic ---------------------------------------------------------------------
def initial(sampler: str, noise, tables, xp):
    """The first state from unit noise: (latent, previous data prediction)."""
    if sampler in ("euler", "euler_a"):
        # diffusers' init_noise_sigma with "linspace" spacing: the largest sigma, the first
        noise = noise * xp.take(tables[1], 0)
    return noise, xp.zeros_like(noise)


def model_input(sampler: str, latent, i, n, tables, xp):
    """(what the UNet gets at step i of n, its timestep)."""
    if sampler == "ddim":
        return latent, xp.take(tables[0], n - 1 - i)
    t = xp.take(tables[0], i)
    if sampler in ("euler", "euler_a"):
        sigma = xp.take(tables[1], i)
        return latent / xp.sqrt(sigma * sigma + 1.0), t
    return latent, t


def step(sampler: str, state, eps, i, n, tables, xp, noise=None):
    """The state after step i of n, given the (guided) noise prediction `eps` for it; the
    ancestral samplers take this step's unit `noise`."""
    latent, previous = state
    if sampler == "ddim":
        index = n - 1 - i
        a_t, a_prev = xp.take(tables[1], index), xp.take(tables[2], index)
        pred_x0 = (latent - xp.sqrt(1.0 - a_t) * eps) / xp.sqrt(a_t)
        return eps * xp.sqrt(1.0 - a_prev) + xp.sqrt(a_prev) * pred_x0, previous
    sigmas = tables[1]
    sigma, sigma_next = xp.take(sigmas, i), xp.take(sigmas, i + 1)
    if sampler in ("euler", "euler_a"):
        pred_x0 = latent - sigma * eps
        derivative = (latent - pred_x0) / sigma
        if sampler == "euler":
            return latent + derivative * (sigma_next - sigma), previous
        sigma_up = xp.sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
        sigma_down = xp.sqrt(sigma_next * sigma_next - sigma_up * sigma_up)
        latent = latent + derivative * (sigma_down - sigma)
        return latent + noise * sigma_up, previous
    if sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        return _dpmpp_2m(latent, previous, eps, i, n, sigmas, xp)
    raise ValueError(f"unknown sampler {sampler!r}")


def _alpha_sigma(sigma, xp):
    """(alpha_t, sigma_t) of the variance-preserving process for a sigma of the
    variance-exploding one."""
    alpha = 1.0 / xp.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def _dpmpp_2m(latent, previous, eps, i, n, sigmas, xp):
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2), data prediction, midpoint form: first order
    at the first step (no previous prediction) and at the last (to sigma 0)."""
    alpha_s0, sigma_s0 = _alpha_sigma(xp.take(sigmas, i), xp)
    alpha_t, sigma_t = _alpha_sigma(xp.take(sigmas, i + 1), xp)
    alpha_s1, sigma_s1 = _alpha_sigma(xp.take(sigmas, xp.maximum(i - 1, 0)), xp)
    x0 = (latent - sigma_s0 * eps) / alpha_s0
    lambda_t = xp.log(alpha_t) - xp.log(sigma_t)  # +inf at sigma 0: exp(-h) is then 0
    lambda_s0 = xp.log(alpha_s0) - xp.log(sigma_s0)
    lambda_s1 = xp.log(alpha_s1) - xp.log(sigma_s1)
    h = lambda_t - lambda_s0
    decay = alpha_t * (xp.exp(-h) - 1.0)
    base = (sigma_t / sigma_s0) * latent - decay * x0
    # second order: D1 = (x0 - previous) / r0, r0 = h_0 / h; its coefficient is finite only
    # in the middle steps, where it is used (the where() below never picks inf/nan)
    second_order = xp.logical_and(i > 0, i < n - 1)
    r0 = xp.where(second_order, (lambda_s0 - lambda_s1) / h, 1.0)
    d1 = (1.0 / r0) * (x0 - previous)
    latent = xp.where(second_order, base - 0.5 * decay * d1, base)
    return latent, x0


def ancestral_keys(seeds: Sequence[int]) -> np.ndarray:
    """One JAX PRNG key (2 uint32) per image, from that image's seed alone."""
    import jax

    return np.stack([np.asarray(jax.random.key_data(jax.random.PRNGKey(int(s)))) for s in seeds])


def ancestral_noise(keys, i, shape):
    """Step i's unit noise for each image (JAX): image b's from its own key and i only."""
    import jax

    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape, "float32"))(keys)
