"""AEUserSession's job and run methods, backed by real local processes (tests only)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests


class AEException(RuntimeError):
    pass


class AEUnexpectedResponseError(AEException):
    pass


def _dir() -> Path:
    d = Path(os.environ["FAKE_AE5_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    return d


def _load() -> dict:
    try:
        return json.loads((_dir() / "state.json").read_text())
    except FileNotFoundError:
        return {"jobs": {}, "runs": {}}


def _save(state: dict) -> None:
    tmp = _dir() / f"state.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, _dir() / "state.json")


def _flag(name: str) -> bool:
    return (_dir() / name).exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of a dead parent counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class AEUserSession:
    def __init__(self, hostname, username, password=None, persist=True, k8s_endpoint=None):
        self.hostname, self.username = hostname, username
        if password is None:
            raise EOFError("no password and no terminal")

    def _check(self):
        if _flag("unreachable"):
            raise requests.exceptions.ConnectionError(f"HTTPSConnectionPool(host='{self.hostname}'): unreachable")

    # -- jobs ---------------------------------------------------------------------------
    def job_create(
        self,
        ident,
        schedule=None,
        name=None,
        command=None,
        resource_profile=None,
        variables=None,
        run=None,
        wait=None,
        cleanup=False,
        make_unique=None,
        show_run=False,
        format=None,
    ):
        self._check()
        if command is None:
            raise TypeError("'NoneType' object is not subscriptable")
        state = _load()
        if any(j["name"] == name for j in state["jobs"].values()):
            raise AEException(f"Error starting job: a job named {name} already exists")
        jid = "a2-" + secrets.token_hex(16)
        job = {
            "id": jid,
            "name": name,
            "owner": self.username,
            "project_id": ident,
            "command": command,
            "resource_profile": resource_profile or "default",
            "variables": dict(variables or {}),
            "state": "created",
            "created": time.time(),
        }
        state["jobs"][jid] = job
        _save(state)
        if run is not False:
            self._start_run(job)
        if _flag("create-502"):
            os.unlink(_dir() / "create-502")
            raise requests.exceptions.RetryError(
                "Max retries exceeded (Caused by ResponseError('too many 502 error responses'))"
            )
        return job

    def _start_run(self, job: dict) -> dict:
        rid = "a2-" + secrets.token_hex(16)
        rdir = _dir() / rid
        rdir.mkdir()
        # For tests only (AE5 keeps no such file): what the run was given, kept after the
        # run and job records are deleted, so a test can check every run's variables.
        (rdir / "variables.json").write_text(json.dumps(job["variables"]))
        # The job's process sees the platform's environment plus the job's variables only:
        # nothing of the session that created it (its AE5 credentials included).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AE5_", "FAKE_AE5", "MLFLOW_"))}
        env.update(job["variables"])
        if _flag("fail-jobs"):
            cmd = "echo 'worker environment broken: no module named keras'; exit 3"
        else:
            cmd = f"exec {sys.executable} -m sdgen worker"
        script = f"( {cmd} ) > {rdir}/log 2>&1; echo $? > {rdir}/rc"
        proc = subprocess.Popen(
            ["sh", "-c", script], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        state = _load()
        run = {
            "id": rid,
            "name": job["name"],
            "job_id": job["id"],
            "owner": job["owner"],
            "pid": proc.pid,
            "state": "running",
            "variables": job["variables"],
            "created": time.time(),
        }
        state["runs"][rid] = run
        _save(state)
        return run

    def job_list(self, filter=None, format=None):
        self._check()
        return list(_load()["jobs"].values())

    def job_runs(self, ident, format=None):
        self._check()
        jid = ident["id"] if isinstance(ident, dict) else ident
        return [self._refresh(r) for r in _load()["runs"].values() if r["job_id"] == jid]

    def job_delete(self, ident, format=None):
        self._check()
        state = _load()
        state["jobs"].pop(ident["id"] if isinstance(ident, dict) else ident, None)
        _save(state)

    # -- runs ---------------------------------------------------------------------------
    def _refresh(self, run: dict) -> dict:
        rc_file = _dir() / run["id"] / "rc"
        if run["state"] in ("running", "initial"):
            if rc_file.exists() and rc_file.read_text().strip():
                run["state"] = "completed" if rc_file.read_text().strip() == "0" else "failed"
            elif not _pid_alive(run["pid"]):
                run["state"] = "error"
            state = _load()
            if run["id"] in state["runs"]:
                state["runs"][run["id"]]["state"] = run["state"]
                _save(state)
        out = dict(run)
        if _flag("unknown-state") and out["state"] == "running":
            out["state"] = "suspended"
        return out

    def api(self, method, endpoint, **kwargs):
        self._check()
        parts = endpoint.strip("/").split("/")
        if method == "get" and parts[0] == "runs" and len(parts) == 2:
            run = _load()["runs"].get(parts[1])
            if run is None:
                raise AEUnexpectedResponseError(f"404 Not Found: runs/{parts[1]}")
            return self._refresh(run)
        raise AEUnexpectedResponseError(f"fake AE5 does not serve {method} {endpoint}")

    def run_log(self, ident, format=None):
        self._check()
        path = _dir() / (ident["id"] if isinstance(ident, dict) else ident) / "log"
        return path.read_text() if path.exists() else ""

    def run_stop(self, ident, format=None):
        self._check()
        rid = ident["id"] if isinstance(ident, dict) else ident
        state = _load()
        run = state["runs"][rid]
        try:
            os.killpg(run["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        run["state"] = "stopped"
        (_dir() / rid / "rc").write_text("137\n")
        _save(state)
        return run

    def run_delete(self, ident, format=None):
        self._check()
        state = _load()
        state["runs"].pop(ident["id"] if isinstance(ident, dict) else ident, None)
        _save(state)

    def resource_profile_list(self, filter=None, format=None):
        self._check()
        return [
            {"name": "default", "description": "Default", "cpu": "2", "memory": "4096Mi", "gpu": 0},
            {"name": "gpu-large", "description": "1 GPU", "cpu": "8", "memory": "65536Mi", "gpu": 1},
        ]
