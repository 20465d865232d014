"""Snapshot life cycle, on small fake folders (no model): the identity follows sdgen's traced
sources and the CUDA packages, damaged folders are set aside and reported for rebuilding,
one process of many racing for a folder's lock writes it."""

import json
import multiprocessing
import os
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
        monkeypatch.setattr(snapshot, "_version", lambda p, package=package: "99.0" if p == package else real(p))
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
