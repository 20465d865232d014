"""`sdgen bootstrap` for real with venv-pack, in a small virtualenv of its own."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_venv(tmp_path_factory):
    """A virtualenv with sdgen (not editable: venv-pack refuses those) and venv-pack."""
    root = tmp_path_factory.mktemp("small-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        pip + [str(REPO), "venv-pack"], check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return venv


def bootstrap(venv, data, **kw):
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("CONDA_PREFIX", None)
    return subprocess.run(
        [str(venv / "bin" / "sdgen"), "--data", str(data), "bootstrap"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kw,
    )


def test_built_once_skipped_when_unchanged_rebuilt_when_changed(small_venv, tmp_path):
    data = tmp_path / "data"
    first = bootstrap(small_venv, data)
    assert first.returncode == 0, first.stderr
    env_dir = data / "worker_env"
    assert "built" in first.stdout and (env_dir / "bin" / "sdgen").exists()
    assert (env_dir / ".sdgen-fingerprint").exists()
    stamp = (env_dir / ".sdgen-fingerprint").stat().st_mtime_ns

    again = bootstrap(small_venv, data)
    assert "already up to date" in again.stdout
    assert (env_dir / ".sdgen-fingerprint").stat().st_mtime_ns == stamp

    subprocess.run(
        [str(small_venv / "bin" / "python"), "-m", "pip", "install", "-q", "six"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    changed = bootstrap(small_venv, data)
    assert "built" in changed.stdout, changed.stderr
    assert list(env_dir.glob("lib/python*/site-packages/six.py"))
    assert [p.name for p in data.iterdir() if p.name.startswith(".worker_env-")] == []


def test_a_build_killed_half_way_is_never_used(small_venv, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, VIRTUAL_ENV=str(small_venv))
    proc = subprocess.Popen(
        [str(small_venv / "bin" / "sdgen"), "--data", str(data), "bootstrap"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: list(data.glob(".worker_env-*")), timeout=120, interval=0.01, what="a build in progress")
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (data / "worker_env").exists()  # nothing half-built in place
    done = bootstrap(small_venv, data)
    assert done.returncode == 0 and "built" in done.stdout
    assert (data / "worker_env" / ".sdgen-fingerprint").exists()
    assert [p.name for p in data.iterdir() if p.name.startswith(".worker_env-")] == []


def test_outside_a_virtualenv_it_says_what_to_do(monkeypatch):
    from sdgen.exceptions import UserError
    from sdgen.launchers import bootstrap as b

    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    with pytest.raises(UserError, match="neither"):
        b.env_kind()
    monkeypatch.setenv("CONDA_PREFIX", sys.prefix)
    assert b.env_kind() == "conda"
