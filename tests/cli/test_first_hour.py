"""Issue 15, "a newcomer's first hour": the paths around a first run (where it is started
from, a busy UI port, progress in a pipe, Ctrl-C and SIGHUP) end cleanly and say what to do."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, kill_workers, sdgen, sdgen_env, status_json, wait_for, worker_pids

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
        proc = subprocess.run(
            [SDGEN, "run", "--prompt", "x", "--images", "2", *REQUEST, *FAST],
            env=sdgen_env(data),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
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
        out = subprocess.run(
            [*sdgen_command(sys.executable, version), "--version"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
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


def test_progress_in_a_pipe_is_whole_lines(data):
    proc = sdgen(
        data,
        "run",
        "--prompt",
        "x",
        "--images",
        "4",
        *REQUEST,
        *FAST,
        env=sdgen_env(data, SDGEN_DRY_RUN_DELAY="0.3"),
        timeout=90,
    )
    kill_workers(data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr and "\033" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if " images" in line and "/4 " in line]
    assert progress and progress[-1] == progress[-1].strip()
    assert progress[-1].startswith("4/4 images") and progress[-1].endswith("(done)")
    assert sum(line.endswith("(done)") for line in progress) == 1  # the final line once
    # before the first image it says what is going on
    assert any(line.startswith("0/4 images (") and ": " in line for line in progress), progress


def _stopped_mid_run(data, *signals) -> tuple[int, str]:
    """A slow `sdgen run` of 30 images sent `signals` once its first image is out: its exit
    code and stderr. Whatever happens, neither it nor a worker of it is left running."""
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdgen", "run", "--prompt", "x", "--images", "30", *REQUEST, *FAST],
        env=sdgen_env(data, SDGEN_DRY_RUN_DELAY="1"),
        cwd=data.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: any((data / "outputs").glob("*/*.png")), timeout=60, what="a first image")
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.1)  # the stop before is under way (workers are handing tickets back)
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_workers(data)
    return proc.returncode, err


def test_ctrl_c_once_keeps_the_request_queued_and_says_how_to_resume(data):
    code, err = _stopped_mid_run(data, signal.SIGINT)
    assert code == 130, err[-3000:]
    (row,) = status_json(data)
    last = err.strip().splitlines()[-1]
    assert row["id"] in last and "stays queued" in last and f"sdgen cancel {row['id']}" in last
    assert "sdgen daemon" in last and "Traceback" not in err
    assert row["state"] in ("pending", "running") and row["images_done"] < 30
    assert not worker_pids(data)


def test_ctrl_c_twice_cancels_the_request(data):
    code, err = _stopped_mid_run(data, signal.SIGINT, signal.SIGINT)
    assert code == 130, err[-3000:]
    (row,) = status_json(data)
    assert row["state"] == "cancelled", err[-2000:]
    assert f"request {row['id']} is cancelled" in err.strip().splitlines()[-1]
    assert not worker_pids(data)


def test_sighup_stops_like_ctrl_c(data):
    code, err = _stopped_mid_run(data, signal.SIGHUP)
    assert code == 128 + signal.SIGHUP, err[-3000:]
    (row,) = status_json(data)
    assert "stays queued" in err.strip().splitlines()[-1] and row["state"] != "cancelled"
    assert not worker_pids(data)


def test_the_bar_fits_the_terminal_so_redraws_never_scroll(spool, monkeypatch):
    """A bar wider than the terminal wraps, and every redraw then scrolls a new line."""
    import io
    import os
    import re
    import shutil

    from sdgen.cli.run import _Progress
    from tests.conftest import accept

    class Tty(io.StringIO):
        def isatty(self):
            return True

    accept(spool, "prompt: a\nimages: 12\nengine: dry-run\n", "20261126-000000-aaaaaa")
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((60, 24)))
    out = Tty()
    progress = _Progress(spool, "20261126-000000-aaaaaa", stream=out)
    progress.update()
    progress.update()  # a redraw
    # what the terminal shows: escape sequences (colours, erase, cursor) take no columns
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    drawn = [line for part in shown.split("\r") for line in part.split("\n") if line]
    assert drawn and all(len(line) < 60 for line in drawn), drawn


@pytest.mark.slow
def test_ui_stopped_by_sigterm_leaves_no_server_behind(data, spool):
    import urllib.request

    import psutil

    (data / "mlflow").mkdir()
    (data / "mlflow" / "mlflow.db").touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdgen", "ui", "--port", str(port)],
        env=sdgen_env(data),
        cwd=data.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_for(answers, timeout=90, interval=0.5, what="the MLflow UI")
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True)]
        assert servers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        psutil.wait_procs(servers, timeout=30)
        assert not [p for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not answers()
    finally:
        proc.kill()
