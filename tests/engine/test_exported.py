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
        [sys.executable, str(SCRIPT), str(data), str(out), mode], env=env, capture_output=True, text=True, timeout=800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two real model builds on 2 CPU cores: ~4 min alone, 7 on a loaded box
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
        "sample-128x128-b1.jaxexport.lock",  # held by the one worker exporting it
        "sample-128x128-b2.jaxexport",
        "sample-128x128-b2.jaxexport.lock",
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


# -- sampler programs: one worker of the node exports each, the rest load it ----------------


def _sampler_engine(tmp_path, monkeypatch):
    """An engine on a small fake snapshot whose sampler export is mocked: a tiny real JAX
    program (the engine only deserializes it), counted."""
    from types import SimpleNamespace

    import numpy as np

    from sdgen.engine.exported import ExportedEngine
    from tests.engine.test_snapshot import fake_snapshot

    folder = tmp_path / "data" / "cache" / "snapshots" / "sd-v1-random-float32-abc"
    if not folder.exists():
        fake_snapshot(folder)
    engine = ExportedEngine(tmp_path / "data")
    snap = snapshot.load(folder)[1]
    exports = []

    def export(snap, job, size):
        exports.append(size)
        return snapshot._export(lambda x: x + 1, np.zeros((size,), np.float32))

    monkeypatch.setattr(engine, "_export_sampler", export)
    job = SimpleNamespace(model="sd-v1", weights="random", height=64, width=64)
    return engine, snap, job, exports


def test_a_new_sampler_is_exported_and_written_once_then_loaded_by_other_workers(tmp_path, monkeypatch):
    engine, snap, job, exports = _sampler_engine(tmp_path, monkeypatch)
    timings = {}
    engine._sampler_ready(snap, job, 2, timings)
    path = snapshot.sampler_file(snap.folder, 64, 64, 2)
    assert exports == [2] and "export" in timings and path.exists() and (64, 64, 2) in snap._samplers
    assert snapshot.lock_path(path).exists()  # the lock file, in the folder
    other, other_snap, _, other_exports = _sampler_engine(tmp_path, monkeypatch)  # a later worker
    timings = {}
    other._sampler_ready(other_snap, job, 2, timings)
    assert other_exports == [] and "export" not in timings and (64, 64, 2) in other_snap._samplers


def test_while_another_worker_exports_a_sampler_too_long_this_one_exports_it_in_memory(tmp_path, monkeypatch, caplog):
    from filelock import FileLock

    from sdgen import defaults

    engine, snap, job, exports = _sampler_engine(tmp_path, monkeypatch)
    monkeypatch.setattr(defaults, "SNAPSHOT_WAIT_SECONDS", 0.2)
    path = snapshot.sampler_file(snap.folder, 64, 64, 2)
    with FileLock(str(snapshot.lock_path(path))):
        engine._sampler_ready(snap, job, 2, {})
    assert exports == [2] and (64, 64, 2) in snap._samplers and not path.exists()
    assert "still exporting" in caplog.text


def test_a_sampler_that_cannot_be_written_is_exported_in_memory(tmp_path, monkeypatch, caplog):
    """No lock file possible (a read-only or full data directory; here something that is not
    a file where it goes): this worker exports for itself and writes nothing."""
    engine, snap, job, exports = _sampler_engine(tmp_path, monkeypatch)
    path = snapshot.sampler_file(snap.folder, 64, 64, 2)
    snapshot.lock_path(path).mkdir()
    engine._sampler_ready(snap, job, 2, {})
    assert exports == [2] and (64, 64, 2) in snap._samplers and not path.exists()
    assert "could not be written" in caplog.text


def test_a_sampler_whose_write_fails_is_used_from_memory_without_a_second_export(tmp_path, monkeypatch, caplog):
    engine, snap, job, exports = _sampler_engine(tmp_path, monkeypatch)

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot, "publish_sampler", full)
    engine._sampler_ready(snap, job, 2, {})
    assert exports == [2] and (64, 64, 2) in snap._samplers
    assert not snapshot.sampler_file(snap.folder, 64, 64, 2).exists() and "No space left" in caplog.text
