"""Slurm workers: each batch job runs `sdgen worker` on the shared data directory, claims
tickets until the spool has been idle a while, then exits (one job serves many tickets).

Facts relied on (checked on Slurm 22.05): `sbatch --parsable` prints the
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
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults
from sdgen.exceptions import UserError
from sdgen.launchers import jobs
from sdgen.launchers.base import ENV_NAME, SECRET_NAME, ExitedWorker, plain_names, sdgen_command, worker_settings

log = logging.getLogger(__name__)

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
}
# Final states and what they mean for the daemon. A worker that failed by itself gets its
# exit code (the scheduler counts quick failures as start-up failures); a job ended from
# outside (cancelled, timed out, preempted, node lost) gets None: not the worker's fault,
# its tickets come back through their leases.
ENDED_BY_WORKER = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "BOOT_FAIL"}
ENDED_FROM_OUTSIDE = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
PASSED_ON = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "KERAS_HOME", "XDG_CACHE_HOME"}
INSTALL_HINT = (
    "sbatch not found: run the daemon on a Slurm login node (or install slurm-client "
    "and point SLURM_CONF at the cluster's slurm.conf)"
)


@dataclass(frozen=True)
class JobOptions:
    """What a cluster user sets per job; None leaves the cluster's default."""

    partition: str | None = None
    gres: str | None = None  # e.g. gpu:1
    gpus: str | None = None  # e.g. 1 or a100:1 (--gpus)
    time_limit: str | None = None  # e.g. 4:00:00
    account: str | None = None
    qos: str | None = None
    cpus: int | None = None
    mem: str | None = None  # e.g. 32G
    extra: tuple[str, ...] = ()  # more sbatch arguments, verbatim
    env: tuple[str, ...] = ()  # names of daemon environment variables to pass on
    python: str | None = None  # python with sdgen on the compute nodes (default: the daemon's)


def check_env_names(names: tuple[str, ...]) -> None:
    for name in names:
        if SECRET_NAME.search(name):
            raise UserError(
                f"--slurm-env {name}: looks like a credential; sdgen never passes "
                "credentials to jobs (workers need only the data directory)"
            )
        if not ENV_NAME.fullmatch(name):
            raise UserError(
                f"--slurm-env {name!r} is not an environment variable name: give a name "
                "of letters, digits and _ that does not start with a digit"
            )


def sbatch_args(name: str, output: Path, opts: JobOptions) -> list[str]:
    """The sbatch options of one worker job (pure)."""
    args = ["--parsable", f"--job-name={name}", f"--output={output}", "--export=NONE", "--no-requeue"]
    for flag, value in (
        ("--partition", opts.partition),
        ("--gres", opts.gres),
        ("--gpus", opts.gpus),
        ("--time", opts.time_limit),
        ("--account", opts.account),
        ("--qos", opts.qos),
        ("--cpus-per-task", opts.cpus),
        ("--mem", opts.mem),
    ):
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
class Job(jobs.Job):
    idle_since: float | None = None  # unused; kept so jobs files of earlier versions read back
    reason: str = ""  # squeue's reason, for a pending job


class SlurmLauncher(jobs.JobLauncher):
    """Jobs outlive the daemon (stop_all leaves them, after one last look); end_all cancels
    every job, pending or running, repeating scancel every few seconds in case slurmctld
    missed it, until Slurm lists none of them as active."""

    name, label, job_cls, initial_state = "slurm", "Slurm", Job, "SUBMITTING"
    wait_on_stop = False
    cancel_again_every, end_poll_every = defaults.SLURM_CANCEL_AGAIN_SECONDS, defaults.SLURM_END_POLL_SECONDS

    def __init__(
        self,
        data_root: Path,
        max_workers: int | None = None,
        job_options: JobOptions | None = None,
        idle_exit: float = defaults.WORKER_IDLE_EXIT_SECONDS,
        heartbeat: float = defaults.HEARTBEAT_SECONDS,
        poll: float = defaults.SLURM_POLL_SECONDS,
        **_ignored,
    ):
        if not shutil.which("sbatch"):
            raise UserError(INSTALL_HINT)
        super().__init__(data_root)
        self.max_workers = 1 if max_workers is None else max_workers
        self.opts = job_options or JobOptions()
        check_env_names(self.opts.env)
        self.idle_exit, self.heartbeat, self.poll_every = idle_exit, heartbeat, poll
        self.logs = self.data_root / "logs"
        self._next_poll = 0.0

    # -- Slurm commands ---------------------------------------------------------------------
    def _slurm(self, *cmd: str, timeout: float = defaults.SLURM_COMMAND_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        """A Slurm command; a hung slurmctld reads as a failed call (exit 124), never as an
        exception out of the daemon's tick."""
        try:
            return subprocess.run(
                list(cmd), capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(cmd), 124, "", f"{cmd[0]} timed out after {timeout:.0f}s")

    def adopt(self, jobs: dict[str, Job]) -> dict[str, Job]:
        for job in jobs.values():
            if not job.job_id:  # died between sbatch and saving its id: find it by name
                out = self._slurm("squeue", "-h", "-t", "all", f"--name={job.name}", "-o", "%i")
                job.job_id = out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""
        return {n: j for n, j in jobs.items() if j.job_id}

    def describe(self, job: Job) -> str:
        return f"{job.name} ({job.job_id})"

    def worker_env(self, name: str) -> dict[str, str]:
        env = {
            "SDGEN_DATA": str(self.data_root),
            "SDGEN_WORKER_ID": name,
            "SDGEN_IDLE_EXIT": str(self.idle_exit),
            "SDGEN_HEARTBEAT": str(self.heartbeat),
            "PYTHONUNBUFFERED": "1",
        }
        settings = worker_settings(os.environ)  # sdgen's own, and what finds python and the weights
        settings.update((k, v) for k, v in os.environ.items() if k in PASSED_ON)
        for k, v in settings.items():
            env.setdefault(k, v)
        for k in self.opts.env:
            if k in os.environ:
                env[k] = os.environ[k]
        return env

    # -- submit / poll / cancel -------------------------------------------------------------
    def submit(self, job: Job, now: float) -> ExitedWorker | None:
        name = job.name
        self.logs.mkdir(parents=True, exist_ok=True)
        script = self.logs / f"worker-{name}.sbatch"
        script.write_text(batch_script(self.worker_env(name), self.opts.python or sys.executable))
        out = self._slurm("sbatch", *sbatch_args(name, self.logs / f"worker-{name}.log", self.opts), str(script))
        job_id = out.stdout.strip().split(";")[0]
        if out.returncode != 0 or not job_id.isdigit():
            detail = (out.stderr or out.stdout).strip().splitlines()
            # The scheduler's report of a failed worker points at logs/worker-<id>.log: a refused
            # job never ran, so that file gets what sbatch said instead of a job's output.
            (self.logs / f"worker-{name}.log").write_text(
                f"sbatch refused this job (exit {out.returncode}); batch script: {script}\n"
                + (out.stderr or "")
                + (out.stdout or "")
            )
            log.error("sbatch refused worker job %s: %s", name, detail[-1] if detail else f"exit {out.returncode}")
            # reported as a worker that failed at once, so the scheduler backs off and stops
            return ExitedWorker(
                name, 1, 0.0, "was refused by sbatch: " + (detail[-1] if detail else f"exit {out.returncode}")
            )
        job.job_id, job.state = job_id, "PENDING"
        log.info("submitted Slurm job %s (%s)", job_id, name)
        return None

    def poll(self, now: float) -> list[ExitedWorker]:
        """One squeue for all jobs, every `poll` seconds."""
        if now < self._next_poll:
            return []
        self._next_poll = now + self.poll_every
        ids = ",".join(j.job_id for j in self.jobs.values())
        out = self._slurm("squeue", "-h", "-t", "all", "-j", ids, "-o", "%i|%T|%r")
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            self.warn.fail(
                "Slurm",
                now,
                "Slurm squeue failed (%s); retrying on later ticks",
                " ".join((out.stderr or out.stdout).split())[:200],
            )
            return []
        self.warn.ok("Slurm", now, "Slurm answers again after %.0fs")
        listed = {}
        for line in out.stdout.splitlines():
            job_id, _, rest = line.partition("|")
            state, _, reason = rest.partition("|")
            listed[job_id.strip()] = (state.strip(), reason.strip())
        exited = []
        for job in list(self.jobs.values()):
            state, reason = listed.get(job.job_id, ("", ""))
            if state in ACTIVE:
                if state != job.state:
                    log.info(
                        "Slurm job %s (%s): %s%s",
                        job.job_id,
                        job.name,
                        state,
                        f" ({reason})" if reason and reason != "None" else "",
                    )
                job.state = state
                job.reason = reason if reason and reason != "None" else ""
                continue
            exited.append(self._finish(job, state, now))
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
        if code == 0 or self.stopped_by_us(job):
            log.info("%s (%s) after %.0fs", detail, job.name, ran)
        else:
            log.warning("%s (%s) after %.0fs; its output is logs/worker-%s.log", detail, job.name, ran, job.name)
        return ExitedWorker(job.name, code, ran, detail)

    def cancel(self, job: Job, now: float, why: str, again: bool = False) -> bool:
        """scancel (of an unknown id too, which succeeds)."""
        if not again:
            log.info("cancelling Slurm job %s (%s): %s", job.job_id, job.name, why)
        self._slurm("scancel", job.job_id)
        self._next_poll = now  # see it end on the next tick
        return True

    # -- the base's hooks -------------------------------------------------------------------
    def state_key(self, job: Job) -> str:
        """Pending jobs per reason: {"RUNNING": 2, "PENDING (Resources)": 1}."""
        return f"{job.state} ({job.reason})" if job.state == "PENDING" and job.reason else job.state

    def idle_state(self, job: Job) -> str | None:
        if not job.job_id:
            return None
        return "now" if job.state == "PENDING" else "after"

    def poll_soon(self) -> None:
        self._next_poll = 0.0

    def left_behind(self, left: list[str], limit: float) -> None:
        log.error(
            "Slurm job(s) %s still in the queue after %.0fs: `scancel` them",
            " ".join(self.jobs[n].job_id for n in left if n in self.jobs),
            limit,
        )
