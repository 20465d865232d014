"""The keras-cv engine on JAX, run from model snapshots (snapshot.py).

What a worker does for a job's (model, weights):
- a snapshot is on disk: load it (weights to the device, the programs from JAX's compile
  cache). keras and keras-cv are never imported.
- none yet, or a damaged one (set aside by snapshot.load): the first worker of the node to
  get the folder's lock builds the models with KerasCVEngine, writes the snapshot and loads
  it like everyone else; the others wait for it (defaults.SNAPSHOT_WAIT_SECONDS), then
  load it, or generate through keras if it is still being written.
- the snapshot lacks this image size or batch bucket: the first worker of the node to get
  that program file's lock builds zero-weight models of that size (only their shapes
  matter), exports the sampler for it and writes it; the others wait for it (as long),
  then load it, or export it for themselves, in memory, if it is still being written.
If a snapshot cannot be written (disk full, a program JAX cannot export), this worker
generates through KerasCVEngine's models instead and says so in its log; a sampler program
that cannot be written (read-only or full data directory) it exports for itself, in memory.

Chosen by `get_engine("keras-cv")` when KERAS_BACKEND=jax and the fused sampler is on;
SDGEN_SNAPSHOT=off turns it off.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from sdgen.engine import settings, snapshot
from sdgen.engine.base import Engine, ImageJob, Seeded
from sdgen.engine.batching import bucket, chunk_for, jax_memory_gib
from sdgen.engine.diffusion import initial_noise, to_pixels
from sdgen.engine.tokenizer import CONTEXT_LENGTH
from sdgen.exceptions import EngineError

log = logging.getLogger(__name__)


class ExportedEngine(Engine):
    name = "keras-cv"

    def __init__(self, data_root: Path | str = "data", precision: str | None = None):
        self.data_root = Path(data_root or "data")
        self.device = "gpu" if jax.devices()[0].platform == "gpu" else "cpu"
        self.precision = settings.precision(self.device == "gpu", precision)
        self.attention = settings.attention()
        self.group_images = settings.group_images(16 if self.device == "gpu" else 1)
        self.compile_cache = snapshot.enable_compile_cache(self.data_root)
        self.root = self.data_root / "cache" / "snapshots"
        self.snapshots: dict[tuple, snapshot.Snapshot] = {}
        self.fallback: set[tuple] = set()  # keys this worker runs through keras (no snapshot)
        self.builder = None  # a KerasCVEngine, made only when something must be built
        self.shapes: dict[tuple, object] = {}  # zero-weight models, for exporting samplers
        self.warm: set[tuple] = set()
        self.last_snapshot: str | None = None
        self._versions: dict | None = None

    def describe(self) -> dict:
        if self._versions is None:  # package metadata lookups: once, not per job
            self._versions = snapshot.versions()
        ident = self._versions
        return {
            "engine": self.name,
            "backend": "jax",
            "precision": self.precision,
            "jit": True,
            "device": self.device,
            "sampler": "fused",
            "attention": self.attention,
            "keras": ident["keras"],
            "keras_cv": ident["keras_cv"],
            "snapshot": self.last_snapshot,
        }

    def gpu_memory_gib(self) -> float | None:
        return jax_memory_gib() if self.device == "gpu" else None

    def chunk_size(self, job: ImageJob) -> int:
        return chunk_for(len(job.images), job.height, job.width, self.gpu_memory_gib(), self.precision)

    # -- snapshots --------------------------------------------------------------------------
    def _builder(self):
        if self.builder is None:
            from sdgen.engine.kerascv import KerasCVEngine  # keras and keras-cv: seconds

            self.builder = KerasCVEngine(self.data_root, precision=self.precision, sampler="fused")
        return self.builder

    def _snapshot(self, job: ImageJob, timings: dict) -> snapshot.Snapshot | None:
        key = (job.model, job.weights)
        if key in self.snapshots or key in self.fallback:
            return self.snapshots.get(key)
        ident = snapshot.identity(*key, self.precision, self.attention)
        folder = snapshot.folder_for(self.root, ident)
        t0 = time.perf_counter()
        snap = self._load(key, folder)
        if snap is None and key not in self.fallback:  # none yet, or damaged and set aside
            t0 = time.perf_counter()
            # one worker of the node builds and writes; the others wait for it here
            try:
                state = snapshot.ensure(folder, lambda: self._write_snapshot(job, ident))
            except OSError as e:  # no cache folder or lock file possible (read-only, full): keras still works
                log.warning("snapshot %s could not be written (%s); generating through keras-cv", folder.name, e)
                self.fallback.add(key)
                return None
            if key in self.fallback:  # the write failed, and said why
                return None
            if state == "busy":
                log.warning(
                    "another worker is still writing snapshot %s; generating through keras-cv meanwhile", folder.name
                )
                self.fallback.add(key)
                return None
            if state == "written":
                timings["snapshot_write"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            snap = self._load(key, folder)
        if snap is None:
            if key not in self.fallback:
                log.warning("snapshot %s is still not loadable; generating through keras-cv", folder.name)
                self.fallback.add(key)
            return None
        timings["snapshot_load"] = round(time.perf_counter() - t0, 3)
        self.snapshots[key] = snap
        self.last_snapshot = folder.name
        return snap

    def _load(self, key: tuple, folder: Path) -> snapshot.Snapshot | None:
        try:
            return snapshot.load(folder)[1]
        except Exception as e:  # noqa: BLE001 - out of memory, I/O errors: keras may still work
            log.warning("snapshot %s could not be loaded (%s); generating through keras-cv", folder.name, e)
            self.fallback.add(key)
            return None

    def _write_snapshot(self, job: ImageJob, ident: dict) -> bool:
        builder = self._builder()
        key = builder._key(job)
        if key not in builder.models:
            builder.models[key] = builder.build(*key)
        sd = builder.models[key]
        from keras_cv.src.models.stable_diffusion.constants import _UNCONDITIONAL_TOKENS

        from sdgen.engine.sampler import ALPHAS_CUMPROD

        models = {"text_encoder": sd._text_encoder, "unet": sd._diffusion_model, "decoder": sd._decoder}
        try:
            snapshot.write(
                self.root,
                ident,
                models,
                builder.tokenizer_file(job.model, job.weights),
                _UNCONDITIONAL_TOKENS,
                ALPHAS_CUMPROD,
            )
        except Exception as e:  # noqa: BLE001 - disk full, export refused: keras still works
            log.warning(
                "snapshot %s could not be written (%s); generating through keras-cv",
                snapshot.folder_for(self.root, ident).name,
                e,
            )
            self.fallback.add((job.model, job.weights))
            return False
        # kept to export this size's samplers (their weights are arguments, so these serve
        # as well as zero-weight ones): a worker that builds pays ~2 GB of device memory
        self.shapes[key] = sd
        del builder.models[key]
        return True

    def _export_sampler(self, snap: snapshot.Snapshot, job: ImageJob, size: int) -> bytes:
        key = (job.model, job.weights, job.height, job.width)
        if key not in self.shapes:
            self.shapes[key] = self._builder().build(*key, shape_only=True)
        sd = self.shapes[key]
        return snapshot.export_sampler(
            sd._diffusion_model, sd._decoder, job.height, job.width, size, snap.unconditional
        )

    def _sampler_ready(self, snap: snapshot.Snapshot, job: ImageJob, size: int, timings: dict) -> None:
        height, width = job.height, job.width
        if snap.has_sampler(height, width, size):
            return
        t0 = time.perf_counter()
        program: list[bytes] = []  # this worker's own export, if it made one

        def write() -> None:
            program.append(self._export_sampler(snap, job, size))
            snapshot.publish_sampler(snap.folder, height, width, size, program[0])

        name = snapshot.sampler_file(snap.folder, height, width, size).name
        try:
            # one worker of the node exports each program; the others wait for it here
            state = snapshot.ensure_sampler(snap.folder, height, width, size, write)
        except OSError as e:  # no lock or program file possible (read-only, full, folder set aside)
            log.warning("%s could not be written to snapshot %s (%s); exporting it for this worker", name, snap.name, e)
            state = "unwritable"
        if state == "busy":
            log.warning(
                "another worker is still exporting %s of snapshot %s; exporting it for this worker meanwhile",
                name,
                snap.name,
            )
        if program:  # exported here: written, or not writable
            snap.add_sampler(height, width, size, program[0])
        elif state == "present" and snap.has_sampler(height, width, size):
            return  # another worker's, loaded
        else:  # busy, unwritable, or what another worker wrote cannot be read
            snap.add_sampler(height, width, size, self._export_sampler(snap, job, size))
        timings["export"] = round(time.perf_counter() - t0, 3)

    # -- generating -------------------------------------------------------------------------
    def prepare(self, job: ImageJob) -> dict[str, float]:
        timings: dict[str, float] = {}
        snap = self._snapshot(job, timings)
        if snap is None:
            return dict(timings, **self._builder().prepare(job))
        size = bucket(self.chunk_size(job))
        timings.update(self._warm(snap, job, size))
        return timings

    def _warm(self, snap: snapshot.Snapshot, job: ImageJob, size: int) -> dict[str, float]:
        timings: dict[str, float] = {}
        if (snap.name, job.height, job.width, size) not in self.warm:
            self._sampler_ready(snap, job, size, timings)
            t0 = time.perf_counter()
            self._pixels(snap, job, [0] * size, steps=1)  # compiles, or loads from the cache
            self.warm.add((snap.name, job.height, job.width, size))
            timings["compile"] = round(time.perf_counter() - t0, 3)
        timings["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return timings

    def _contexts(self, snap: snapshot.Snapshot, job: ImageJob):
        try:
            context = snap.encode(job.prompt)
            uncond = snap.encode(job.negative_prompt) if job.negative_prompt else snap.unconditional
        except ValueError as e:
            if "too long" in str(e):
                raise EngineError(
                    f"prompt is longer than {CONTEXT_LENGTH} CLIP tokens: shorten it", transient=False
                ) from None
            raise
        return context, uncond

    def _pixels(
        self, snap: snapshot.Snapshot, job: ImageJob, seeds: list[int], steps: int, contexts=None
    ) -> np.ndarray:
        context, uncond = contexts or self._contexts(snap, job)
        noise = initial_noise(seeds, job.height, job.width)
        return to_pixels(snap.sample(noise, context, uncond, steps, job.guidance))

    def generate(self, job: ImageJob, images: Sequence[Seeded]) -> list[Image.Image]:
        return self.generate_group([(job, images)])[0]

    def group_limit(self, job: ImageJob) -> int:
        """A GPU makes 2.5 images/s one at a time and 4.6 in batches of 16 (H100): small
        jobs of one request are worth running together up to that, within memory."""
        fit = chunk_for(64, job.height, job.width, self.gpu_memory_gib(), self.precision)
        return min(fit, self.group_images)

    def generate_group(self, items) -> list[list[Image.Image]]:
        """All items' images as one batch (padded to a bucket): each image with its own
        job's prompt and its own seed. Items are jobs of one request, so model, size,
        steps, guidance and negative prompt are shared."""
        first = items[0][0]
        snap = self._snapshot(first, {})  # loaded by prepare() already, normally
        if snap is None:
            return [self._builder().generate(job, specs) for job, specs in items]
        seeds, contexts, unconds = [], [], []
        for job, specs in items:
            context, uncond = self._contexts(snap, job)
            seeds += [spec.seed for spec in specs]
            contexts += [context] * len(specs)
            unconds += [uncond] * len(specs)
        size = bucket(len(seeds))
        self._warm(snap, first, size)  # a last, smaller chunk
        pad = size - len(seeds)
        seeds, contexts, unconds = (
            seeds + seeds[-1:] * pad,
            contexts + contexts[-1:] * pad,
            unconds + unconds[-1:] * pad,
        )
        if all(c is contexts[0] for c in contexts) and all(u is unconds[0] for u in unconds):
            batch_contexts = (contexts[0], unconds[0])  # one prompt: let the program repeat it
        else:
            batch_contexts = (jax.numpy.concatenate(contexts), jax.numpy.concatenate(unconds))
        pixels = self._pixels(snap, first, seeds, first.steps, batch_contexts)
        out, i = [], 0
        for _, specs in items:
            out.append([Image.fromarray(pixels[j]) for j in range(i, i + len(specs))])
            i += len(specs)
        return out
