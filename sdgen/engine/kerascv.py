"""The keras-cv Stable Diffusion engine: models built once per worker, per-image seeds,
verified local weights, a small fixed set of batch sizes.

Knobs (environment, so they reach workers however launched; sdgen/settings.py declares
and checks them all):
  KERAS_BACKEND    tensorflow (default) | jax | torch
  SDGEN_PRECISION  float32 | float16 | bfloat16 | mixed_float16 | mixed_bfloat16 (default:
                   bfloat16 on a GPU, float32 on the CPU). float16/bfloat16 hold the weights once
                   in that dtype; the mixed_ policies keep float32 weights and cast them at every
                   use (same arithmetic, twice the weight memory)
  SDGEN_MAX_BATCH  most images per forward pass (default: what fits the GPU's memory, at most 64)
  SDGEN_JIT        on | off (default: on on a GPU, off on the CPU, where XLA is slower)
  SDGEN_ATTENTION  fused (default: one fused dot-product-attention op, attention.py) | stock
  SDGEN_COMPILE_CACHE  folder for JAX's persistent compilation cache (default
                   <data>/cache/jax; "off" disables): a new worker on a warm node skips compiling
  SDGEN_SAMPLER    fused (default: the whole loop as one compiled function, sampler.py) |
                   stock (keras-cv's own generate_image, kept as the reference)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_cv  # noqa: E402  (imports tensorflow, as keras-cv requires)
import numpy as np  # noqa: E402
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer  # noqa: E402
from keras_cv.src.models.stable_diffusion.decoder import Decoder  # noqa: E402
from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel, DiffusionModelV2  # noqa: E402
from keras_cv.src.models.stable_diffusion.stable_diffusion import (  # noqa: E402
    MAX_PROMPT_LENGTH,
    StableDiffusion,
    StableDiffusionV2,
)
from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder, TextEncoderV2  # noqa: E402
from PIL import Image  # noqa: E402

from sdgen.engine import settings  # noqa: E402
from sdgen.engine.attention import use_fused_attention  # noqa: E402
from sdgen.engine.base import (  # noqa: E402
    Engine,  # noqa: E402
    ImageJob,
    Seeded,
)
from sdgen.engine.batching import bucket, chunk_for, jax_memory_gib  # noqa: E402
from sdgen.engine.diffusion import initial_noise  # noqa: E402
from sdgen.engine.sampler import FusedSampler  # noqa: E402
from sdgen.engine.weights import FILES, WeightCache, cache_dir, random_tokenizer_file  # noqa: E402
from sdgen.exceptions import EngineError  # noqa: E402

log = logging.getLogger(__name__)

_ARCH = {
    "sd-v1": (StableDiffusion, TextEncoder, DiffusionModel),
    "sd-v2": (StableDiffusionV2, TextEncoderV2, DiffusionModelV2),
}


def on_gpu() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return jax.devices()[0].platform == "gpu"
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no GPU runtime at all
        return False
    return False


@contextlib.contextmanager
def _quiet():
    """keras-cv prints a licence banner per model and a progress bar per call."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _zeros_init():
    """Variables created inside start as zeros instead of drawing from their initializers
    (for weights that are loaded right after). Every keras backend's Variable takes its
    initializer in `_initialize_with_initializer`; keras is pinned (pyproject)."""
    cls = type(keras.Variable(0.0))
    original = cls._initialize_with_initializer
    zeros = keras.initializers.Zeros()
    cls._initialize_with_initializer = lambda self, initializer: original(self, zeros)
    try:
        yield
    finally:
        cls._initialize_with_initializer = original


class KerasCVEngine(Engine):
    name = "keras-cv"

    def __init__(
        self,
        data_root: Path | str = "data",
        precision: str | None = None,
        jit: bool | None = None,
        sampler: str | None = None,
    ):
        gpu = on_gpu()
        self.sampler = settings.sampler(sampler)
        self.attention = settings.attention()
        self.precision = settings.precision(gpu, precision)
        self.jit = jit if jit is not None else settings.jit(gpu)
        self.device = "gpu" if gpu else "cpu"
        self.cache = WeightCache(cache_dir(Path(data_root)))
        self.compile_cache = self._enable_compile_cache(Path(data_root))
        self.models: dict[tuple, StableDiffusion] = {}
        self.samplers: dict[tuple, FusedSampler] = {}
        self.warm: set[tuple] = set()
        # keras' dtype policy is process-wide: every model this worker builds gets it
        keras.config.set_dtype_policy(self.precision)

    @staticmethod
    def _enable_compile_cache(data_root: Path) -> str | None:
        if keras.backend.backend() != "jax":
            return None
        from sdgen.engine.snapshot import enable_compile_cache

        return enable_compile_cache(data_root)

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "backend": keras.backend.backend(),
            "precision": self.precision,
            "jit": self.jit,
            "device": self.device,
            "sampler": self.sampler,
            "attention": self.attention,
            "keras": keras.__version__,
            "keras_cv": keras_cv.__version__,
        }

    # -- batch size -------------------------------------------------------------------------
    def gpu_memory_gib(self) -> float | None:
        return jax_memory_gib() if keras.backend.backend() == "jax" and self.device == "gpu" else None

    def chunk_size(self, job: ImageJob) -> int:
        return chunk_for(len(job.images), job.height, job.width, self.gpu_memory_gib(), self.precision)

    # -- building ---------------------------------------------------------------------------
    def _key(self, job: ImageJob) -> tuple:
        return (job.model, job.weights, job.height, job.width)

    def tokenizer_file(self, model: str, weights: str) -> Path:
        if weights == "pretrained":
            return self.cache.require(model)[FILES[model][0].name]
        return random_tokenizer_file(self.cache.dir)

    def build(self, model: str, weights: str, height: int, width: int, shape_only: bool = False) -> StableDiffusion:
        """The three models for one image size. `shape_only`: zeros instead of weights, for
        tracing programs whose weights are arguments (snapshot.py)."""
        wrapper_cls, text_cls, unet_cls = _ARCH[model]
        pretrained = weights == "pretrained" and not shape_only
        paths = self.cache.require(model) if pretrained else {}  # missing weights: say so at once
        # Random initialisation of 1 G parameters is a quarter of a warm worker's start-up
        # (docs/benchmarks.md); pretrained weights overwrite every variable anyway.
        init = _zeros_init() if pretrained or shape_only else contextlib.nullcontext()
        with _quiet(), init:
            sd = wrapper_cls(img_height=height, img_width=width, jit_compile=self.jit)
            text_encoder = text_cls(MAX_PROMPT_LENGTH, download_weights=False)
            unet = unet_cls(height, width, MAX_PROMPT_LENGTH, download_weights=False)
            decoder = Decoder(height, width, download_weights=False)
        if pretrained:
            # the verified files, straight to keras' HDF5 loader: never through get_file
            names = [wf.name for wf in FILES[model]]
            text_encoder.load_weights(str(paths[names[1]]))
            unet.load_weights(str(paths[names[2]]))
            decoder.load_weights(str(paths[names[3]]))
        if self.attention == "fused":
            use_fused_attention(unet)
        if self.jit:
            for m in (text_encoder, unet, decoder):
                m.compile(jit_compile=True)
        sd._text_encoder, sd._diffusion_model, sd._decoder = text_encoder, unet, decoder
        if not shape_only:
            sd._tokenizer = SimpleTokenizer(bpe_path=str(self.tokenizer_file(model, weights)))
        return sd

    def prepare(self, job: ImageJob) -> dict[str, float]:
        key = self._key(job)
        timings = {}
        if key not in self.models:
            t0 = time.perf_counter()
            self.models[key] = self.build(*key)
            sd = self.models[key]
            self.samplers[key] = FusedSampler(sd._diffusion_model, sd._decoder, self.jit)
            timings["model_build"] = round(time.perf_counter() - t0, 3)
        return dict(timings, **self._warm(key, job, bucket(self.chunk_size(job))))

    def _warm(self, key: tuple, job: ImageJob, size: int) -> dict[str, float]:
        timings = {}
        if key + (size,) not in self.warm:
            # One 1-step pass at this batch size traces/compiles everything it needs, so the
            # compile cost is reported apart from generation.
            t0 = time.perf_counter()
            self._run(key, job, [0] * size, steps=1)
            self.warm.add(key + (size,))
            timings["compile"] = round(time.perf_counter() - t0, 3)
        timings["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return timings

    # -- generating -------------------------------------------------------------------------
    def _run(self, key: tuple, job: ImageJob, seeds: list[int], steps: int, sampler: str | None = None) -> np.ndarray:
        sd = self.models[key]
        noise = initial_noise(seeds, job.height, job.width)
        try:
            with _quiet():
                context = sd.encode_text(job.prompt)
                if (sampler or self.sampler) == "stock":
                    return sd.generate_image(
                        context,
                        negative_prompt=job.negative_prompt or None,
                        batch_size=len(seeds),
                        num_steps=steps,
                        unconditional_guidance_scale=job.guidance,
                        diffusion_noise=noise,
                    )
                uncond = sd.encode_text(job.negative_prompt) if job.negative_prompt else sd._get_unconditional_context()
                return self.samplers[key](noise, context, uncond, steps, job.guidance)
        except ValueError as e:
            if "too long" in str(e):
                raise EngineError(
                    f"prompt is longer than {MAX_PROMPT_LENGTH} CLIP tokens: shorten it", transient=False
                ) from None
            raise

    def generate(self, job: ImageJob, images: Sequence[Seeded], sampler: str | None = None) -> list[Image.Image]:
        self.prepare(job)
        seeds = [spec.seed for spec in images]
        self._warm(self._key(job), job, bucket(len(seeds)))  # a last, smaller chunk
        padded = seeds + [seeds[-1]] * (bucket(len(seeds)) - len(seeds))
        pixels = self._run(self._key(job), job, padded, steps=job.steps, sampler=sampler)
        return [Image.fromarray(pixels[i]) for i in range(len(seeds))]
