"""Real services that tests and the soak harness start and stop: an MLflow tracking
server on 127.0.0.1 and a single-node Slurm cluster. Each has `env`: what an sdgen process
needs in its environment to use it (with tests/harness.py's `sdgen_env`). No pytest here,
so benchmarks/ can use them too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1."""

    def __init__(self, root: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root = root
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        """What an sdgen process needs in its environment to track its work on this server."""
        return {"SDGEN_TRACKING": "on", "MLFLOW_TRACKING_URI": self.uri}

    def start(self, timeout: float = 120) -> None:
        import urllib.request

        self.log = open(self.root / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=timeout, interval=0.5, what="mlflow server /health")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


SLURM_CONF = """\
ClusterName=sdgentest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=3600
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=4000
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """A real single-node Slurm (munge, slurmctld, slurmd from Debian's packages) with all
    its files under `base`. It declares 8 cores (the machine has 2) so that tests can show
    sdgen's own job cap, not the node's size, limits how many jobs run."""

    def __init__(self, base: Path):
        import socket

        self.base = Path(base)
        self.host = socket.gethostname()
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.ctld_port, self.d_port = ports
        self.conf = self.base / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    @staticmethod
    def missing() -> str | None:
        import shutil

        absent = [t for t in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch") if not shutil.which(t)]
        if absent:
            return (
                f"{', '.join(absent)} not installed: `apt-get install --no-install-recommends "
                f"slurmctld slurmd slurm-client munge` (tests/system-packages.sh does it)"
            )
        if os.geteuid() != 0:
            return "the test Slurm cluster runs its daemons as root"
        return None

    @property
    def env(self) -> dict[str, str]:
        """What an sdgen process (or a Slurm command) needs in its environment to use this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> None:
        b = self.base
        for d in ("state", "spool"):
            (b / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(host=self.host, base=b, ctld_port=self.ctld_port, d_port=self.d_port))
        subprocess.run(["mungekey", "-c", "-f", "-k", str(b / "munge.key")], check=True, capture_output=True)
        os.chmod(b / "munge.key", 0o400)
        subprocess.run(
            [
                "munged",
                f"--socket={b}/munge.socket",
                f"--key-file={b}/munge.key",
                f"--log-file={b}/munged.log",
                f"--pid-file={b}/munged.pid",
                f"--seed-file={b}/munged.seed",
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        self.run("slurmctld", "-f", str(self.conf))
        self.run("slurmd", "-f", str(self.conf), "-N", self.host)

        def idle():
            return self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() in ("idle", "mix", "alloc")

        wait_for(idle, timeout=timeout, interval=0.2, what="the Slurm node to be idle")

    def stop(self) -> None:
        self.run("scancel", "--full", "-u", "root", check=False)
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                pid = int((self.base / pidfile).read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command (a Slurm tool, a daemon's start) run against this cluster's config."""
        return subprocess.run(list(cmd), capture_output=True, text=True, check=check, env=dict(os.environ, **self.env))
