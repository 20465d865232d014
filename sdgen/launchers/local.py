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
from sdgen.launchers.base import ExitedWorker, Launcher

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

    def running(self) -> list[str]:
        return list(self.procs)

    def _free_gpu(self) -> str | None:
        used = {p.gpu for p in self.procs.values()}
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
        cmd = [sys.executable, "-m", "sdgen", "--data", str(self.data_root), "worker",
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
        return exited

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker_id, proc in self.procs.items():
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0fs: killing it", worker_id, grace)
                proc.popen.kill()
                proc.popen.wait()
        return self.reap(time.time())
