"""Local workers: `sdgen worker` processes on this machine, one per GPU by default, recorded
in spool/local-jobs.json so that a restarted daemon adopts the workers a killed one left."""

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

import psutil

from sdgen import defaults
from sdgen.launchers import jobs
from sdgen.launchers.base import ExitedWorker, sdgen_command

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """GPU ids to pin workers to: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=defaults.NVIDIA_SMI_TIMEOUT_SECONDS
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass
class LocalJob(jobs.Job):
    """A worker process, as spool/local-jobs.json records it (name: the worker id; created:
    when it was started)."""

    pid: int = 0
    host: str = ""
    data_root: str = ""
    proc_start: float = 0.0  # the process's own start time: a reused pid is not our worker
    gpu: str | None = None


def same_process(job: LocalJob) -> bool:
    """Whether the worker `job` records still runs: its pid exists on this host, is not a
    zombie, and started when the record says (else the pid was reused by another process)."""
    if not job.pid or job.host != socket.gethostname():
        return False
    try:
        proc = psutil.Process(job.pid)
        return abs(proc.create_time() - job.proc_start) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class _Proc:
    popen: subprocess.Popen
    started: float
    gpu: str | None
    log_file: object


class LocalLauncher(jobs.JobLauncher):
    """Workers leave by themselves when idle, so nothing is trimmed; a daemon's workers stop
    with it (stop_all, end_all). Those of a killed daemon are adopted from the jobs file:
    they count against max_workers and keep their GPUs until they leave."""

    name, label, job_cls, initial_state = "local", "local", LocalJob, "running"

    def __init__(
        self,
        data_root: Path,
        max_workers: int | None = None,
        idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
        heartbeat: float = defaults.HEARTBEAT_SECONDS,
        pin_gpus: bool = True,
        extra_env: dict[str, str] | None = None,
    ):
        super().__init__(data_root)
        self.gpus = visible_gpus() if pin_gpus else []
        self.max_workers = max(1, len(self.gpus)) if max_workers is None else max_workers
        self.idle_exit = idle_exit
        self.heartbeat = heartbeat
        self.extra_env = extra_env or {}
        self.procs: dict[str, _Proc] = {}  # the workers this launcher started (its children)
        self._seq = 0

    def adopt(self, jobs: dict[str, LocalJob]) -> dict[str, LocalJob]:
        gone = [n for n, j in jobs.items() if not same_process(j)]
        if gone:
            log.info("%d worker(s) of an earlier daemon are gone: %s", len(gone), ", ".join(sorted(gone)))
        return {n: j for n, j in jobs.items() if n not in gone}

    def log_adopted(self) -> None:
        log.info("adopted %d worker(s) of an earlier daemon: %s", len(self.jobs), ", ".join(sorted(self.jobs)))

    def new_name(self, now: float) -> str:
        self._seq += 1
        return f"{socket.gethostname()}-local{self._seq}-{os.getpid()}"

    def _free_gpu(self) -> str | None:
        used = {j.gpu for j in self.jobs.values()}
        return next((g for g in self.gpus if g not in used), None)

    def submit(self, job: LocalJob, now: float) -> None:
        worker_id = job.name
        env = dict(os.environ, **self.extra_env)
        env.pop("MLFLOW_RUN_ID", None)  # it would silently hijack the parent run
        gpu = self._free_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        logs = self.data_root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = open(logs / f"worker-{worker_id}.log", "ab")
        cmd = [
            *sdgen_command(sys.executable, sys.version_info[:2]),
            "--data",
            str(self.data_root),
            "worker",
            "--worker-id",
            worker_id,
            "--idle-exit",
            str(self.idle_exit),
            "--heartbeat",
            str(self.heartbeat),
        ]
        popen = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.procs[worker_id] = _Proc(popen, now, gpu, log_file)
        try:
            proc_start = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            proc_start = 0.0  # already gone: the next poll reaps it
        job.job_id, job.pid, job.host, job.proc_start, job.gpu = (
            str(popen.pid),
            popen.pid,
            socket.gethostname(),
            proc_start,
            gpu,
        )
        job.data_root = str(self.data_root.resolve())
        log.info("started worker %s (pid %d%s)", worker_id, popen.pid, f", GPU {gpu}" if gpu is not None else "")

    def poll(self, now: float) -> list[ExitedWorker]:
        exited = []
        for worker_id, job in list(self.jobs.items()):
            proc = self.procs.get(worker_id)
            if proc is not None:
                code = proc.popen.poll()
                if code is not None:
                    proc.log_file.close()
                    del self.procs[worker_id]
                    exited.append(ExitedWorker(worker_id, code, now - proc.started))
            elif not same_process(job):
                exited.append(ExitedWorker(worker_id, None, now - job.created, "an earlier daemon's worker left"))
        return exited

    def cancel(self, job: LocalJob, now: float, why: str, again: bool = False) -> bool:
        return self._signal(job, signal.SIGTERM)

    def _signal(self, job: LocalJob, sig: int) -> bool:
        proc = self.procs.get(job.name)
        if proc is not None:
            if proc.popen.poll() is None:
                proc.popen.send_signal(sig)
            return True
        if same_process(job):  # never a process that took over a dead worker's pid
            try:
                os.kill(job.pid, sig)
                return True
            except ProcessLookupError:
                pass
        return False

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        """SIGTERM every worker (it hands its ticket back and exits); SIGKILL after `grace`."""
        self.attach()
        for job in self.jobs.values():
            self.cancel(job, time.time(), "the daemon stops")
        deadline = time.monotonic() + grace
        for worker_id, job in list(self.jobs.items()):
            proc = self.procs.get(worker_id)
            if proc is not None:
                try:
                    proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                    continue
                except subprocess.TimeoutExpired:
                    pass
            else:
                while same_process(job) and time.monotonic() < deadline:
                    time.sleep(defaults.LOCAL_STOP_POLL_SECONDS)
                if not same_process(job):
                    continue
            log.warning("worker %s did not stop within %.0fs: killing it", worker_id, grace)
            self._signal(job, signal.SIGKILL)
            if proc is not None:
                proc.popen.wait()
        return self.reap(time.time())

    def end_all(self, grace: float) -> list[ExitedWorker]:
        return self.stop_all(grace)
