"""`sdgen run` as a one-shot command: it ends when launching is blocked, and any number of
runs on one data directory all finish."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import FAST, kill_workers, sdgen, sdgen_env, wait_for

pytestmark = pytest.mark.slow  # real daemons and workers racing on one data directory

REQUEST = ("--engine", "dry-run", "--weights", "random", "--width", "128", "--height", "128")


def test_run_ends_when_every_worker_fails_at_start_up(data, tmp_path):
    """Workers that die before their first ticket (a broken environment, here a
    sitecustomize that kills `sdgen worker` processes only): after three the launcher is
    blocked, and the run ends with exit 4 and the reason on one line instead of waiting."""
    broken = tmp_path / "broken-site"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'worker' in sys.orig_argv:\n"
        "    print('worker environment broken: no module named keras', flush=True)\n"
        "    os._exit(1)\n"
    )
    env = sdgen_env(data, PYTHONPATH=os.pathsep.join([str(broken), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    try:
        proc = sdgen(
            data, "run", "--prompt", "a", "--images", "2", *REQUEST, *FAST, "--workers", "1", env=env, timeout=60
        )
    finally:
        kill_workers(data)
    assert time.monotonic() - started < 30
    assert proc.returncode == 4, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sdgen run: error: launcher local is blocked: 3 workers in a row failed at start-up")
    name = last.split("last: ")[1].split()[0]
    assert "worker environment broken" in (data / "logs" / f"worker-{name}.log").read_text()
    assert "Traceback" not in proc.stderr


def test_concurrent_runs_on_one_data_directory_all_finish(data):
    """The first run's daemon serves every run's request; a run that follows it takes over
    if it exits first. Each run exits 0 with its own images."""
    data.mkdir(parents=True)
    procs = []
    for i in range(3):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sdgen",
                    "run",
                    "--prompt",
                    f"p{i}",
                    "--images",
                    "3",
                    "--seed",
                    str(i),
                    *REQUEST,
                    *FAST,
                ],
                env=sdgen_env(data, SDGEN_DRY_RUN_DELAY="0.2"),
                cwd=data.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        kill_workers(data)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        out_dir = out.strip().splitlines()[-1]
        assert len([n for n in os.listdir(out_dir) if n.endswith(".png")]) == 3, err[-2000:]
    assert sum("following its progress" in err for _, err in outs) >= 1
    assert not [d for d in (data / "spool" / "tickets" / "pending").iterdir()]


def test_a_run_takes_over_when_the_daemon_it_follows_exits(data, daemon):
    """A daemon that exits (here: SIGTERM) while the run's request is unfinished: the run
    starts its own and finishes."""
    d = daemon("--workers", "1", *FAST, SDGEN_DRY_RUN_DELAY="1")
    wait_for(lambda: "daemon up" in d.output(), what="the daemon")
    run = subprocess.Popen(
        [sys.executable, "-m", "sdgen", "run", "--prompt", "a", "--images", "6", "--seed", "1", *REQUEST, *FAST],
        env=sdgen_env(data, SDGEN_DRY_RUN_DELAY="0.5"),
        cwd=data.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        d.signal()
        assert d.wait(30) == 0
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        kill_workers(data)
    assert run.returncode == 0, err[-3000:]
    assert "following its progress" in err and "taking over" in err
    assert len([n for n in os.listdir(out.strip().splitlines()[-1]) if n.endswith(".png")]) == 6
