"""Local workers: `sdgen worker` processes on this machine, one per GPU by default."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults
from sdgen.launchers.base import ExitedWorker, Launcher, sdgen_command
from sdgen.spool.claim import pid_alive

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """GPU ids to pin workers to: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def orphan_workers(data_root: Path) -> list[tuple[int, str, str | None]]:
    """(pid, worker id, GPU) of `sdgen worker` processes of this host that a launcher started
    for `data_root` (their command line names it): the workers of a daemon that was killed.
    Paths are compared resolved, so a daemon restarted through another spelling of the folder
    (a symlink, a relative path) still finds them. Linux /proc only; elsewhere none are found."""
    found = []
    data_root = Path(data_root).resolve()
    try:
        pids = [e for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not {"sdgen", "worker", "--data", "--worker-id"} <= set(args):
            continue
        if not _same_folder(pid, args[args.index("--data") + 1], data_root):
            continue
        gpu = None
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                for var in f.read().split(b"\0"):
                    if var.startswith(b"CUDA_VISIBLE_DEVICES="):
                        gpu = var.split(b"=", 1)[1].decode() or None
        except OSError:
            pass
        found.append((int(pid), args[args.index("--worker-id") + 1], gpu))
    return found


def _same_folder(pid: str, given: str, data_root: Path) -> bool:
    """Whether process `pid`'s --data `given` is `data_root` (resolved): a relative one is
    taken from the process's own working directory, as it did."""
    if given == str(data_root):
        return True
    try:
        return Path(f"/proc/{pid}/cwd", given).resolve() == data_root
    except (OSError, RuntimeError):  # gone, not ours to read, a symlink loop
        return False


@dataclass
class _Adopted:
    """A worker of an earlier daemon: not our child, so only its pid is known."""
    pid: int
    gpu: str | None
    since: float


@dataclass
class _Proc:
    popen: subprocess.Popen
    started: float
    gpu: str | None
    log_file: object


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, data_root: Path, max_workers: int | None = None,
                 idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
                 heartbeat: float = defaults.HEARTBEAT_SECONDS, pin_gpus: bool = True,
                 extra_env: dict[str, str] | None = None):
        self.data_root = Path(data_root)
        self.gpus = visible_gpus() if pin_gpus else []
        self.max_workers = max_workers or max(1, len(self.gpus))
        self.idle_exit = idle_exit
        self.heartbeat = heartbeat
        self.extra_env = extra_env or {}
        self.procs: dict[str, _Proc] = {}
        self._seq = 0
        self._adopted: dict[str, _Adopted] | None = None

    @property
    def adopted(self) -> dict[str, _Adopted]:
        """Workers left by a killed daemon: they count against max_workers and keep their
        GPUs until they leave (they exit by themselves once the spool is idle). Looked for on
        first use, which is after the daemon holds the data directory."""
        if self._adopted is None:
            self._adopted = {wid: _Adopted(pid, gpu, time.time()) for pid, wid, gpu in orphan_workers(self.data_root)}
            if self._adopted:
                log.info("adopted %d worker(s) of an earlier daemon: %s", len(self._adopted),
                         ", ".join(sorted(self._adopted)))
        return self._adopted

    def running(self) -> list[str]:
        return list(self.procs) + list(self.adopted)

    def _free_gpu(self) -> str | None:
        used = {p.gpu for p in self.procs.values()} | {a.gpu for a in self.adopted.values()}
        return next((g for g in self.gpus if g not in used), None)

    def launch(self, now: float) -> str:
        self._seq += 1
        worker_id = f"{socket.gethostname()}-local{self._seq}-{os.getpid()}"
        env = dict(os.environ, **self.extra_env)
        env.pop("MLFLOW_RUN_ID", None)  # it would silently hijack the parent run
        gpu = self._free_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        logs = self.data_root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = open(logs / f"worker-{worker_id}.log", "ab")
        cmd = [*sdgen_command(sys.executable, sys.version_info[:2]), "--data", str(self.data_root), "worker",
               "--worker-id", worker_id, "--idle-exit", str(self.idle_exit),
               "--heartbeat", str(self.heartbeat)]
        popen = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[worker_id] = _Proc(popen, now, gpu, log_file)
        log.info("started worker %s (pid %d%s)", worker_id, popen.pid,
                 f", GPU {gpu}" if gpu is not None else "")
        return worker_id

    def reap(self, now: float) -> list[ExitedWorker]:
        exited = []
        for worker_id, proc in list(self.procs.items()):
            code = proc.popen.poll()
            if code is not None:
                proc.log_file.close()
                del self.procs[worker_id]
                exited.append(ExitedWorker(worker_id, code, now - proc.started))
        for worker_id, a in list(self.adopted.items()):
            if not pid_alive(a.pid):
                del self.adopted[worker_id]
                exited.append(ExitedWorker(worker_id, None, now - a.since, "an earlier daemon's worker left"))
        return exited

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for a in self.adopted.values():
            _signal(a.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker_id, proc in self.procs.items():
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0fs: killing it", worker_id, grace)
                proc.popen.kill()
                proc.popen.wait()
        for worker_id, a in self.adopted.items():
            while pid_alive(a.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(a.pid):
                log.warning("worker %s did not stop within %.0fs: killing it", worker_id, grace)
                _signal(a.pid, signal.SIGKILL)
        return self.reap(time.time())


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
