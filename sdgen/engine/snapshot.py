"""Model snapshots: what a new JAX worker needs to generate, without keras.

Building the keras-cv models is most of a new worker's start even when JAX's compilation
cache is warm: importing keras and keras-cv (5 s on an H100 node) and constructing 1 G
parameters' worth of layers in Python (9 s). The first worker on a data directory builds
them once and writes a snapshot; every later worker loads it:

    <data>/cache/snapshots/<model>-<weights>-<precision>-<hash>/
        meta.json        what it was made from (`identity`) and the few constants the
                         sampler needs (unconditional tokens, keras-cv's alpha table)
        weights.bin      every variable of the text encoder, UNet and decoder, raw, in the
                         dtype the model holds it (64-byte aligned, one after another)
        weights.json     where each variable is in weights.bin: part, kind, shape, dtype
        merges.txt.gz    the tokenizer's merges (tokenizer.py)
        encode.jaxexport the text encoder as a serialized JAX program (`jax.export`)
        sample-<H>x<W>-b<B>.jaxexport   the fused loop + decoder (sampler.py) for one image
                         size and batch bucket, added as workers first need them

The programs are the keras-cv models' own computation traced by JAX, with the weights as
arguments: same architecture, same weights, same outputs (tests/engine/test_exported.py).
The folder name hashes the model, weights, precision, attention, platform and the jax /
keras / keras-cv versions, so a snapshot is only ever used by the software that made it.
The folder appears whole (written under a temporary name, then renamed); a sampler file is
published with one rename. Nothing here imports keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from sdgen import settings
from sdgen.engine.diffusion import MAX_STEPS, schedule
from sdgen.engine.tokenizer import CONTEXT_LENGTH, ClipTokenizer
from sdgen.spool.publish import fsync_dir, publish

log = logging.getLogger(__name__)

FORMAT = 1
PARTS = ("text_encoder", "unet", "decoder")
_ALIGN = 64
_STALE_TMP_S = 3600
# The snapshot is only read on the node and software that wrote it (the folder name says
# so), so the custom calls JAX will not promise to keep stable across versions (cuDNN's
# fused attention) are fine to serialize.
_EXPORT_CHECKS = [jax.export.DisabledSafetyCheck.custom_call("ALL")]


def enable_compile_cache(data_root: Path) -> str | None:
    """JAX keeps compiled executables on disk, shared by every worker on the data dir."""
    folder = settings.get("SDGEN_COMPILE_CACHE")
    if folder is None:  # off
        return None
    folder = folder or str(Path(data_root) / "cache" / "jax")
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    # 0, not JAX's 1 s: building the models compiles hundreds of small initializer and
    # layer functions; each is quick, together they are most of a new worker's start
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def versions() -> dict:
    """The software and device a snapshot's programs are only valid for."""
    return {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "jaxlib": _version("jaxlib"), "keras": _version("keras"),
            "keras_cv": _version("keras-cv")}


def identity(model: str, weights: str, precision: str, attention: str) -> dict:
    return {"format": FORMAT, "model": model, "weights": weights, "precision": precision,
            "attention": attention, **versions()}


def folder_for(root: Path, ident: dict) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{ident['model']}-{ident['weights']}-{ident['precision']}-{digest}"


def sampler_file(folder: Path, height: int, width: int, batch: int) -> Path:
    return Path(folder) / f"sample-{height}x{width}-b{batch}.jaxexport"


def _spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def _export(fn, *args) -> bytes:
    exported = jax.export.export(jax.jit(fn), disabled_checks=_EXPORT_CHECKS)(*jax.tree.map(_spec, args))
    return bytes(exported.serialize())




# -- writing (the worker that built the keras models) ------------------------------------------

def encoder_program(text_encoder):
    def encode(variables, tokens, positions):
        return text_encoder.stateless_call(*variables, {"tokens": tokens, "positions": positions},
                                           training=False)[0]

    return encode


def write(root: Path, ident: dict, models: dict, merges: Path, unconditional_tokens, alphas_cumprod) -> Path:
    """Write the snapshot of `models` ({part: keras model}) unless one is there already;
    returns its folder. Several workers may race: the first rename wins, the rest discard
    theirs (for random weights they drew different numbers; all then use the winner's)."""
    folder = folder_for(root, ident)
    if (folder / "meta.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = root / f"tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        index, offset = {}, 0
        with open(tmp / "weights.bin", "wb") as out:
            for part in PARTS:
                index[part] = {}
                for kind, variables in (("trainable", models[part].trainable_variables),
                                        ("non_trainable", models[part].non_trainable_variables)):
                    entries = index[part][kind] = []
                    for v in variables:
                        array = np.ascontiguousarray(np.asarray(v.value))
                        out.write(b"\0" * (-offset % _ALIGN))
                        offset += -offset % _ALIGN
                        entries.append({"offset": offset, "shape": list(array.shape), "dtype": array.dtype.name})
                        out.write(array.tobytes())
                        offset += array.nbytes
            out.flush()
            os.fsync(out.fileno())  # the folder is renamed into place only with its weights on disk
        (tmp / "weights.json").write_text(json.dumps(index))
        shutil.copyfile(merges, tmp / "merges.txt.gz")
        variables = _variables_of(models["text_encoder"])
        tokens = np.zeros((1, CONTEXT_LENGTH), np.int32)
        (tmp / "encode.jaxexport").write_bytes(_export(encoder_program(models["text_encoder"]), variables, tokens, tokens))
        meta = {"identity": ident, "unconditional_tokens": [int(t) for t in unconditional_tokens],
                "alphas_cumprod": [float(a) for a in alphas_cumprod], "written_at": time.time(),
                "bytes": offset}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        fsync_dir(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
            log.info("another worker wrote snapshot %s first; using theirs", folder.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_sampler(folder: Path, unet, decoder, height: int, width: int, batch: int, context) -> Path:
    """Export the fused loop for one size and batch bucket from models of that size (their
    weights do not matter: they are arguments). `context`: an encoded prompt, for its
    shape and dtype."""
    from sdgen.engine.sampler import pure_sampler  # imports keras: only the building worker

    path = sampler_file(folder, height, width, batch)
    f32 = np.zeros((MAX_STEPS,), np.float32)
    context = jax.ShapeDtypeStruct((batch,) + tuple(context.shape[1:]), context.dtype)  # one per image
    args = (_variables_of(unet), _variables_of(decoder),
            jax.ShapeDtypeStruct((batch, height // 8, width // 8, 4), np.float32),
            context, context, np.int32(1), f32, f32, f32, np.float32(7.5))
    publish(path.parent, path, _export(pure_sampler(unet, decoder), *args))
    return path


def _variables_of(model) -> tuple[list, list]:
    return ([jax.ShapeDtypeStruct(v.shape, v.value.dtype) for v in model.trainable_variables],
            [jax.ShapeDtypeStruct(v.shape, v.value.dtype) for v in model.non_trainable_variables])


def _clean_stale(root: Path) -> None:
    """Temporary folders of workers that died while writing."""
    for tmp in root.glob("tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


# -- reading (every worker) -------------------------------------------------------------------

class Snapshot:
    """A loaded snapshot: weights on the device, tokenizer, programs compiled on first use."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.name = self.folder.name
        self.meta = json.loads((self.folder / "meta.json").read_text())
        index = json.loads((self.folder / "weights.json").read_text())
        size = (self.folder / "weights.bin").stat().st_size
        if size != self.meta["bytes"]:
            raise ValueError(f"weights.bin has {size} bytes, {self.meta['bytes']} written: damaged")
        raw = np.memmap(self.folder / "weights.bin", dtype=np.uint8, mode="r")
        host = {}
        for part in PARTS:
            host[part] = tuple(
                [raw[e["offset"]:e["offset"] + _nbytes(e)].view(_dtype(e["dtype"])).reshape(e["shape"])
                 for e in index[part][kind]]
                for kind in ("trainable", "non_trainable"))
        self.variables = jax.device_put(host)  # one transfer call for all ~1,000 arrays
        self.tokenizer = ClipTokenizer(self.folder / "merges.txt.gz")
        self._encode = self._load(self.folder / "encode.jaxexport")
        self._samplers: dict[tuple, object] = {}
        self.positions = np.arange(CONTEXT_LENGTH, dtype=np.int32)[None]
        self.unconditional = self._encode(self.variables["text_encoder"],
                                          np.asarray([self.meta["unconditional_tokens"]], np.int32), self.positions)

    @staticmethod
    def _load(path: Path):
        return jax.jit(jax.export.deserialize(bytearray(path.read_bytes())).call)

    def has_sampler(self, height: int, width: int, batch: int) -> bool:
        return (height, width, batch) in self._samplers or sampler_file(self.folder, height, width, batch).exists()

    def encode(self, prompt: str):
        return self._encode(self.variables["text_encoder"], np.asarray([self.tokenizer.phrase(prompt)], np.int32),
                            self.positions)

    def sample(self, latent: np.ndarray, context, uncond, num_steps: int, guidance: float):
        """Decoded images in [-1, 1] (on the device) for a batch of starting latents;
        `context` and `uncond`: one encoded prompt for all, or one per image."""
        batch, h, w, _ = latent.shape
        context, uncond = (c if c.shape[0] == batch else jax.numpy.repeat(c, batch, axis=0) for c in (context, uncond))
        key = (h * 8, w * 8, batch)
        if key not in self._samplers:
            self._samplers[key] = self._load(sampler_file(self.folder, *key))
        timesteps, alphas, alphas_prev = schedule(num_steps, self.meta["alphas_cumprod"])
        return self._samplers[key](self.variables["unet"], self.variables["decoder"], latent, context, uncond,
                                   np.int32(num_steps), timesteps, alphas, alphas_prev, np.float32(guidance))


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(jax.numpy, name)) if name == "bfloat16" else np.dtype(name)


def _nbytes(entry: dict) -> int:
    return int(np.prod(entry["shape"], dtype=np.int64)) * _dtype(entry["dtype"]).itemsize

