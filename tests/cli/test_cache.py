"""`sdgen cache status|prune` through the real CLI, on small fake caches: weights, snapshots
(current, unused, made by other software, damaged, being written) and a JAX cache whose
entries are sparse files (gigabytes in size, none on disk) to go over the size bound."""

import json
import os
import time
from pathlib import Path

import pytest
from filelock import FileLock

from sdgen import defaults
from tests.conftest import sdgen, sdgen_env

pytest.importorskip("jax")

from sdgen.engine import snapshot  # noqa: E402

DAY = 86400


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    for f in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(f, (t, t))


def _snapshot(root: Path, name: str, ident: dict, used_days_ago: float | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\0" * 3000)
    (folder / "meta.json").write_text(json.dumps({"identity": ident, "bytes": 3000}))
    if used_days_ago is not None:
        (folder / snapshot.LAST_USED).touch()
        _age(folder, used_days_ago)
    return folder


@pytest.fixture
def caches(tmp_path):
    """A data directory with something of every kind; returns (data, env, paths)."""
    data = tmp_path / "data"
    keras_home, jax_cache = tmp_path / "keras", tmp_path / "jaxcache"
    env = sdgen_env(data, KERAS_HOME=keras_home, SDGEN_COMPILE_CACHE=jax_cache)
    weights = keras_home / "datasets"
    weights.mkdir(parents=True)
    old_weights, new_weights = weights / "kcv_diffusion_model.h5", weights / "kcv_decoder.h5"
    old_weights.write_bytes(b"w" * 5000)
    new_weights.write_bytes(b"w" * 4000)
    _age(old_weights, 90)

    root = data / "cache" / "snapshots"
    current = dict(snapshot.identity("sd-v1", "pretrained", "bfloat16", "fused"), platform="gpu")
    paths = {
        "current": _snapshot(root, "sd-v1-pretrained-bfloat16-aaaa", current, used_days_ago=1),
        "unused": _snapshot(root, "sd-v1-random-bfloat16-bbbb", dict(current, weights="random"), used_days_ago=45),
        "other": _snapshot(root, "sd-v1-pretrained-bfloat16-cccc", dict(current, sources="0" * 16), used_days_ago=0),
        "aside": _snapshot(root, "sd-v1-pretrained-bfloat16-dddd.damaged-20260101T000000-1", current),
        "inplace": root / "sd-v2-pretrained-bfloat16-eeee",
        "writing": root / "tmp-sd-v2-pretrained-bfloat16-ffff-123",
        "dead": root / "tmp-sd-v2-pretrained-bfloat16-ffff-99",
        "old_weights": old_weights,
        "new_weights": new_weights,
    }
    paths["inplace"].mkdir()
    (paths["inplace"] / "weights.bin").write_bytes(b"\0" * 10)  # no meta.json
    for name in ("writing", "dead"):
        paths[name].mkdir()
        (paths[name] / "weights.bin").write_bytes(b"\0" * 10)
    _age(paths["dead"], 2)
    (root / "sd-v1-pretrained-bfloat16-aaaa.lock").touch()

    jax_cache.mkdir()
    for i, days in enumerate((3, 1, 2)):  # entry 0 is the least recently used
        with open(jax_cache / f"jit_sample-{i}-cache", "wb") as f:
            f.truncate(4 * 10**9)  # 12 GB in all, above the 10 GB bound
        (jax_cache / f"jit_sample-{i}-atime").write_bytes(b"0")
        _age(jax_cache / f"jit_sample-{i}-cache", days)
        _age(jax_cache / f"jit_sample-{i}-atime", days)
    paths.update({f"jax{i}": jax_cache / f"jit_sample-{i}-cache" for i in range(3)})
    assert 3 * 4 * 10**9 > defaults.JAX_CACHE_MAX_BYTES > 2 * 4 * 10**9
    return data, env, paths


def test_status_lists_every_cache_with_size_and_last_use(caches):
    data, env, paths = caches
    proc = sdgen(data, "cache", "status", env=env, check=True)
    out = proc.stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert out.startswith("weights ") and "9.0 KB in 2 entries" in out
    assert "last used 90 d ago" in lines["kcv_diffusion_model.h5"]
    assert (
        "current" in lines["sd-v1-pretrained-bfloat16-aaaa"]
        and "last used 1 d ago" in lines["sd-v1-pretrained-bfloat16-aaaa"]
    )
    assert "last used 45 d ago" in lines["sd-v1-random-bfloat16-bbbb"]
    assert "made by other software" in lines["sd-v1-pretrained-bfloat16-cccc"]
    assert "damaged, set aside" in lines[paths["aside"].name]
    assert "damaged" in lines[paths["inplace"].name]
    assert "being written" in lines[paths["writing"].name]
    assert "left by a writer that died" in lines[paths["dead"].name]
    assert not any(name.endswith(".lock") for name in lines)
    assert "jax cache" in out and "12.0 GB in 3 entries, last used 1 d ago" in out
    assert proc.stderr == ""


def test_prune_removes_what_is_unused_damaged_or_over_the_bound_and_never_weights(caches):
    data, env, paths = caches
    dry = sdgen(data, "cache", "prune", "--dry-run", env=env, check=True).stdout
    assert dry.count("would remove") == 6 and "would free" in dry
    assert all(p.exists() for p in paths.values())

    out = sdgen(data, "cache", "prune", env=env, check=True).stdout
    gone = {name for name, p in paths.items() if not p.exists()}
    assert gone == {"unused", "other", "aside", "inplace", "dead", "jax0"}, out
    assert "made by other software" in out and "unused for 45 d" in out and "JAX cache over 10.0 GB" in out
    assert (paths["current"].parent / "sd-v1-pretrained-bfloat16-aaaa.lock").exists()  # lock files stay
    assert not (paths["jax0"].parent / "jit_sample-0-atime").exists()
    # under the bound now: a second prune has nothing to do
    assert sdgen(data, "cache", "prune", env=env, check=True).stdout.strip() == "nothing to remove"


def test_weights_go_only_with_the_flag_and_only_unused_ones(caches):
    data, env, paths = caches
    out = sdgen(data, "cache", "prune", "--weights", "--older-than", "30d", env=env, check=True).stdout
    assert not paths["old_weights"].exists() and paths["new_weights"].exists()
    assert "kcv_diffusion_model.h5" in out
    # --older-than also decides which snapshots are unused: 12h takes the current one used a day ago
    sdgen(data, "cache", "prune", "--older-than", "12h", env=env, check=True)
    assert not paths["current"].exists() and paths["writing"].exists()


def test_a_snapshot_a_worker_is_writing_is_kept(caches):
    data, env, paths = caches
    with FileLock(str(snapshot.lock_path(paths["other"]))):
        out = sdgen(data, "cache", "prune", env=env, check=True).stdout
    assert paths["other"].exists() and f"kept {paths['other'].name}: a worker is writing it" in out


@pytest.mark.parametrize("bad", ["30", "30 days", "d", "-1d", "1y"])
def test_a_bad_age_is_a_one_line_usage_error(tmp_path, bad):
    proc = sdgen(tmp_path / "data", "cache", "prune", f"--older-than={bad}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--older-than" in proc.stderr and "like 30d" in proc.stderr and "Traceback" not in proc.stderr


def test_status_and_prune_work_without_jax_and_judge_no_snapshot(data, monkeypatch):
    """`make run` installs no jax: the listing still works, and prune keeps what it cannot judge."""
    import sys

    folder = data / "cache" / "snapshots" / "sd-v1-pretrained-bfloat16-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"x" * 10)
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` raises ImportError
    monkeypatch.delitem(sys.modules, "sdgen.engine.snapshot", raising=False)
    monkeypatch.delattr(sys.modules["sdgen.engine"], "snapshot", raising=False)
    (data / "spool").mkdir(parents=True, exist_ok=True)
    out = sdgen(data, "cache", "status")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "not judged: jax is not installed" in out.stdout
    assert sdgen(data, "cache", "prune", "--older-than", "0d").returncode == 0
    assert folder.exists()
