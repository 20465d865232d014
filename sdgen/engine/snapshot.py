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
        sample-<H>x<W>-b<B>.jaxexport.lock   held by the one worker exporting that program

        last-used        touched by every worker that loads it (`sdgen cache` reads it)

The programs are the keras-cv models' own computation traced by JAX, with the weights as
arguments: same architecture, same weights, same outputs (tests/engine/test_exported.py).
The folder name hashes the model, weights, precision, attention, platform, the jax /
jaxlib / keras / keras-cv / CUDA plugin / cuDNN versions and the content of sdgen's own
source files whose code is traced into the programs (`TRACED_SOURCES`), so a snapshot is
only ever used by the software that made it: edit the sampler and the next worker builds
a new one (`sdgen cache prune` removes the old).

Life cycle. The folder appears whole (written under a temporary name, then renamed); a
sampler file is published with one rename. One worker per node writes a folder, holding
`<folder>.lock` next to it (`ensure`); the others wait for it, up to
defaults.SNAPSHOT_WAIT_SECONDS, then generate through keras meanwhile. Likewise one worker
exports each sampler program, holding `<program file>.lock` in the folder
(`ensure_sampler`); the others wait as long for it, then load it, or export it for
themselves, in memory, if it is still being written or cannot be. A folder that is
damaged (a file missing, weights.bin of the wrong size, a program JAX cannot read) is
renamed aside once, to `<folder>.damaged-<time>`, and rebuilt like a missing one (`load`).
Nothing here imports keras.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from filelock import FileLock, Timeout

from sdgen import defaults, settings
from sdgen.engine.diffusion import MAX_STEPS, schedule
from sdgen.engine.tokenizer import CONTEXT_LENGTH, ClipTokenizer
from sdgen.fsutil import atomic_write, fsync_dir

log = logging.getLogger(__name__)

FORMAT = 1
PARTS = ("text_encoder", "unet", "decoder")
_ALIGN = 64
# The snapshot is only read on the node and software that wrote it (the folder name says
# so), so the custom calls JAX will not promise to keep stable across versions (cuDNN's
# fused attention) are fine to serialize.
_EXPORT_CHECKS = [jax.export.DisabledSafetyCheck.custom_call("ALL")]

_SDGEN = Path(__file__).resolve().parents[1]
# sdgen's files whose code ends up in a snapshot, hashed into its identity: the traced
# computation (sampler, attention, diffusion's schedule), how the models are built and
# loaded (kerascv: dtype policy, attention patch; weights: which checkpoint files),
# how they are exported and called (snapshot, exported) and the token shapes the encoder
# program is traced for (tokenizer). Not batching.py: its memory model picks batch sizes,
# and a batch size is in the sampler file's name already.
TRACED_SOURCES = tuple(
    _SDGEN / "engine" / name
    for name in (
        "sampler.py",
        "attention.py",
        "diffusion.py",
        "kerascv.py",
        "weights.py",
        "snapshot.py",
        "exported.py",
        "tokenizer.py",
    )
)
# The software outside sdgen whose version changes the programs or how they run. The CUDA
# plugin and cuDNN come as pip packages with JAX's cuda12 extra; without them: "none".
PACKAGES = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "keras": "keras",
    "keras_cv": "keras-cv",
    # Each CUDA major has its own package names (cuda12, cuda13...): the first installed
    # one is recorded (a CUDA 13 node recorded "none" for all three with cuda12 names only).
    "cuda_plugin": ("jax-cuda13-plugin", "jax-cuda12-plugin"),
    "cuda_pjrt": ("jax-cuda13-pjrt", "jax-cuda12-pjrt"),
    "cudnn": ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12"),
}
LAST_USED = "last-used"
DAMAGED = ".damaged-"  # <folder>.damaged-<time>: set aside by `load`, removed by `sdgen cache prune`
LOCK = ".lock"  # <folder>.lock: held by the one worker writing that folder
_FILES = ("meta.json", "weights.json", "weights.bin", "merges.txt.gz", "encode.jaxexport")


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


def _version(package: str | tuple[str, ...]) -> str:
    """The installed version of `package`, or of the first installed of several names
    (`name==version`, except the last name's: a bare version, as before the others were
    added, so that existing snapshots keep their identity), else "none"."""
    names = (package,) if isinstance(package, str) else package
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return version if name == names[-1] else f"{name}=={version}"
    return "none"


def sources_digest(files=None) -> str:
    """One hash of the content of every traced source file (a missing one counts as such)."""
    h = hashlib.sha256()
    for path in TRACED_SOURCES if files is None else files:
        path = Path(path)
        h.update(path.name.encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except FileNotFoundError:
            h.update(b"\0missing")
        h.update(b"\0")
    return h.hexdigest()[:16]


def software() -> dict:
    """What a snapshot's programs depend on besides the device: package versions and
    sdgen's traced sources. The same on every machine of one install, so `sdgen cache`
    can tell current snapshots from old ones without a GPU."""
    return {**{key: _version(package) for key, package in PACKAGES.items()}, "sources": sources_digest()}


def versions() -> dict:
    """The software and device a snapshot's programs are only valid for."""
    return {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind, **software()}


def identity(model: str, weights: str, precision: str, attention: str) -> dict:
    return {
        "format": FORMAT,
        "model": model,
        "weights": weights,
        "precision": precision,
        "attention": attention,
        **versions(),
    }


def is_current(ident: dict, now: dict | None = None) -> bool:
    """Whether a snapshot made with `ident` is one the installed software would make (on
    the device it was made for)."""
    now = software() if now is None else now
    return ident.get("format") == FORMAT and all(ident.get(key) == value for key, value in now.items())


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
        return text_encoder.stateless_call(*variables, {"tokens": tokens, "positions": positions}, training=False)[0]

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
                for kind, variables in (
                    ("trainable", models[part].trainable_variables),
                    ("non_trainable", models[part].non_trainable_variables),
                ):
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
        (tmp / "encode.jaxexport").write_bytes(
            _export(encoder_program(models["text_encoder"]), variables, tokens, tokens)
        )
        meta = {
            "identity": ident,
            "unconditional_tokens": [int(t) for t in unconditional_tokens],
            "alphas_cumprod": [float(a) for a in alphas_cumprod],
            "written_at": time.time(),
            "bytes": offset,
        }
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


def export_sampler(unet, decoder, height: int, width: int, batch: int, context) -> bytes:
    """The fused loop for one size and batch bucket, serialized, from models of that size
    (their weights do not matter: they are arguments). `context`: an encoded prompt, for
    its shape and dtype."""
    from sdgen.engine.sampler import pure_sampler  # imports keras: only the building worker

    f32 = np.zeros((MAX_STEPS,), np.float32)
    context = jax.ShapeDtypeStruct((batch,) + tuple(context.shape[1:]), context.dtype)  # one per image
    args = (
        _variables_of(unet),
        _variables_of(decoder),
        jax.ShapeDtypeStruct((batch, height // 8, width // 8, 4), np.float32),
        context,
        context,
        np.int32(1),
        f32,
        f32,
        f32,
        np.float32(7.5),
    )
    return _export(pure_sampler(unet, decoder), *args)


def publish_sampler(folder: Path, height: int, width: int, batch: int, program: bytes) -> Path:
    """Put an exported sampler program in the folder: written beside it, then renamed, so a
    reader sees all of it or none. Called under the program's lock (`ensure_sampler`), so
    temporary files of its name old enough to be a dead writer's are removed first."""
    path = sampler_file(folder, height, width, batch)
    for tmp in path.parent.glob(f"{path.name}.*.part"):  # fsutil.atomic_write's temporary names
        try:
            if time.time() - tmp.stat().st_mtime > defaults.SNAPSHOT_STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass
    atomic_write(path.parent, path, program)
    return path


def _variables_of(model) -> tuple[list, list]:
    return (
        [jax.ShapeDtypeStruct(v.shape, v.value.dtype) for v in model.trainable_variables],
        [jax.ShapeDtypeStruct(v.shape, v.value.dtype) for v in model.non_trainable_variables],
    )


def _clean_stale(root: Path) -> None:
    """Temporary folders of workers that died while writing."""
    for tmp in root.glob("tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > defaults.SNAPSHOT_STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


# -- life cycle: one writer per folder, damaged folders set aside -----------------------------


class Damaged(Exception):
    """A snapshot folder that can never load: a file missing or cut short, a program JAX
    cannot read. (Running out of memory while loading is not damage.)"""


def lock_path(folder: Path) -> Path:
    """`<folder>.lock`, or `<file>.lock` for a sampler program file."""
    return Path(folder).with_name(Path(folder).name + LOCK)


def _write_once(lock_file: Path, present: Callable[[], bool], write: Callable[[], object], wait_s) -> str:
    """`write()` under `lock_file` unless `present()` says, once the lock is held, that
    another worker has written it: "present", "written" or "busy" (the lock not had in
    `wait_s`). OSError when the lock file cannot be created (read-only, full)."""
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=defaults.SNAPSHOT_WAIT_SECONDS if wait_s is None else wait_s)
    except Timeout:
        return "busy"
    try:
        if present():
            return "present"
        write()
        return "written"
    finally:
        lock.release()


def ensure(folder: Path, write: Callable[[], object], wait_s: float | None = None) -> str:
    """Make sure `folder` holds a snapshot, writing it with `write()` if this worker is the
    first of its node to get the folder's lock. Returns "present" (there already, or
    written by another worker while this one waited), "written" (by `write`), or "busy":
    another worker has held the lock for `wait_s` (default defaults.SNAPSHOT_WAIT_SECONDS)
    and this one should generate some other way meanwhile. Errors of `write` propagate;
    the lock is released whatever happens (the OS releases it if the process dies)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return _write_once(lock_path(folder), (folder / "meta.json").exists, write, wait_s)


def ensure_sampler(
    folder: Path, height: int, width: int, batch: int, write: Callable[[], object], wait_s: float | None = None
) -> str:
    """`ensure` for one sampler program of a loaded snapshot: `write()` exports and
    publishes it (`publish_sampler`) if this worker is the first to get the program file's
    lock. "present" (written meanwhile by another worker: load it), "written", or "busy"
    (the lock held for `wait_s`, default defaults.SNAPSHOT_WAIT_SECONDS: export it for this
    worker only). OSError when the lock file cannot be created (read-only, full data dir),
    FileNotFoundError when the folder is gone (set aside as damaged, pruned): then too the
    caller exports for itself and writes nothing.

    One lock per program file, not the folder's: workers needing different sizes or
    buckets export theirs at once instead of one after another (an export builds models of
    that size and traces the whole loop), and an export never holds up `set_aside` or
    `sdgen cache prune`, which take the folder's lock. The lock file lives in the folder,
    so it goes with it (set aside, pruned) instead of piling up next to the folders."""
    folder = Path(folder)
    path = sampler_file(folder, height, width, batch)

    def present() -> bool:
        if not (folder / "meta.json").exists():
            raise FileNotFoundError(errno.ENOENT, "snapshot folder gone (set aside or removed)", str(folder))
        return path.exists()

    # checked before locking too: filelock creates a lock file's missing folder, and a new
    # empty folder where a snapshot was would read as a damaged snapshot
    if present():
        return "present"
    return _write_once(lock_path(path), present, write, wait_s)


def check(folder: Path) -> tuple[dict, dict, object, ClipTokenizer]:
    """meta.json, weights.json, the deserialized encoder program and the tokenizer of an
    intact snapshot folder, or Damaged saying what is wrong. Reads no weights."""
    folder = Path(folder)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise Damaged(f"{', '.join(missing)} missing")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        index = json.loads((folder / "weights.json").read_text())
        expected = int(meta["bytes"])
        entries = [e for part in PARTS for kind in ("trainable", "non_trainable") for e in index[part][kind]]
        end = max((int(e["offset"]) + _nbytes(e) for e in entries), default=0)
    except (ValueError, KeyError, TypeError) as e:  # JSON cut short or edited
        raise Damaged(f"meta.json or weights.json unreadable ({type(e).__name__}: {e})") from None
    size = (folder / "weights.bin").stat().st_size
    if size != expected or end > size:
        raise Damaged(f"weights.bin has {size} bytes, {expected} written")
    program = _program(folder / "encode.jaxexport")
    try:
        tokenizer = ClipTokenizer(folder / "merges.txt.gz")
    except (OSError, EOFError, ValueError) as e:  # gzip cut short or not gzip
        raise Damaged(f"merges.txt.gz unreadable ({type(e).__name__})") from None
    return meta, index, program, tokenizer


def _program(path: Path):
    try:
        return jax.export.deserialize(bytearray(path.read_bytes()))
    except FileNotFoundError:
        raise Damaged(f"{path.name} missing") from None
    except Exception as e:  # noqa: BLE001 - flatbuffers and MLIR raise what they like for bad bytes
        raise Damaged(f"{path.name} cannot be read by JAX ({type(e).__name__})") from None


def set_aside(folder: Path, wait_s: float | None = None) -> Path | None:
    """Rename a damaged folder to <folder>.damaged-<time> (once: under the folder's lock,
    and only if it is still damaged, so a folder another worker has just rebuilt stays).
    Returns the new name, or None when it was left (rebuilt meanwhile, gone, or its lock
    busy: a worker is writing it)."""
    folder = Path(folder)
    lock = FileLock(str(lock_path(folder)))
    try:
        lock.acquire(timeout=defaults.SNAPSHOT_WAIT_SECONDS if wait_s is None else wait_s)
    except Timeout:
        return None
    try:
        if not folder.exists():
            return None
        try:
            check(folder)
            return None  # rebuilt by another worker since this one looked
        except Damaged:
            pass
        aside = folder.with_name(f"{folder.name}{DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.rename(folder, aside)
        return aside
    finally:
        lock.release()


def load(folder: Path, wait_s: float | None = None) -> tuple[str, "Snapshot | None"]:
    """("loaded", snapshot); ("missing", None): none written yet; ("rebuild", None): it was
    damaged and is set aside (or being rebuilt): write a new one with `ensure`. Other errors
    (out of device memory) propagate and leave the folder as it is."""
    folder = Path(folder)
    if not folder.exists():
        return "missing", None
    try:
        return "loaded", Snapshot(folder)
    except Damaged as e:
        aside = set_aside(folder, wait_s)
        log.warning(
            "snapshot %s is damaged (%s)%s; one worker rebuilds it",
            folder.name,
            e,
            f": moved to {aside.name}" if aside else "",
        )
        return "rebuild", None


# -- reading (every worker) -------------------------------------------------------------------


class Snapshot:
    """A loaded snapshot: weights on the device, tokenizer, programs compiled on first use."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.name = self.folder.name
        self.meta, index, encode, self.tokenizer = check(self.folder)  # Damaged before any device memory is used
        raw = (
            np.memmap(self.folder / "weights.bin", dtype=np.uint8, mode="r")
            if self.meta["bytes"]
            else np.zeros(0, np.uint8)
        )  # numpy cannot map an empty file
        host = {}
        for part in PARTS:
            host[part] = tuple(
                [
                    raw[e["offset"] : e["offset"] + _nbytes(e)].view(_dtype(e["dtype"])).reshape(e["shape"])
                    for e in index[part][kind]
                ]
                for kind in ("trainable", "non_trainable")
            )
        self.variables = jax.device_put(host)  # one transfer call for all ~1,000 arrays
        self._encode = jax.jit(encode.call)
        self._samplers: dict[tuple, object] = {}
        self.positions = np.arange(CONTEXT_LENGTH, dtype=np.int32)[None]
        self.unconditional = self._encode(
            self.variables["text_encoder"], np.asarray([self.meta["unconditional_tokens"]], np.int32), self.positions
        )
        self.touch()

    def touch(self) -> None:
        """Stamp the folder as used now, for `sdgen cache` (its files' own times are those of
        the write: loading reads them through a memory map, which need not update atime)."""
        try:
            (self.folder / LAST_USED).touch()
        except OSError as e:  # a read-only cache still generates
            log.debug("could not stamp %s as used: %s", self.folder.name, e)

    def has_sampler(self, height: int, width: int, batch: int) -> bool:
        """Whether the program for this size and bucket is loaded or loads now. A sampler
        file JAX cannot read is renamed aside (<file>.damaged-<time>): False, so that the
        caller exports it again."""
        key = (height, width, batch)
        if key in self._samplers:
            return True
        path = sampler_file(self.folder, height, width, batch)
        if not path.exists():
            return False
        try:
            self._samplers[key] = jax.jit(_program(path).call)
            return True
        except Damaged as e:
            log.warning("snapshot %s: %s; exporting it again", self.name, e)
            try:
                os.rename(path, path.with_name(f"{path.name}{DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"))
            except FileNotFoundError:
                pass  # another worker set it aside first
            except OSError as e:  # a read-only cache: the caller exports it for itself
                log.debug("could not set %s aside: %s", path.name, e)
            return False

    def add_sampler(self, height: int, width: int, batch: int, program: bytes) -> None:
        """Use a sampler program this worker exported itself (whether or not it is on disk)."""
        self._samplers[(height, width, batch)] = jax.jit(jax.export.deserialize(bytearray(program)).call)

    def encode(self, prompt: str):
        return self._encode(
            self.variables["text_encoder"], np.asarray([self.tokenizer.phrase(prompt)], np.int32), self.positions
        )

    def sample(self, latent: np.ndarray, context, uncond, num_steps: int, guidance: float):
        """Decoded images in [-1, 1] (on the device) for a batch of starting latents;
        `context` and `uncond`: one encoded prompt for all, or one per image."""
        batch, h, w, _ = latent.shape
        context, uncond = (c if c.shape[0] == batch else jax.numpy.repeat(c, batch, axis=0) for c in (context, uncond))
        key = (h * 8, w * 8, batch)
        if key not in self._samplers and not self.has_sampler(*key):
            raise FileNotFoundError(f"{sampler_file(self.folder, *key).name} missing: export it first")
        timesteps, alphas, alphas_prev = schedule(num_steps, self.meta["alphas_cumprod"])
        return self._samplers[key](
            self.variables["unet"],
            self.variables["decoder"],
            latent,
            context,
            uncond,
            np.int32(num_steps),
            timesteps,
            alphas,
            alphas_prev,
            np.float32(guidance),
        )


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(jax.numpy, name)) if name == "bfloat16" else np.dtype(name)


def _nbytes(entry: dict) -> int:
    return int(np.prod(entry["shape"], dtype=np.int64)) * _dtype(entry["dtype"]).itemsize
