"""Shared fixtures: a temp data directory, the sdgen CLI as a real process, daemons in
subprocesses, and helpers that wait on the spool instead of sleeping fixed times."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import subprocess as _subprocess
import sys
import time
from pathlib import Path

import pytest

from sdgen.spool.store import Spool
from tests.harness import kill_all, sdgen_env, workers_of
from tests.servers import MlflowServer, wait_for  # noqa: F401  (tests import them from here)

REPO = Path(__file__).resolve().parents[1]

# A daemon that reacts within a fraction of a second: short rescans, lease timeout and idle exit.
FAST = ("--rescan", "0.3", "--lease-timeout", "4", "--worker-idle-exit", "2")
# A request that the dry-run engine makes in milliseconds.
DRY = "engine: dry-run\nwidth: 128\nheight: 128\n"


def accept(spool: Spool, text: str, request_id: str = "20261126-000000-aaaaaa"):
    """Accept a request straight into the spool (what the daemon's intake does), whole."""
    from sdgen.spool.request import parse_request

    return spool.accept(request_id, parse_request(text), source="test", now=time.time())


def generate(spool: Spool, text: str, request_id: str = "20261126-000000-aaaaaa"):
    """Accept a request (templates expanded, as the daemon's intake does) and make every
    image with a worker in this process; the accepted request."""
    from sdgen.worker.loop import Worker

    request = accept(spool, text, request_id)
    worker = Worker(spool, "w1")
    while worker.step() is not None:
        pass
    return request


def drop_settled(spool: Spool, name: str, content: str | bytes) -> Path:
    """A request file dropped into the inbox and dated a minute back: past the quiet-file
    rule, so the daemon's next tick takes it."""
    path = spool.layout.inbox / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def submit(data: Path, *args) -> str:
    """`sdgen submit` of a dry-run request at 128x128; returns the request id."""
    return sdgen(
        data, "submit", "--engine", "dry-run", "--width", "128", "--height", "128", *args, check=True
    ).stdout.strip()


def worker_pids(data: Path) -> list[int]:
    """Pids of the sdgen workers of this data directory (they run in sessions of their own)."""
    return [p.pid for p in workers_of(data)]


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def spool(data) -> Spool:
    return Spool(data).ensure()


# Commands that only read or mark the spool run in this process, through `main(argv)` (about
# 20x faster than a new interpreter); the long-running ones (daemon, run, worker, ui) and any
# call with `subprocess=True` run in a process of their own, with real signals.
IN_PROCESS = {
    "submit",
    "status",
    "list",
    "priority",
    "show",
    "cancel",
    "retry",
    "pause",
    "resume",
    "resubmit",
    "cache",
    "grid",
    "export",
}


def sdgen(
    data: Path,
    *args,
    env: dict | None = None,
    timeout: float = 60,
    check=False,
    input: str | None = None,
    subprocess: bool = False,
) -> "_subprocess.CompletedProcess":
    """Run the real `sdgen` CLI: in this process through `main(argv)` for the commands in
    IN_PROCESS, else (or with `subprocess=True`, or SDGEN_TEST_SUBPROCESS=1) in a process of
    its own. Either way: exit code, stdout and stderr as a CompletedProcess."""
    command = _command_of([str(a) for a in args])
    if command in IN_PROCESS and not subprocess and not os.environ.get("SDGEN_TEST_SUBPROCESS"):
        proc = run_in_process(list(map(str, args)), env or sdgen_env(data), cwd=data.parent, input=input)
    else:
        proc = _subprocess.run(
            [sys.executable, "-m", "sdgen", *args],
            env=env or sdgen_env(data),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=data.parent,
            input=input,
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"sdgen {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _command_of(args: list[str]) -> str | None:
    """The sdgen command named in `args`, past the global options (`--data DIR`, `-v`)."""
    i = 0
    while i < len(args):
        if args[i] == "--data":
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return None


def run_in_process(argv: list[str], env: dict, cwd: Path, input: str | None = None):
    """`sdgen.cli.main.main(argv)` with this environment, working directory and stdin, its
    output captured; an exception that escapes main is a traceback on stderr and exit 1, as
    it would be for a process."""
    import contextlib
    import io
    import logging
    import traceback

    from sdgen.cli.main import main

    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.stdin = io.StringIO(input or "")
    root.handlers[:] = []  # so that main's logging.basicConfig writes to this call's stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - what a process would print before dying
                traceback.print_exc()
                code = 1
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin = saved_stdin
    return _subprocess.CompletedProcess(["sdgen", *argv], code, out.getvalue(), err.getvalue())


class DaemonProc:
    """`sdgen daemon` in a subprocess, its log in a file for the test to inspect."""

    def __init__(self, data: Path, *args, **env_extra):
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.log_path = data.parent / f"daemon-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdgen", "daemon", *args],
            env=sdgen_env(data, **env_extra),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=data.parent,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s:\n{self.output()[-3000:]}") from None

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL the daemon and every worker it started (they are in its session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        kill_workers(self.data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        self.log.close()


def kill_workers(data: Path) -> None:
    """Workers run in sessions of their own: killing a daemon's process group misses them."""
    kill_all(workers_of(data))


@pytest.fixture
def daemon(data):
    started: list[DaemonProc] = []

    def start(*args, **env) -> DaemonProc:
        d = DaemonProc(data, *args, **env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()
    kill_workers(data)


def status_json(data: Path) -> list[dict]:
    return json.loads(sdgen(data, "status", "--json", check=True).stdout)


def claims_in_worker_logs(data: Path) -> dict[str, int]:
    """ticket name -> how many times any worker started it, from the workers' own logs."""
    counts: dict[str, int] = {}
    for log in (data / "logs").glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if ": ticket " in line and " image(s), attempt " in line:
                name = line.split(": ticket ", 1)[1].split(":", 1)[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture(scope="session")
def kerascv_engine(tmp_path_factory):
    """The real keras-cv engine (random weights, CPU), built once per test run: ~30 s, ~6 GB."""
    from sdgen.engine.kerascv import KerasCVEngine

    return KerasCVEngine(tmp_path_factory.mktemp("kerascv-data"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm for the whole run (tests/servers.py), or a skip saying what
    to install."""
    from tests.servers import SlurmCluster

    why = SlurmCluster.missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


# Fixtures that start something expensive: a test using one belongs to the full suite only
# (`make test`), never to the fast lane (`make check`, `-m "not slow"`).
EXPENSIVE_FIXTURES = {"slurm_cluster", "mlflow_server", "kerascv_engine", "daemon"}


# Session fixtures that must exist once per run, not once per xdist process (`make test`
# runs the suite on 2 processes with --dist loadgroup): every test using one goes to the
# same process. One Slurm (one munged, one slurmctld), one real keras-cv model build.
SHARED_FIXTURE_GROUPS = {"slurm_cluster": "slurm", "kerascv_engine": "kerascv"}
# Modules whose slow tests build the real model themselves (a worker, a snapshot process).
REAL_MODEL_MODULES = {"test_kerascv.py", "test_exported.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if EXPENSIVE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in fixtures:
                item.add_marker(pytest.mark.xdist_group(group))
                break
        else:
            if item.get_closest_marker("slow") and Path(str(item.fspath)).name in REAL_MODEL_MODULES:
                # builds the real model (~6 GB, both cores), often in a process of its own:
                # never beside another such test (two at once on 2 cores ran past 300 s each)
                item.add_marker(pytest.mark.xdist_group("kerascv"))
