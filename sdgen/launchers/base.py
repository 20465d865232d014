"""The launcher interface the daemon drives, and what launchers share (the environment a
worker gets, its command line, the saved job table). The registry by name is
launchers/registry.py."""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# What a worker started elsewhere (an ADSP job, a Slurm job) must see of the daemon's
# environment: sdgen's own engine knobs and the backend's, never a credential (a worker
# talks to neither AE5 nor MLflow) and never the daemon's tracking switch.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|_KEY$|^AWS_|^AE5_", re.I)
BACKEND_SETTINGS = {"KERAS_BACKEND", "XLA_FLAGS"}


# A job's variables become `export NAME=...` lines of a Slurm batch script and ADSP job
# variables: values are quoted there, names cannot be, so a name must be a plain one.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def plain_names(env: dict[str, str], where: str) -> dict[str, str]:
    """`env` without the variables whose name is not a plain shell name (a name taken from
    the daemon's environment could otherwise inject shell code into every job); each one
    skipped is logged (the name only, never its value)."""
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    for k in bad:
        log.warning(
            "not passing variable %r to %s: not a plain environment variable name "
            "(letters, digits and _, not starting with a digit)",
            k,
            where,
        )
    return {k: v for k, v in env.items() if k not in bad}


def worker_settings(environ) -> dict[str, str]:
    return {
        k: v
        for k, v in environ.items()
        if ((k.startswith("SDGEN_") and k != "SDGEN_TRACKING") or k in BACKEND_SETTINGS) and not SECRET_NAME.search(k)
    }


# How a launcher starts `python -m sdgen` in a folder it does not choose (the daemon's, or a
# job's working directory). `-m` puts that folder first on sys.path, so a folder there named
# `sdgen` (the folder a clone was made in: ~ with the clone at ~/sdgen) is imported as a
# namespace package instead of the installed sdgen. `-P` (3.11+) leaves that folder out; for
# an interpreter of unknown or older version, a `-c` bootstrap drops it ('' is what `-c`
# puts first) and runs the module. "sdgen" stays one argument of its own either way (ps and
# the tests find workers by it).
SAFE_RUN_SDGEN = (
    "import runpy, sys; sys.path[:1] = [] if sys.path[:1] == [''] else sys.path[:1]; "
    "del sys.argv[0]; runpy.run_module('sdgen', run_name='__main__', alter_sys=True)"
)


def sdgen_command(python: str, version: tuple[int, int] | None = None) -> list[str]:
    """argv that runs sdgen's CLI with `python` without importing from the working directory;
    `version` is `python`'s (major, minor) when known."""
    if version is not None and version >= (3, 11):
        return [python, "-P", "-m", "sdgen"]
    return [python, "-c", SAFE_RUN_SDGEN, "sdgen"]


@dataclass(frozen=True)
class ExitedWorker:
    worker_id: str
    returncode: int | None  # None: ended from outside (cancelled, timed out, preempted, node lost)
    ran_seconds: float  # time it ran (for a batch job: not counting its wait in the queue)
    detail: str = ""  # how it ended, in words, for logs and `sdgen status`


class Launcher(ABC):
    """Starts sdgen workers somewhere and tells the daemon when they end."""

    name: str = ""
    max_workers: int = 1

    def attach(self) -> None:
        """Called by the daemon once it holds the data directory, and by every method below
        before it acts: pick up what an earlier daemon left (its jobs). Not done in
        __init__: a daemon or `sdgen run` that finds another daemon holding the directory
        must not touch that daemon's jobs file."""

    @abstractmethod
    def running(self) -> list[str]:
        """Ids of the workers this launcher started that have not been reaped yet."""

    @abstractmethod
    def launch(self, now: float) -> str:
        """Start one worker; returns its id (the id the worker writes into its leases)."""

    @abstractmethod
    def reap(self, now: float) -> list[ExitedWorker]:
        """Workers that ended since the last call."""

    def trim(self, now: float, busy: set[str], wanted: int) -> None:
        """Stop workers the queue no longer needs. Local workers leave by themselves when
        idle, so by default nothing is done."""

    def summary(self) -> dict[str, int]:
        """How many workers are in which state, in words a user knows (`sdgen status`)."""
        return {"running": len(self.running())}

    @abstractmethod
    def stop_all(self, grace: float) -> list[ExitedWorker]:
        """Ask every worker to hand its ticket back and exit; force it after `grace` s."""

    def end_all(self, grace: float) -> list[ExitedWorker]:
        """The end of a one-shot run (`--exit-when-idle`): end every worker now, however it
        runs, and return once none is left anywhere (`running()` is then empty unless a
        worker could not be ended; the caller reports those). Local workers end with
        stop_all; batch jobs, which stop_all leaves for the next daemon, override this."""
        return self.stop_all(grace)

    def leftovers(self) -> list[str]:
        """After end_all: the workers (jobs, records) it could not remove."""
        return self.running()


def load_jobs(state_file: Path, job_cls) -> dict:
    """The jobs an earlier daemon launched and had not reaped (spool/<launcher>-jobs.json)."""
    from sdgen.spool.records import CorruptRecord, load_json_object
    from sdgen.spool.store import Spool

    try:
        saved = load_json_object(state_file)
        return {str(name): job_cls(**job) for name, job in saved.items()}
    except FileNotFoundError:
        return {}
    except (CorruptRecord, TypeError, ValueError, AttributeError) as e:
        # Postfix: never delete what cannot be read. The jobs it listed are not watched by
        # this daemon; their tickets come back through their leases if they die.
        reason = e.reason if isinstance(e, CorruptRecord) else f"not a list of jobs ({e})"
        Spool(state_file.parent.parent).quarantine(state_file, f"{reason}; jobs it listed are not tracked", time.time())
        return {}


def save_jobs(data_root: Path, launcher: str, jobs: dict) -> None:
    """Saved before every submission, so a crash right after it cannot lose a job
    (spool/<launcher>-jobs.json, written by `Spool.save_jobs`)."""
    from sdgen.spool.store import Spool

    data = json.dumps({name: asdict(job) for name, job in jobs.items()}, indent=1).encode()
    Spool(data_root).save_jobs(launcher, data)
