"""Slurm workers: each batch job runs `sdgen worker` on the shared data directory, claims
tickets until the spool has been idle a while, then exits (one job serves many tickets).

Facts relied on (../shared/research/slurm.md, Slurm 22.05): `sbatch --parsable` prints the
job id; `squeue -t all` lists jobs (final states included) until MinJobAge; `scontrol show
job -o` gives JobState, ExitCode and RunTime; no accounting database is assumed (no sacct);
`scancel` of an unknown id succeeds. Individual jobs, not an array: the daemon caps how
many exist (`--max-jobs`), replaces one that ended, cancels a surplus one without touching
the others, and names each job after its worker id so a restarted daemon re-adopts them
from spool/slurm-jobs.json, or by name if it died between sbatch and saving the id.

A job's environment is written into its batch script and submitted with --export=NONE, so
nothing of the daemon's environment (AE5_PASSWORD, MLFLOW_TRACKING_TOKEN, ...) reaches a
job: workers need only the data directory; MLflow is logged by the daemon.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults
from sdgen.exceptions import UserError
from sdgen.launchers.base import (ENV_NAME, SECRET_NAME, ExitedWorker, Launcher, load_jobs, plain_names,
                                  save_jobs, sdgen_command, worker_settings)

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
TRIM_AFTER = 10.0  # seconds a surplus running job must hold no ticket before it is cancelled
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
          "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
# Final states and what they mean for the daemon. A worker that failed by itself gets its
# exit code (the scheduler counts quick failures as start-up failures); a job ended from
# outside (cancelled, timed out, preempted, node lost) gets None: not the worker's fault,
# its tickets come back through their leases.
ENDED_BY_WORKER = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "BOOT_FAIL"}
ENDED_FROM_OUTSIDE = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
PASSED_ON = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "KERAS_HOME"}
INSTALL_HINT = ("sbatch not found: run the daemon on a Slurm login node (or install slurm-client "
                "and point SLURM_CONF at the cluster's slurm.conf)")


@dataclass(frozen=True)
class JobOptions:
    """What a cluster user sets per job; None leaves the cluster's default."""
    partition: str | None = None
    gres: str | None = None        # e.g. gpu:1
    gpus: str | None = None        # e.g. 1 or a100:1 (--gpus)
    time_limit: str | None = None  # e.g. 4:00:00
    account: str | None = None
    qos: str | None = None
    cpus: int | None = None
    mem: str | None = None         # e.g. 32G
    extra: tuple[str, ...] = ()    # more sbatch arguments, verbatim
    env: tuple[str, ...] = ()      # names of daemon environment variables to pass on
    python: str | None = None      # python with sdgen on the compute nodes (default: the daemon's)


def check_env_names(names: tuple[str, ...]) -> None:
    for name in names:
        if SECRET_NAME.search(name):
            raise UserError(f"--slurm-env {name}: looks like a credential; sdgen never passes "
                            "credentials to jobs (workers need only the data directory)")
        if not ENV_NAME.fullmatch(name):
            raise UserError(f"--slurm-env {name!r} is not an environment variable name: give a name "
                            "of letters, digits and _ that does not start with a digit")


def sbatch_args(name: str, output: Path, opts: JobOptions) -> list[str]:
    """The sbatch options of one worker job (pure)."""
    args = ["--parsable", f"--job-name={name}", f"--output={output}", "--export=NONE", "--no-requeue"]
    for flag, value in (("--partition", opts.partition), ("--gres", opts.gres), ("--gpus", opts.gpus),
                        ("--time", opts.time_limit), ("--account", opts.account), ("--qos", opts.qos),
                        ("--cpus-per-task", opts.cpus), ("--mem", opts.mem)):
        if value is not None:
            args.append(f"{flag}={value}")
    return args + list(opts.extra)


def batch_script(worker_env: dict[str, str], python: str) -> str:
    """The job's script: its whole environment, explicit, then the worker (pure)."""
    lines = ["#!/bin/sh", "# an sdgen worker; submitted by `sdgen daemon --launcher slurm`"]
    # Values are quoted; names cannot be, so any name that is not a plain one is left out.
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(plain_names(worker_env, "Slurm jobs").items())]
    # The job starts in sbatch's working directory, which may hold a folder named sdgen;
    # the compute nodes' python may be any version, hence the version-free form.
    lines.append("exec " + shlex.join([*sdgen_command(python), "worker"]))
    return "\n".join(lines) + "\n"


def parse_runtime(text: str) -> float:
    """Slurm's RunTime / Elapsed: [D-]HH:MM:SS, MM:SS or INVALID."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not m:
        return 0.0
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def parse_job_record(line: str) -> dict[str, str]:
    """`scontrol show job -o` prints Key=Value pairs on one line (values without spaces,
    except a few at the end that we do not read)."""
    out = {}
    for part in line.split():
        k, sep, v = part.partition("=")
        if sep and k not in out:
            out[k] = v
    return out


def final_outcome(state: str, exit_code: str) -> int | None:
    """The worker's return code for a job in a final state, None if it ended from outside."""
    state = state.split()[0].rstrip("+") if state else ""
    if state == "COMPLETED":
        return 0
    if state in ENDED_BY_WORKER:
        code = exit_code.split(":")[0] if exit_code else ""
        return int(code) if code.isdigit() and int(code) else 1
    return None


@dataclass
class Job:
    name: str
    job_id: str = ""
    state: str = "SUBMITTING"
    created: float = 0.0
    idle_since: float | None = None
    reason: str = ""  # squeue's reason, for a pending job


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, data_root: Path, max_workers: int | None = None, job_options: JobOptions | None = None,
                 idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
                 heartbeat: float = defaults.HEARTBEAT_SECONDS, poll: float = POLL_SECONDS, **_ignored):
        if not shutil.which("sbatch"):
            raise UserError(INSTALL_HINT)
        self.data_root = Path(data_root)
        self.max_workers = max_workers or 1
        self.opts = job_options or JobOptions()
        check_env_names(self.opts.env)
        self.idle_exit, self.heartbeat, self.poll = idle_exit, heartbeat, poll
        self.state_file = self.data_root / "spool" / "slurm-jobs.json"
        self.logs = self.data_root / "logs"
        self.jobs: dict[str, Job] = {}
        self._next_poll = 0.0
        self._down_since: float | None = None
        self._refused: list[ExitedWorker] = []
        self._cancelled: set[str] = set()  # jobs sdgen itself scancelled: their end is no failure
        self._loaded = False

    def attach(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load()

    # -- Slurm commands ---------------------------------------------------------------------
    def _slurm(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm command; a hung slurmctld reads as a failed call (exit 124), never as an
        exception out of the daemon's tick."""
        try:
            return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(cmd), 124, "", f"{cmd[0]} timed out after {timeout:.0f}s")

    def _unreachable(self, what: str, detail: str, now: float) -> None:
        if self._down_since is None:
            self._down_since = now
            log.warning("Slurm %s failed (%s); retrying on later ticks", what, " ".join(detail.split())[:200])

    def _reachable(self, now: float) -> None:
        if self._down_since is not None:
            log.warning("Slurm answers again after %.0fs", now - self._down_since)
            self._down_since = None

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> None:
        self.jobs = load_jobs(self.state_file, Job)
        for job in self.jobs.values():
            if not job.job_id:  # died between sbatch and saving its id: find it by name
                out = self._slurm("squeue", "-h", "-t", "all", f"--name={job.name}", "-o", "%i")
                job.job_id = out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""
        self.jobs = {n: j for n, j in self.jobs.items() if j.job_id}
        if self.jobs:
            log.info("re-adopting %d Slurm job(s) of an earlier daemon: %s", len(self.jobs),
                     ", ".join(f"{j.name} ({j.job_id})" for j in self.jobs.values()))
        self._save()

    def _save(self) -> None:
        save_jobs(self.state_file, self.jobs)

    # -- the interface ----------------------------------------------------------------------
    def running(self) -> list[str]:
        self.attach()
        return list(self.jobs)

    def worker_env(self, name: str) -> dict[str, str]:
        env = {"SDGEN_DATA": str(self.data_root), "SDGEN_WORKER_ID": name,
               "SDGEN_IDLE_EXIT": str(self.idle_exit), "SDGEN_HEARTBEAT": str(self.heartbeat),
               "PYTHONUNBUFFERED": "1"}
        settings = worker_settings(os.environ)  # sdgen's own, and what finds python and the weights
        settings.update((k, v) for k, v in os.environ.items() if k in PASSED_ON)
        for k, v in settings.items():
            env.setdefault(k, v)
        for k in self.opts.env:
            if k in os.environ:
                env[k] = os.environ[k]
        return env

    def launch(self, now: float) -> str:
        self.attach()
        name = f"sdgen-w-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        job = Job(name=name, created=now)
        self.jobs[name] = job
        self._save()  # before sbatch: a crash after it must not lose the job
        self.logs.mkdir(parents=True, exist_ok=True)
        script = self.logs / f"worker-{name}.sbatch"
        script.write_text(batch_script(self.worker_env(name), self.opts.python or sys.executable))
        out = self._slurm("sbatch", *sbatch_args(name, self.logs / f"worker-{name}.log", self.opts), str(script))
        job_id = out.stdout.strip().split(";")[0]
        if out.returncode != 0 or not job_id.isdigit():
            del self.jobs[name]
            self._save()
            detail = (out.stderr or out.stdout).strip().splitlines()
            # The scheduler's report of a failed worker points at logs/worker-<id>.log: a refused
            # job never ran, so that file gets what sbatch said instead of a job's output.
            (self.logs / f"worker-{name}.log").write_text(
                f"sbatch refused this job (exit {out.returncode}); batch script: {script}\n"
                + (out.stderr or "") + (out.stdout or ""))
            log.error("sbatch refused worker job %s: %s", name, detail[-1] if detail else f"exit {out.returncode}")
            # reported as a worker that failed at once, so the scheduler backs off and stops
            self._refused.append(ExitedWorker(name, 1, 0.0, "was refused by sbatch: " + (
                detail[-1] if detail else f"exit {out.returncode}")))
            return name
        job.job_id, job.state = job_id, "PENDING"
        self._save()
        log.info("submitted Slurm job %s (%s)", job_id, name)
        return name

    def reap(self, now: float) -> list[ExitedWorker]:
        self.attach()
        exited, self._refused = self._refused, []
        if not self.jobs or now < self._next_poll:
            return exited
        self._next_poll = now + self.poll
        ids = ",".join(j.job_id for j in self.jobs.values())
        out = self._slurm("squeue", "-h", "-t", "all", "-j", ids, "-o", "%i|%T|%r")
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            self._unreachable("squeue", out.stderr or out.stdout, now)
            return exited
        self._reachable(now)
        listed = {}
        for line in out.stdout.splitlines():
            job_id, _, rest = line.partition("|")
            state, _, reason = rest.partition("|")
            listed[job_id.strip()] = (state.strip(), reason.strip())
        for job in list(self.jobs.values()):
            state, reason = listed.get(job.job_id, ("", ""))
            if state in ACTIVE:
                if state != job.state:
                    log.info("Slurm job %s (%s): %s%s", job.job_id, job.name, state,
                             f" ({reason})" if reason and reason != "None" else "")
                job.state = state
                job.reason = reason if reason and reason != "None" else ""
                continue
            exited.append(self._finish(job, state, now))
        self._save()
        return exited

    def _finish(self, job: Job, state: str, now: float) -> ExitedWorker:
        info = {}
        res = self._slurm("scontrol", "show", "job", "-o", job.job_id)
        if res.returncode == 0 and res.stdout.strip():
            info = parse_job_record(res.stdout.splitlines()[0])
        state = info.get("JobState", state) or "UNKNOWN"
        code = final_outcome(state, info.get("ExitCode", ""))
        ran = parse_runtime(info.get("RunTime", ""))
        detail = f"Slurm job {job.job_id} {state}"
        if info.get("Reason") and info["Reason"] != "None":
            detail += f" ({info['Reason']})"
        if info.get("ExitCode") and info["ExitCode"] != "0:0":
            detail += f", exit code {info['ExitCode']}"
        if state not in ENDED_BY_WORKER | ENDED_FROM_OUTSIDE:
            detail += " (no record left: ended over MinJobAge ago?)" if not info else ""
        if code == 0 or job.name in self._cancelled:
            log.info("%s (%s) after %.0fs", detail, job.name, ran)
        else:
            log.warning("%s (%s) after %.0fs; its output is logs/worker-%s.log", detail, job.name, ran, job.name)
        del self.jobs[job.name]
        self._cancelled.discard(job.name)
        return ExitedWorker(job.name, code, ran, detail)

    def summary(self) -> dict[str, int]:
        """Jobs per state, pending ones per reason: {"RUNNING": 2, "PENDING (Resources)": 1}."""
        self.attach()
        out: dict[str, int] = {}
        for job in self.jobs.values():
            key = f"{job.state} ({job.reason})" if job.state == "PENDING" and job.reason else job.state
            out[key] = out.get(key, 0) + 1
        return out

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        """Cancel jobs beyond what the queue needs: pending ones at once (they hold nothing),
        running ones after TRIM_AFTER seconds without a ticket (a listing races with claims,
        and cancelling a job that just claimed costs that ticket an attempt)."""
        self.attach()
        surplus = len(self.jobs) - wanted
        if surplus <= 0:
            for job in self.jobs.values():
                job.idle_since = None
            return
        doomed = []
        for job in sorted(self.jobs.values(), key=lambda j: (j.state != "PENDING", -j.created)):
            if len(doomed) >= surplus:
                break
            if job.name in busy or not job.job_id:
                job.idle_since = None
                continue
            if job.state == "PENDING":
                doomed.append(job)
                continue
            job.idle_since = job.idle_since if job.idle_since is not None else now
            if now - job.idle_since >= TRIM_AFTER:
                doomed.append(job)
        for job in doomed:
            log.info("cancelling Slurm job %s (%s): no work left for it", job.job_id, job.name)
            self._slurm("scancel", job.job_id)
            self._cancelled.add(job.name)
            job.idle_since = None
            self._next_poll = now  # see it end on the next tick

    def stop_all(self, grace: float) -> list[ExitedWorker]:
        """Jobs outlive the daemon: they finish their tickets and leave once the spool is
        idle, and the next daemon re-adopts any still there from spool/slurm-jobs.json."""
        self.attach()
        exited = self.reap(time.time() + self.poll)
        if self.jobs:
            log.info("leaving %d Slurm job(s) for the next daemon to re-adopt", len(self.jobs))
        self._save()
        return exited

    def end_all(self, grace: float) -> list[ExitedWorker]:
        """A one-shot run is over: cancel every job, pending or running (none holds a ticket:
        the queue is idle, or launching is blocked), and wait until Slurm lists none of them
        as active, so nothing of the run is left in the queue. scancel is repeated every few
        seconds in case slurmctld missed it; at most max(grace, 60) s in all."""
        self.attach()
        exited = []
        deadline = time.monotonic() + max(grace, 60.0)
        next_cancel = 0.0
        while self.jobs and time.monotonic() < deadline:
            if time.monotonic() >= next_cancel:
                for job in self.jobs.values():
                    if job.name not in self._cancelled:
                        log.info("cancelling Slurm job %s (%s): the run is over", job.job_id, job.name)
                    self._slurm("scancel", job.job_id)
                    self._cancelled.add(job.name)
                next_cancel = time.monotonic() + 5.0
            time.sleep(0.5)
            self._next_poll = 0.0
            exited.extend(self.reap(time.time()))
        if self.jobs:
            log.error("Slurm job(s) %s still in the queue after %.0fs: `scancel` them",
                      " ".join(j.job_id for j in self.jobs.values()), max(grace, 60.0))
        self._save()
        return exited
