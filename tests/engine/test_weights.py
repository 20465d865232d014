"""The weight cache up to the file boundary: present, missing, corrupt, verified once."""

import hashlib

import pytest

from sdgen.engine import weights
from sdgen.engine.weights import WeightCache, WeightFile, cache_dir, random_tokenizer_file
from sdgen.exceptions import EngineError


def test_cache_is_per_user_unless_keras_home_or_the_data_dir_has_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "sdgen" / "keras" / "datasets"
    # two data directories, one cache: the second does not download 4 GB again
    assert cache_dir(tmp_path / "one") == cache_dir(tmp_path / "two") == user
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir(tmp_path / "one") == tmp_path / "home" / ".cache" / "sdgen" / "keras" / "datasets"
    # a data directory holding weight files (ADSP: the shared project folder) keeps its own
    own = tmp_path / "one" / "cache" / "keras" / "datasets"
    own.mkdir(parents=True)
    (own / "unrelated.txt").write_text("x")
    assert cache_dir(tmp_path / "one") != own
    (own / "kcv_decoder.h5").write_bytes(b"x")
    assert cache_dir(tmp_path / "one") == own
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "shared"))
    assert cache_dir(tmp_path / "one") == tmp_path / "shared" / "datasets"


def test_a_file_is_hashed_once_then_known_by_its_stamp(tmp_path, monkeypatch):
    body = b"weights" * 1000
    wf = WeightFile("w.h5", hashlib.sha256(body).hexdigest(), len(body), "http://unused")
    cache = WeightCache(tmp_path)
    assert cache.status(wf) == "missing"
    (tmp_path / "w.h5").write_bytes(body)
    assert cache.status(wf, verify=False) == "unverified"
    hashed = []
    real = weights._sha256
    monkeypatch.setattr(weights, "_sha256", lambda p, progress=None: hashed.append(p) or real(p))
    assert cache.status(wf) == "present" and len(hashed) == 1
    assert cache.status(wf) == "present" and len(hashed) == 1  # the stamp, not a re-hash
    (tmp_path / "w.h5").write_bytes(body[:-1] + b"X")  # same size, new content and mtime
    assert cache.status(wf) == "corrupt" and len(hashed) == 2


def test_wrong_size_is_corrupt_without_hashing(tmp_path):
    (tmp_path / "kcv_decoder.h5").write_bytes(b"junk")
    assert WeightCache(tmp_path).status(weights.DECODER) == "corrupt"


def test_missing_weights_are_a_deterministic_error_that_says_what_to_do(tmp_path):
    (tmp_path / "kcv_decoder.h5").write_bytes(b"junk")
    with pytest.raises(EngineError) as e:
        WeightCache(tmp_path).require("sd-v1")
    msg = str(e.value)
    assert e.value.transient is False
    assert "kcv_diffusion_model.h5 is missing" in msg and "kcv_decoder.h5 is corrupt" in msg
    assert "sdgen weights fetch --model sd-v1" in msg


def test_random_tokenizer_keeps_clips_special_token_ids(tmp_path):
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(bpe_path=str(random_tokenizer_file(tmp_path)))
    assert (tok.start_of_text, tok.end_of_text) == (49406, 49407)
    ids = tok.encode("a red fox")
    assert ids[0] == 49406 and ids[-1] == 49407


def test_weights_status_cli(tmp_path):
    from tests.conftest import sdgen, sdgen_env

    data = tmp_path / "data"
    env = sdgen_env(data, XDG_CACHE_HOME=tmp_path / "xdg")
    env.pop("KERAS_HOME", None)
    proc = sdgen(data, "weights", "status", "--model", "sd-v1", "--quick", env=env)
    assert proc.returncode == 1
    assert "kcv_diffusion_model.h5" in proc.stdout and "missing" in proc.stdout
    assert f"weight cache: {tmp_path / 'xdg' / 'sdgen' / 'keras' / 'datasets'}" in proc.stdout
    # a file the user cache holds counts for every data directory: up to the file boundary
    user = tmp_path / "xdg" / "sdgen" / "keras" / "datasets"
    user.mkdir(parents=True)
    (user / "bpe_simple_vocab_16e6.txt.gz").write_bytes(b"x" * 1_356_917)
    other = tmp_path / "other"
    proc = sdgen(other, "weights", "status", "--model", "sd-v1", "--quick", env=dict(env, SDGEN_DATA=str(other)))
    line = next(ln for ln in proc.stdout.splitlines() if "bpe_simple_vocab" in ln)
    assert "unverified" in line  # found there (not hashed with --quick), not missing


def test_fetch_into_the_data_directory_for_jobs_without_a_shared_home(tmp_path):
    from tests.conftest import sdgen, sdgen_env

    data = tmp_path / "data"
    # no internet here: a refused proxy fails the download at once, naming where it went
    env = sdgen_env(
        data, XDG_CACHE_HOME=tmp_path / "xdg", https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9"
    )
    env.pop("KERAS_HOME", None)
    proc = sdgen(data, "weights", "fetch", "--model", "sd-v1", "--into", "data", env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(data / "cache" / "keras" / "datasets") in proc.stderr
    proc = sdgen(data, "weights", "fetch", "--model", "sd-v1", env=env)
    assert str(tmp_path / "xdg" / "sdgen" / "keras" / "datasets") in proc.stderr
