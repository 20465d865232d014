"""Snapshot life cycle, on small fake folders (no model): the identity follows sdgen's traced
sources and the CUDA packages, damaged folders are set aside and reported for rebuilding,
one process of many racing for a folder's lock writes it."""

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from filelock import FileLock  # noqa: E402

from sdgen.engine import snapshot  # noqa: E402
from sdgen.engine.tokenizer import CONTEXT_LENGTH  # noqa: E402
from sdgen.engine.weights import random_tokenizer_file  # noqa: E402

# -- identity ---------------------------------------------------------------------------------


def test_the_traced_sources_are_hashed_and_exist():
    names = {p.name for p in snapshot.TRACED_SOURCES}
    assert {"sampler.py", "attention.py", "diffusion.py", "exported.py", "snapshot.py", "tokenizer.py"} <= names
    assert all(p.is_file() for p in snapshot.TRACED_SOURCES)
    ident = snapshot.identity("sd-v1", "random", "float32", "fused")
    for key in ("jaxlib", "cuda_plugin", "cuda_pjrt", "cudnn", "sources"):
        assert ident[key]  # a version, or "none" where the package is not installed


def test_the_identity_changes_with_a_traced_file_and_is_stable_otherwise(tmp_path, monkeypatch):
    sampler = tmp_path / "sampler.py"
    sampler.write_text(snapshot.TRACED_SOURCES[0].read_text())
    monkeypatch.setattr(snapshot, "TRACED_SOURCES", (sampler, tmp_path / "attention.py"))
    (tmp_path / "attention.py").write_text("x = 1\n")

    def name():
        return snapshot.folder_for(tmp_path, snapshot.identity("sd-v1", "random", "float32", "fused")).name

    first = name()
    assert name() == first
    sampler.write_text(sampler.read_text() + "\n# one more line\n")
    edited = name()
    assert edited != first
    (tmp_path / "attention.py").unlink()  # a missing file counts too
    assert name() not in (first, edited)


def test_the_identity_changes_with_the_cuda_packages(tmp_path, monkeypatch):
    base = snapshot.identity("sd-v1", "random", "bfloat16", "fused")
    seen = {snapshot.folder_for(tmp_path, base).name}
    real = snapshot._version
    for package in ("jaxlib", "jax-cuda12-plugin", "nvidia-cudnn-cu12"):
        monkeypatch.setattr(
            snapshot,
            "_version",
            lambda p, package=package: "99.0" if package in ((p,) if isinstance(p, str) else p) else real(p),
        )
        seen.add(snapshot.folder_for(tmp_path, snapshot.identity("sd-v1", "random", "bfloat16", "fused")).name)
    assert len(seen) == 4


def test_is_current_compares_the_software_not_the_device():
    ident = dict(snapshot.identity("sd-v1", "random", "float32", "fused"), platform="gpu", device_kind="H200")
    assert snapshot.is_current(ident)
    assert not snapshot.is_current(dict(ident, sources="0" * 16))
    assert not snapshot.is_current(dict(ident, format=snapshot.FORMAT + 1))


# -- a small fake snapshot --------------------------------------------------------------------


def fake_snapshot(folder: Path) -> Path:
    """A snapshot folder with one 4-float weight and an encoder program that ignores it."""
    folder.mkdir(parents=True)
    weights = np.arange(4, dtype=np.float32)
    (folder / "weights.bin").write_bytes(weights.tobytes())
    index = {part: {"trainable": [], "non_trainable": []} for part in snapshot.PARTS}
    index["text_encoder"]["trainable"] = [{"offset": 0, "shape": [4], "dtype": "float32"}]
    (folder / "weights.json").write_text(json.dumps(index))
    (folder / "merges.txt.gz").write_bytes(random_tokenizer_file(folder.parent / "bpe").read_bytes())

    def encode(variables, tokens, positions):
        return jax.numpy.zeros((tokens.shape[0], CONTEXT_LENGTH, 8)) + variables[0][0][0] + positions[0, 0]

    tokens = np.zeros((1, CONTEXT_LENGTH), np.int32)
    (folder / "encode.jaxexport").write_bytes(snapshot._export(encode, ([weights], []), tokens, tokens))
    meta = {
        "identity": {"model": "sd-v1"},
        "unconditional_tokens": [49406] + [49407] * (CONTEXT_LENGTH - 1),
        "alphas_cumprod": [0.5],
        "written_at": time.time(),
        "bytes": weights.nbytes,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return fake_snapshot(tmp_path / "snapshots" / "sd-v1-random-float32-abc")


def test_an_intact_snapshot_loads_and_is_stamped_as_used(folder):
    state, snap = snapshot.load(folder)
    assert state == "loaded" and snap.unconditional.shape == (1, CONTEXT_LENGTH, 8)
    assert snap.encode("a lighthouse").shape == (1, CONTEXT_LENGTH, 8)
    assert (folder / snapshot.LAST_USED).exists()


def test_no_folder_is_missing_not_damaged(tmp_path):
    assert snapshot.load(tmp_path / "snapshots" / "none-yet") == ("missing", None)


def _cut_weights(folder):
    (folder / "weights.bin").write_bytes(b"\0" * 8)


def _garbage_program(folder):
    (folder / "encode.jaxexport").write_bytes(b"not a jax program" * 10)


def _missing_merges(folder):
    (folder / "merges.txt.gz").unlink()


def _cut_meta(folder):
    (folder / "meta.json").write_text('{"identity": {"mod')


def _not_gzip(folder):
    (folder / "merges.txt.gz").write_bytes(b"plain text")


@pytest.mark.parametrize("damage", [_cut_weights, _garbage_program, _missing_merges, _cut_meta, _not_gzip])
def test_a_damaged_snapshot_is_set_aside_once_and_reported_for_rebuild(folder, damage):
    damage(folder)
    assert snapshot.load(folder, wait_s=1) == ("rebuild", None)
    assert not folder.exists()
    aside = [p for p in folder.parent.iterdir() if p.name.startswith(folder.name + snapshot.DAMAGED)]
    assert len(aside) == 1 and (aside[0] / "weights.bin").exists()
    # the next worker finds no snapshot and writes one: nothing is set aside a second time
    assert snapshot.load(folder, wait_s=1) == ("missing", None)
    assert snapshot.ensure(folder, lambda: fake_snapshot(folder), wait_s=1) == "written"
    assert snapshot.load(folder)[0] == "loaded"
    assert len([p for p in folder.parent.iterdir() if snapshot.DAMAGED in p.name]) == 1


def test_a_folder_rebuilt_meanwhile_is_not_set_aside(folder):
    assert snapshot.set_aside(folder, wait_s=1) is None
    assert snapshot.load(folder)[0] == "loaded"


def test_a_damaged_folder_whose_lock_is_held_is_left_to_its_writer(folder):
    _cut_weights(folder)
    with FileLock(str(snapshot.lock_path(folder))):
        assert snapshot.load(folder, wait_s=0.2) == ("rebuild", None)
    assert folder.exists()


def test_a_damaged_sampler_program_is_set_aside_to_be_exported_again(folder):
    snap = snapshot.load(folder)[1]
    path = snapshot.sampler_file(folder, 64, 64, 1)
    path.write_bytes(b"cut short")
    assert snap.has_sampler(64, 64, 1) is False
    assert not path.exists() and len(list(folder.glob(path.name + snapshot.DAMAGED + "*"))) == 1


# -- one writer per folder --------------------------------------------------------------------


def _race(folder: str, log: str, start: float) -> str:
    def write():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        tmp = Path(folder + f".tmp-{os.getpid()}")
        tmp.mkdir()
        time.sleep(0.5)  # long enough for every other process to be waiting on the lock
        (tmp / "meta.json").write_text("{}")
        os.rename(tmp, folder)

    time.sleep(max(0.0, start - time.time()))
    return snapshot.ensure(Path(folder), write, wait_s=30)


def test_of_processes_racing_for_a_cold_folder_exactly_one_writes(tmp_path):
    folder, log = tmp_path / "snapshots" / "sd-v1-random-float32-abc", tmp_path / "writes.log"
    start = time.time() + 3  # the processes import jax first: all start together after that
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        states = pool.starmap(_race, [(str(folder), str(log), start)] * 4)
    assert sorted(states) == ["present", "present", "present", "written"]
    assert len(log.read_text().split()) == 1 and (folder / "meta.json").exists()


def test_a_worker_that_waited_too_long_is_told_busy(tmp_path):
    folder = tmp_path / "snapshots" / "x"
    folder.parent.mkdir()
    wrote = []
    with FileLock(str(snapshot.lock_path(folder))):
        t0 = time.monotonic()
        assert snapshot.ensure(folder, lambda: wrote.append(1), wait_s=0.3) == "busy"
        assert time.monotonic() - t0 < 5
    assert wrote == []


def test_a_failed_write_releases_the_lock(tmp_path):
    folder = tmp_path / "snapshots" / "x"

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError):
        snapshot.ensure(folder, fail, wait_s=1)
    assert snapshot.ensure(folder, lambda: fake_snapshot(folder), wait_s=1) == "written"


# -- one writer per sampler program -------------------------------------------------------------


def _bare_folder(tmp_path) -> Path:
    """A snapshot folder as far as `ensure_sampler` looks: meta.json there."""
    folder = tmp_path / "snapshots" / "sd-v1-random-float32-abc"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    return folder


def _race_sampler(folder: str, log: str, start: float, height: int) -> str:
    def write():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for every other process to be waiting on the lock
        snapshot.publish_sampler(Path(folder), height, 64, 2, b"program %d" % height)

    time.sleep(max(0.0, start - time.time()))
    return snapshot.ensure_sampler(Path(folder), height, 64, 2, write, wait_s=30)


def test_of_processes_racing_for_a_new_sampler_exactly_one_exports_it(tmp_path):
    folder, log = _bare_folder(tmp_path), tmp_path / "writes.log"
    start = time.time() + 3  # the processes import jax first: all start together after that
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        states = pool.starmap(_race_sampler, [(str(folder), str(log), start, 64)] * 3)
    assert sorted(states) == ["present", "present", "written"]
    assert len(log.read_text().split()) == 1
    path = snapshot.sampler_file(folder, 64, 64, 2)
    assert path.read_bytes() == b"program 64"
    # published by one rename: no temporary file left; the lock file stays, in the folder
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", path.name, path.name + snapshot.LOCK]


def test_a_sampler_already_there_is_present_without_a_write(tmp_path):
    folder = _bare_folder(tmp_path)
    snapshot.publish_sampler(folder, 64, 64, 1, b"program")
    wrote = []
    assert snapshot.ensure_sampler(folder, 64, 64, 1, lambda: wrote.append(1), wait_s=1) == "present"
    assert wrote == []


def test_a_sampler_written_while_this_worker_waited_is_present(tmp_path):
    """Existence is checked again once the lock is held: its holder wrote it meanwhile."""
    folder = _bare_folder(tmp_path)
    path = snapshot.sampler_file(folder, 64, 64, 1)
    held = threading.Event()

    def holder():  # another worker, exporting it
        with FileLock(str(snapshot.lock_path(path))):
            held.set()
            time.sleep(0.5)
            snapshot.publish_sampler(folder, 64, 64, 1, b"theirs")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    wrote = []
    try:
        assert snapshot.ensure_sampler(folder, 64, 64, 1, lambda: wrote.append(1), wait_s=10) == "present"
    finally:
        thread.join()
    assert wrote == [] and path.read_bytes() == b"theirs"


def test_a_worker_that_waited_too_long_for_a_sampler_is_told_busy(tmp_path):
    folder = _bare_folder(tmp_path)
    wrote = []
    with FileLock(str(snapshot.lock_path(snapshot.sampler_file(folder, 64, 64, 1)))):
        t0 = time.monotonic()
        assert snapshot.ensure_sampler(folder, 64, 64, 1, lambda: wrote.append(1), wait_s=0.3) == "busy"
        assert time.monotonic() - t0 < 5
    assert wrote == [] and not snapshot.sampler_file(folder, 64, 64, 1).exists()


def test_samplers_of_other_sizes_do_not_wait_for_each_other(tmp_path):
    folder = _bare_folder(tmp_path)
    with FileLock(str(snapshot.lock_path(snapshot.sampler_file(folder, 64, 64, 1)))):
        write = lambda: snapshot.publish_sampler(folder, 64, 64, 2, b"b2")  # noqa: E731
        assert snapshot.ensure_sampler(folder, 64, 64, 2, write, wait_s=0.3) == "written"
        # nor for the folder's own lock (held by `set_aside` or `sdgen cache prune`)
    with FileLock(str(snapshot.lock_path(folder))):
        write = lambda: snapshot.publish_sampler(folder, 128, 64, 1, b"128")  # noqa: E731
        assert snapshot.ensure_sampler(folder, 128, 64, 1, write, wait_s=0.3) == "written"


def test_a_sampler_lock_that_cannot_be_created_is_an_oserror_and_nothing_is_written(tmp_path):
    """Like a read-only or full data directory (the tests may run as root, whom file modes do
    not stop): something that is not a file where the lock file goes."""
    folder = _bare_folder(tmp_path)
    path = snapshot.sampler_file(folder, 64, 64, 1)
    snapshot.lock_path(path).mkdir()
    wrote = []
    with pytest.raises(OSError):
        snapshot.ensure_sampler(folder, 64, 64, 1, lambda: wrote.append(1), wait_s=1)
    assert wrote == [] and not path.exists()


def test_a_sampler_of_a_folder_gone_meanwhile_is_not_written_and_the_folder_not_recreated(tmp_path):
    folder = _bare_folder(tmp_path)
    os.rename(folder, folder.with_name(folder.name + snapshot.DAMAGED + "20260101T000000-1"))  # set aside
    wrote = []
    with pytest.raises(FileNotFoundError):
        snapshot.ensure_sampler(folder, 64, 64, 1, lambda: wrote.append(1), wait_s=1)
    assert wrote == [] and not folder.exists()


def test_a_failed_sampler_write_releases_its_lock(tmp_path):
    folder = _bare_folder(tmp_path)

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        snapshot.ensure_sampler(folder, 64, 64, 1, fail, wait_s=1)
    write = lambda: snapshot.publish_sampler(folder, 64, 64, 1, b"program")  # noqa: E731
    assert snapshot.ensure_sampler(folder, 64, 64, 1, write, wait_s=1) == "written"


def test_publishing_a_sampler_removes_a_dead_writers_temporary_file_only(tmp_path):
    folder = _bare_folder(tmp_path)
    name = snapshot.sampler_file(folder, 64, 64, 1).name
    dead, live = (folder / f"{name}.host.{pid}.abcd1234.part" for pid in (1, 2))
    dead.write_bytes(b"cut")
    live.write_bytes(b"being written")
    other = folder / "sample-64x64-b2.jaxexport.host.3.abcd1234.part"  # another program's
    other.write_bytes(b"cut")
    for f in (dead, other):
        os.utime(f, (time.time() - 2 * 3600,) * 2)
    snapshot.publish_sampler(folder, 64, 64, 1, b"program")
    assert not dead.exists() and live.exists() and other.exists()


def test_sdgen_cache_lists_and_prunes_folders_holding_sampler_locks(tmp_path):
    """The program locks live inside the folders: `sdgen cache` lists no lock, judges each
    folder as before, and a folder pruned goes whole, its locks with it."""
    from tests.conftest import sdgen, sdgen_env

    data = tmp_path / "data"
    root = data / "cache" / "snapshots"
    current = snapshot.identity("sd-v1", "random", "float32", "fused")
    folders = {}
    for name, ident in (("current", current), ("other", dict(current, sources="0" * 16))):
        folder = folders[name] = root / f"sd-v1-random-float32-{name}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"identity": ident, "bytes": 0}))
        (folder / snapshot.LAST_USED).touch()
        write = lambda f=folder: snapshot.publish_sampler(f, 64, 64, 1, b"program")  # noqa: E731
        assert snapshot.ensure_sampler(folder, 64, 64, 1, write, wait_s=1) == "written"
        assert snapshot.lock_path(snapshot.sampler_file(folder, 64, 64, 1)).exists()
    (data / "spool").mkdir(parents=True)
    env = sdgen_env(data, KERAS_HOME=tmp_path / "keras", SDGEN_COMPILE_CACHE=tmp_path / "jax")
    out = sdgen(data, "cache", "status", env=env, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == {folders["current"].name, folders["other"].name}, out
    assert lines[folders["current"].name].rstrip().endswith("current")
    assert lines[folders["other"].name].rstrip().endswith("made by other software")
    out = sdgen(data, "cache", "prune", env=env, check=True).stdout
    assert f"removed {folders['other'].name}" in out and not folders["other"].exists()
    assert snapshot.lock_path(snapshot.sampler_file(folders["current"], 64, 64, 1)).exists()


def test_the_identity_records_cuda_packages_of_any_cuda_major(monkeypatch):
    """A CUDA 13 node (jax-cuda13-plugin, nvidia-cudnn-cu13) records those versions, not
    "none": upgrading cuDNN alone must make a new snapshot there too."""
    from importlib import metadata

    from sdgen.engine import snapshot

    installed = {"jax-cuda13-plugin": "0.11.2", "nvidia-cudnn-cu13": "9.19.0.56", "nvidia-cudnn-cu12": "9.1.0"}

    def version(name):
        if name in installed:
            return installed[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(snapshot.metadata, "version", version)
    assert snapshot._version(snapshot.PACKAGES["cuda_plugin"]) == "jax-cuda13-plugin==0.11.2"
    assert snapshot._version(snapshot.PACKAGES["cudnn"]) == "nvidia-cudnn-cu13==9.19.0.56"
    assert snapshot._version(snapshot.PACKAGES["cuda_pjrt"]) == "none"
    del installed["nvidia-cudnn-cu13"]
    assert snapshot._version(snapshot.PACKAGES["cudnn"]) == "9.1.0"  # a CUDA 12 node: as before
