"""Model snapshots on JAX (CPU, random weights, 128x128): a snapshot written from the
keras-cv models gives their images exactly, a new worker generates from it without
importing keras, and a worker that cannot write one generates through keras. Each run is a fresh
process: the backend is fixed per process and the rest
of the suite runs TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

from sdgen.engine import snapshot  # noqa: E402

SCRIPT = Path(__file__).with_name("snapshot_run.py")


def run(data, out, mode):
    env = dict(os.environ, KERAS_BACKEND="jax", SDGEN_SNAPSHOT="on", JAX_PLATFORMS="cpu")
    env.pop("SDGEN_SAMPLER", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(out), mode], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)  # two real model builds on 2 CPU cores: ~4 min alone
def test_a_snapshot_gives_the_keras_models_images_and_needs_no_keras(tmp_path):
    data = tmp_path / "data"
    built = run(data, tmp_path / "built.npy", "build")
    assert built["engine"] == "ExportedEngine"
    assert "snapshot_write" in built["prepare"] and "export" in built["prepare"]
    assert built["fallback_keys"] == [["sd-v1", "random"]] and built["fallback_same_images"]
    keras_images = np.load(tmp_path / "built-keras.npy")
    assert keras_images.shape == (2, 128, 128, 3) and keras_images.std() > 10
    np.testing.assert_array_equal(np.load(tmp_path / "built.npy"), keras_images)
    # a group batch gives each ticket its own prompt's image, as when it runs alone
    assert built["group_vs_alone_max_diff"] <= 2 and built["group_prompts_mean_diff"] > 1

    folders = list((data / "cache" / "snapshots").iterdir())
    # the folder and the lock its one writer held
    assert sorted(f.name for f in folders) == [built["describe"]["snapshot"], built["describe"]["snapshot"] + ".lock"]
    folder = data / "cache" / "snapshots" / built["describe"]["snapshot"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "encode.jaxexport",
        "last-used",
        "merges.txt.gz",
        "meta.json",
        "sample-128x128-b1.jaxexport",
        "sample-128x128-b2.jaxexport",
        "weights.bin",
        "weights.json",
    ]

    loaded = run(data, tmp_path / "loaded.npy", "load")
    assert loaded["keras_imported"] is False
    assert "snapshot_write" not in loaded["prepare"] and "export" not in loaded["prepare"]
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), keras_images)
    assert loaded["describe"]["snapshot"] == built["describe"]["snapshot"]


def test_the_folder_name_changes_with_anything_the_programs_depend_on(tmp_path):
    base = snapshot.identity("sd-v1", "random", "bfloat16", "fused")
    names = {snapshot.folder_for(tmp_path, base).name}
    for field, value in (
        ("weights", "pretrained"),
        ("precision", "float16"),
        ("attention", "stock"),
        ("jax", "0.0.1"),
        ("keras", "9.9"),
        ("platform", "other"),
        ("sources", "edited"),
        ("cudnn", "9.9"),
        ("cuda_plugin", "0.0.1"),
    ):
        names.add(snapshot.folder_for(tmp_path, dict(base, **{field: value})).name)
    assert len(names) == 10
    assert snapshot.folder_for(tmp_path, dict(base)).name in names  # and stays the same otherwise


# -- the engine's snapshot life cycle, with the keras build and write mocked by a small fake --


def _engine(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sdgen.engine.exported import ExportedEngine
    from tests.engine.test_snapshot import fake_snapshot

    engine = ExportedEngine(tmp_path / "data")
    writes = []

    def write(ticket, ident):
        writes.append(ident)
        fake_snapshot(snapshot.folder_for(engine.root, ident))
        return True

    monkeypatch.setattr(engine, "_write_snapshot", write)
    ticket = SimpleNamespace(model="sd-v1", weights="random")
    folder = snapshot.folder_for(engine.root, snapshot.identity("sd-v1", "random", engine.precision, engine.attention))
    return engine, ticket, folder, writes


def test_a_cold_node_writes_the_snapshot_once_then_loads_it(tmp_path, monkeypatch):
    engine, ticket, folder, writes = _engine(tmp_path, monkeypatch)
    timings = {}
    assert engine._snapshot(ticket, timings) is not None
    assert len(writes) == 1 and "snapshot_write" in timings and "snapshot_load" in timings
    assert engine.last_snapshot == folder.name and (folder / snapshot.LAST_USED).exists()
    again, _, _, again_writes = _engine(tmp_path, monkeypatch)  # a later worker: loads, writes nothing
    assert again._snapshot(ticket, {}) is not None and again_writes == []


def test_a_damaged_snapshot_is_set_aside_and_rebuilt_by_the_next_worker(tmp_path, monkeypatch):
    from tests.engine.test_snapshot import fake_snapshot

    engine, ticket, folder, writes = _engine(tmp_path, monkeypatch)
    fake_snapshot(folder)
    (folder / "weights.bin").write_bytes(b"")  # cut short
    assert engine._snapshot(ticket, {}) is not None
    assert len(writes) == 1 and not engine.fallback
    assert len(list(folder.parent.glob(folder.name + snapshot.DAMAGED + "*"))) == 1


def test_while_another_worker_writes_too_long_this_one_uses_keras(tmp_path, monkeypatch):
    from filelock import FileLock

    from sdgen import defaults

    engine, ticket, folder, writes = _engine(tmp_path, monkeypatch)
    monkeypatch.setattr(defaults, "SNAPSHOT_WAIT_SECONDS", 0.2)
    folder.parent.mkdir(parents=True)
    with FileLock(str(snapshot.lock_path(folder))):
        assert engine._snapshot(ticket, {}) is None
    assert writes == [] and engine.fallback == {("sd-v1", "random")}
