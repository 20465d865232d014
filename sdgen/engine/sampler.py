"""The whole sampling loop as ONE compiled function per (model, size, batch size).

keras-cv's stock loop calls the UNet twice per step (conditional, then unconditional) and
goes back to the host between steps. Here both passes run as one batch of 2B, the latents
stay on the device, and the loop itself (`keras.ops.fori_loop`) is inside the compiled
function, followed by the decoder. The arithmetic is the stock loop's, so the images match
it for the same noise (tests/engine/test_kerascv.py).

Compilation per backend: JAX jits a pure function over the models' variables
(`stateless_call`, so weights are arguments, not gigabytes of baked-in constants);
TensorFlow wraps it in `tf.function` (XLA when jit is on); torch runs it eagerly.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

from sdgen.engine.diffusion import schedule, to_pixels

ALPHAS_CUMPROD = tuple(float(a) for a in _ALPHAS_CUMPROD)


def timestep_embedding(t, batch: int, dim: int = 320, max_period: float = 10000.0):
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.cast(ops.arange(0, half), "float32") / half)
    args = ops.reshape(ops.cast(t, "float32"), (1,)) * freqs
    emb = ops.reshape(ops.concatenate([ops.cos(args), ops.sin(args)], 0), (1, -1))
    return ops.repeat(emb, batch, axis=0)


def denoise_and_decode(unet_call, decoder_call, latent, context, uncond, n, timesteps, alphas, alphas_prev, guidance):
    """latent (B,h,w,4), context/uncond (1 or B,77,C), the first `n` entries of the padded
    schedule -> decoded images in [-1, 1]."""
    batch = latent.shape[0]
    if context.shape[0] != batch:
        context = ops.repeat(context, batch, axis=0)
    if uncond.shape[0] != batch:
        uncond = ops.repeat(uncond, batch, axis=0)
    both_contexts = ops.concatenate([context, uncond], 0)

    def step(i, latent):
        index = n - 1 - i
        t = ops.take(timesteps, index)
        eps = unet_call(
            {
                "latent": ops.concatenate([latent, latent], 0),
                "timestep_embedding": timestep_embedding(t, 2 * batch),
                "context": both_contexts,
            }
        )
        # guidance and the update in float32 whatever the UNet computes in (bfloat16 weights
        # give bfloat16 outputs; TensorFlow, unlike JAX, does not promote by itself)
        cond, unc = ops.cast(eps[:batch], "float32"), ops.cast(eps[batch:], "float32")
        eps = ops.cast(unc + guidance * (cond - unc), latent.dtype)
        a_t, a_prev = ops.take(alphas, index), ops.take(alphas_prev, index)
        pred_x0 = (latent - ops.sqrt(1.0 - a_t) * eps) / ops.sqrt(a_t)
        return eps * ops.sqrt(1.0 - a_prev) + ops.sqrt(a_prev) * pred_x0

    latent = ops.fori_loop(0, n, step, latent)
    return decoder_call(latent)


def pure_sampler(unet: keras.Model, decoder: keras.Model):
    """The loop as a pure function of the models' variables (JAX): what FusedSampler jits
    and what a snapshot exports (snapshot.py), so both run the same program."""

    def sample(unet_vars, decoder_vars, latent, context, uncond, n, timesteps, alphas, alphas_prev, guidance):
        return denoise_and_decode(
            lambda x: unet.stateless_call(*unet_vars, x, training=False)[0],
            lambda x: decoder.stateless_call(*decoder_vars, x, training=False)[0],
            latent,
            context,
            uncond,
            n,
            timesteps,
            alphas,
            alphas_prev,
            guidance,
        )

    return sample


def model_variables(model: keras.Model) -> tuple[list, list]:
    """What stateless_call takes. Read them at every call: Keras may replace the buffers."""
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


class FusedSampler:
    """Compiled loop for one (UNet, decoder) pair; call it with numpy inputs."""

    def __init__(self, unet: keras.Model, decoder: keras.Model, jit: bool):
        self.unet, self.decoder = unet, decoder
        backend = keras.backend.backend()
        if backend == "jax":
            self._fn = self._jax()
        elif backend == "tensorflow":
            import tensorflow as tf

            self._fn = tf.function(self._plain, jit_compile=jit)
        else:
            self._fn = self._plain

    def _plain(self, latent, context, uncond, n, timesteps, alphas, alphas_prev, guidance):
        return denoise_and_decode(
            lambda x: self.unet(x, training=False),
            lambda x: self.decoder(x, training=False),
            latent,
            context,
            uncond,
            n,
            timesteps,
            alphas,
            alphas_prev,
            guidance,
        )

    def _jax(self):
        import jax

        jitted = jax.jit(pure_sampler(self.unet, self.decoder))
        return lambda *args: jitted(model_variables(self.unet), model_variables(self.decoder), *args)

    def __call__(self, latent: np.ndarray, context, uncond, num_steps: int, guidance: float) -> np.ndarray:
        # the schedule padded to MAX_STEPS and the real count as an argument: one compiled
        # program for every step count
        timesteps, alphas, alphas_prev = schedule(num_steps, ALPHAS_CUMPROD)
        decoded = self._fn(
            ops.convert_to_tensor(latent),
            ops.convert_to_tensor(context),
            ops.convert_to_tensor(uncond),
            np.int32(num_steps),
            timesteps,
            alphas,
            alphas_prev,
            np.float32(guidance),
        )
        return to_pixels(ops.convert_to_numpy(decoded))
