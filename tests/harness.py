"""What the tests and the soak harness (benchmarks/soak.py) share about the sdgen processes
they start: the environment those run in, and finding them again to stop them. No pytest
here, so benchmarks/ can use it too; the servers they run sdgen against are in servers.py."""

from __future__ import annotations

import os
from pathlib import Path


def sdgen_env(data: Path, **extra) -> dict:
    """The environment of an sdgen process run on `data`. MLflow tracking is off (and no
    MLFLOW_TRACKING_URI of the caller's leaks in) unless `extra` turns it on, e.g. with
    `**MlflowServer.env`; values in `extra` may be numbers."""
    env = dict(os.environ, SDGEN_DATA=str(data), PYTHONUNBUFFERED="1", SDGEN_TRACKING="off")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def workers_of(data: Path) -> list:
    """The `sdgen worker` processes of `data` (psutil.Process). Workers run in sessions of
    their own, so a daemon's process group does not hold them: find them by their command
    line, which names the data directory."""
    import psutil

    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "worker" in (p.info["cmdline"] or []) and str(data) in (p.info["cmdline"] or [])
    ]


def daemons_of(data: Path) -> list:
    """The `sdgen daemon` processes of `data` (psutil.Process), by the SDGEN_DATA they were
    started with (a daemon's command line does not name its data directory)."""
    import psutil

    return [
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if "daemon" in (p.info["cmdline"] or []) and (p.info["environ"] or {}).get("SDGEN_DATA") == str(data)
    ]


def kill_all(processes: list) -> None:
    """SIGKILL each of `processes`; one already gone is no error."""
    import psutil

    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            pass
