"""sdgen's samplers against diffusers' schedulers, step by step, on a synthetic noise
prediction (no model, no torch): the trajectories in sampler_reference.npz were made by
benchmarks/sampler_reference.py (its docstring: which configuration, and why a committed
file rather than torch + diffusers as test dependencies: ~1 GB of wheels and tens of seconds
of import per CI run). The committed file was made with diffusers 0.42.1 and torch 2.14.1 on
the CPU (both also stored in it: `diffusers_version`, `torch_version`).

Tolerance: every step's latent within 1e-5 of the reference, relative to that step's
largest magnitude (float32 throughout; the loops run closed, each on its own latents, as in
generation, so differences would compound if the arithmetic were not the reference's).
"""

from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from sdgen.engine import samplers  # noqa: E402
from sdgen.engine.diffusion import schedule  # noqa: E402

REF = np.load(Path(__file__).with_name("sampler_reference.npz"))
A, B, C = (float(v) for v in REF["model"])
ALPHAS = REF["alphas_cumprod"]
RTOL = 1e-5
CASES = [(name, steps) for name in samplers.SAMPLERS for steps in (20, 25)]


def model(x, t):
    return jnp.tanh(A * x + B * (t / 1000.0) + C)


def trajectory(sampler, steps, tables, noise, step_noise=None):
    """Every state of the jitted loop: the sampler's functions as the engine's loop calls them."""
    tables = tuple(jnp.asarray(t) for t in tables)
    step_noise = jnp.zeros((steps, *noise.shape), jnp.float32) if step_noise is None else jnp.asarray(step_noise)

    @jax.jit
    def run(noise, tables, step_noise):
        def body(i, carry):
            state, out = carry
            x_in, t = samplers.model_input(sampler, state[0], i, steps, tables, jnp)
            eps = model(x_in, t)
            state = samplers.step(sampler, state, eps, i, steps, tables, jnp, noise=step_noise[i])
            return state, out.at[i + 1].set(state[0])

        state = samplers.initial(sampler, noise, tables, jnp)
        out = jnp.zeros((steps + 1, *noise.shape), jnp.float32).at[0].set(state[0])
        return jax.lax.fori_loop(0, steps, body, (state, out))[1]

    return np.asarray(run(jnp.asarray(noise), tables, step_noise))


def ddim_tables_of_diffusers(timesteps, steps):
    """DDIMScheduler's own schedule as sdgen's ddim tables: it steps from t to t - 1000//N
    (alpha_bar[0] below 0: SD's set_alpha_to_one is False), not to the next listed timestep."""
    ts = np.asarray(timesteps, np.int64)[::-1]  # ascending, as the ddim tables are
    prev = ts - 1000 // steps
    alphas = ALPHAS[ts]
    alphas_prev = np.where(prev >= 0, ALPHAS[np.maximum(prev, 0)], ALPHAS[0])
    return ts.astype(np.float32), alphas.astype(np.float32), alphas_prev.astype(np.float32)


def deviation(ours, ref):
    """Largest difference per step relative to that step's largest magnitude."""
    scale = np.abs(ref).reshape(len(ref), -1).max(axis=1)
    return (np.abs(ours - ref).reshape(len(ref), -1).max(axis=1) / scale).max()


@pytest.mark.parametrize("sampler,steps", CASES)
def test_each_sampler_follows_diffusers_step_by_step(sampler, steps):
    key = f"{sampler}/{steps}"
    ref = REF[f"{key}/x"]
    noise = REF["initial_noise"]
    if sampler == "ddim":
        tables = ddim_tables_of_diffusers(REF[f"{key}/timesteps"], steps)
    else:
        tables = samplers.tables(sampler, steps, ALPHAS, length=steps)
        # the schedule itself first: the timesteps the model sees and the sigmas
        np.testing.assert_array_equal(tables[0][:steps], REF[f"{key}/timesteps"].astype(np.float32))
        np.testing.assert_allclose(tables[1], REF[f"{key}/sigmas"], rtol=1e-6)
    step_noise = REF[f"{key}/noise"] if sampler in samplers.ANCESTRAL else None
    ours = trajectory(sampler, steps, tables, noise, step_noise)
    assert ours.shape == ref.shape
    assert deviation(ours, ref) < RTOL, deviation(ours, ref)


def test_the_tables_are_padded_so_one_program_serves_every_step_count():
    for sampler in samplers.SAMPLERS:
        shapes = {tuple(t.shape for t in samplers.tables(sampler, n, ALPHAS)) for n in (1, 2, 20, 50, 1000)}
        assert len(shapes) == 1, sampler
    # and a short padded schedule runs the same as an unpadded one
    for sampler in ("euler", "dpmpp_2m_karras"):
        noise = REF["initial_noise"]
        short = trajectory(sampler, 20, samplers.tables(sampler, 20, ALPHAS, length=20), noise)
        padded = trajectory(sampler, 20, samplers.tables(sampler, 20, ALPHAS, length=64), noise)
        np.testing.assert_array_equal(short, padded)


def test_ddim_keeps_keras_cvs_schedule_bit_for_bit():
    """sdgen's ddim is keras-cv's loop as before: its tables are diffusion.schedule's."""
    for n in (1, 2, 20, 50):
        for ours, before in zip(samplers.tables("ddim", n, ALPHAS), schedule(n, ALPHAS)):
            assert ours.dtype == before.dtype
            np.testing.assert_array_equal(ours, before)


def test_ancestral_noise_is_each_images_own():
    keys = samplers.ancestral_keys([7, 8, 9])
    together = np.asarray(samplers.ancestral_noise(jnp.asarray(keys), 3, (4, 4, 4)))
    alone = np.asarray(samplers.ancestral_noise(jnp.asarray(keys[1:2]), 3, (4, 4, 4)))
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(together[0], together[1])
    other_step = np.asarray(samplers.ancestral_noise(jnp.asarray(keys[1:2]), 4, (4, 4, 4)))
    assert not np.array_equal(alone, other_step)
    np.testing.assert_array_equal(samplers.ancestral_keys([8]), keys[1:2])


def test_names():
    assert samplers.A1111_NAMES["dpmpp_2m_karras"] == "DPM++ 2M Karras"
    assert samplers.from_a1111("Euler a") == "euler_a"
    assert samplers.from_a1111("DPM++ 2M", "Karras") == "dpmpp_2m_karras"
    assert samplers.from_a1111("DPM++ 2M Karras", "Karras") == "dpmpp_2m_karras"
    assert samplers.from_a1111("LMS") is None
    with pytest.raises(ValueError, match="one of ddim, euler"):
        samplers.tables("plms", 20, ALPHAS)
