"""Issue 15, "a newcomer's first hour": the paths around a first run (where it is started
from, a busy UI port, progress in a pipe, Ctrl-C and SIGHUP) end cleanly and say what to do."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import kill_workers, sdgen, sdgen_env, status_json, wait_for

FAST = ("--rescan", "0.3", "--lease-timeout", "4", "--worker-idle-exit", "2")
REQUEST = ("--engine", "dry-run", "--weights", "random", "--width", "128", "--height", "128")
# The installed console script, as a user runs it: unlike `python -m sdgen` it does not put
# the working directory on sys.path itself, so only the workers' command is under test.
SDGEN = str(Path(sys.executable).parent / "sdgen")


def test_run_from_a_folder_holding_a_folder_named_sdgen(data, tmp_path):
    """`cd ~ && sdgen run ...` with the clone at ~/sdgen: the workers must import the
    installed sdgen, not the folder (once a namespace package: ImportError on __version__)."""
    (tmp_path / "sdgen").mkdir()
    (tmp_path / "sdgen" / "README.md").write_text("a clone, say\n")
    try:
        proc = subprocess.run([SDGEN, "run", "--prompt", "x", "--images", "2", *REQUEST, *FAST],
                              env=sdgen_env(data), cwd=tmp_path, capture_output=True, text=True,
                              timeout=90)
    finally:
        kill_workers(data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(Path(proc.stdout.strip()).glob("*.png"))) == 2


def test_the_worker_commands_ignore_the_working_directory(tmp_path):
    """Both forms a launcher uses (-P on 3.11+, the -c bootstrap for Slurm's python of unknown
    version) run the installed sdgen from a folder holding a folder named sdgen."""
    from sdgen.launchers.base import sdgen_command

    (tmp_path / "sdgen").mkdir()
    for version in (sys.version_info[:2], None):
        out = subprocess.run([*sdgen_command(sys.executable, version), "--version"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.startswith("sdgen "), (version, out.stderr[-2000:])


def test_ui_on_a_busy_port_exits_2_naming_port(data, spool):
    (data / "mlflow").mkdir()
    (data / "mlflow" / "mlflow.db").touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        started = time.monotonic()
        proc = sdgen(data, "ui", "--port", str(port), timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--port" in proc.stderr, proc.stderr
    bad = sdgen(data, "ui", "--port", "70000")
    assert bad.returncode == 2 and "1 to 65535" in bad.stderr
