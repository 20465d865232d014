"""Trials of the infrastructure around sdgen failing: two daemons on one data directory,
workers whose clocks are a minute off, a full disk, MLflow unreachable. Each counts trials
and audits images like the faults of soak.py (which runs them: `soak.py infra`).

Needs: libfaketime (`apt-get install faketime`) for clock skew, root for the tmpfs of the
disk-full trial; a trial whose tool is missing reports `skipped` with the reason.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soak import FAST, REPO, audit, sdgen, start_daemon, submit_many, wait_idle

from sdgen.spool.store import Spool
from tests.harness import sdgen_env, workers_of  # (importing soak put the repository on sys.path)


def two_daemons(trials: int) -> dict:
    """Start two daemons at the same moment on one data directory, again and again, while
    work runs: exactly one may hold it; the other says why in one line and exits."""
    root = Path(tempfile.mkdtemp(prefix="sdgen-2d-"))
    data = root / "data"
    expected = submit_many(data, 3, 30, 3)
    held = refused_with_message = both_ran = neither_ran = 0
    rng = random.Random(3)
    messages = set()
    for _ in range(trials):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "sdgen", "daemon", "--workers", "2", *FAST],
                env=sdgen_env(data, SDGEN_DRY_RUN_DELAY=0.05),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for _ in range(2)
        ]
        time.sleep(rng.uniform(2.0, 3.0))
        alive = [p for p in procs if p.poll() is None]
        dead = [p for p in procs if p.poll() is not None]
        both_ran += len(alive) == 2
        neither_ran += len(alive) == 0
        for p in dead:
            err = p.stderr.read().strip()
            lines = err.splitlines()
            if p.returncode != 0 and len(lines) == 1 and "already runs" in err:
                refused_with_message += 1
                messages.add(re.sub(r"\d+", "N", lines[0]))
        for p in alive:
            held += 1
            p.send_signal(signal.SIGTERM)
            wait_idle(p, 60)
    psutil_wait(data)
    final = start_daemon(data, "--workers", "2", "--exit-when-idle", *FAST)
    code = wait_idle(final, 600)
    return {
        "trials": trials,
        "one_held": held,
        "other_refused_in_one_line": refused_with_message,
        "both_ran": both_ran,
        "neither_ran": neither_ran,
        "refusal": sorted(messages),
        "final_exit": code,
        **audit(data, expected),
    }


def psutil_wait(data: Path) -> None:
    import psutil

    psutil.wait_procs(workers_of(data), timeout=30)


def clock_skew(stops: int) -> dict:
    """A daemon on the true clock, its own local worker, and four more workers whose clocks
    are 60 s ahead or behind (libfaketime). Leases time out after 3 s. Some skewed workers
    are frozen (SIGSTOP) past the lease timeout and then thawed: their tickets must go to
    another worker and the late writer must be fenced. Workers never frozen must never
    lose a ticket to a timeout."""
    faketime = shutil.which("faketime")
    if not faketime:
        return {"skipped": "faketime is not installed (apt-get install faketime)"}
    root = Path(tempfile.mkdtemp(prefix="sdgen-skew-"))
    data = root / "data"
    expected = submit_many(data, 6, 12 * stops, 4)  # enough work to outlast every freeze
    delay = 0.5
    daemon = start_daemon(
        data,
        "--workers",
        "1",
        "--rescan",
        "0.3",
        "--lease-timeout",
        "3",
        "--worker-idle-exit",
        "3",
        SDGEN_DRY_RUN_DELAY=delay,
    )
    workers = {}
    for wid, skew in (
        ("ahead-steady", "+60s"),
        ("behind-steady", "-60s"),
        ("ahead-frozen", "+60s"),
        ("behind-frozen", "-60s"),
    ):
        log = open(root / f"{wid}.log", "wb")
        workers[wid] = subprocess.Popen(
            [
                faketime,
                "-f",
                skew,
                sys.executable,
                "-m",
                "sdgen",
                "worker",
                "--worker-id",
                wid,
                "--heartbeat",
                "0.5",
                "--idle-exit",
                "3",
            ],
            env=sdgen_env(data, SDGEN_DRY_RUN_DELAY=delay),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rng = random.Random(11)
    frozen_while_holding = 0
    spool = Spool(data)
    for i in range(stops):
        wid = ("ahead-frozen", "behind-frozen")[i % 2]
        w = workers[wid]
        if w.poll() is not None:
            break
        time.sleep(rng.uniform(0.2, 1.0))
        deadline = time.monotonic() + 5
        holding = False
        while not holding and time.monotonic() < deadline:  # freeze it while it holds a ticket
            # ...one that never lost a worker: a second loss would hold it as a poison ticket,
            # which is the rule working, not a fault of the clocks
            holding = any(
                _lease_worker(p) == wid and _deaths(spool, p.stem) == 0 for p in spool.layout.leases.glob("*.json")
            )
            time.sleep(0.05)
        os.killpg(w.pid, signal.SIGSTOP)
        time.sleep(4.0)  # past the 3 s lease timeout of the daemon's clock
        os.killpg(w.pid, signal.SIGCONT)
        frozen_while_holding += holding
    for w in workers.values():
        wait_idle(w, 300)
    daemon.send_signal(signal.SIGTERM)
    wait_idle(daemon, 60)
    final = start_daemon(data, "--workers", "1", "--exit-when-idle", *FAST)
    code = wait_idle(final, 300)
    dlog = (root / "daemon.log").read_text()
    expiries = {wid: dlog.count(f"lease of {wid} expired") for wid in workers}
    fenced = {wid: (root / f"{wid}.log").read_text().count(": lost,") for wid in workers}
    worked = {wid: (root / f"{wid}.log").read_text().count(": done,") for wid in workers}
    return {
        "skew_s": [60, -60],
        "freezes": stops,
        "freezes_while_holding_a_ticket": frozen_while_holding,
        "lease_expiries": expiries,
        "late_writers_fenced": fenced,
        "tickets_done_by": worked,
        "wrongful_expiries": expiries["ahead-steady"] + expiries["behind-steady"],
        "final_exit": code,
        **audit(data, expected),
    }


def _lease_worker(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("worker")
    except (OSError, ValueError):
        return None


def _deaths(spool: Spool, name: str) -> int:
    try:
        return spool.read_ticket("running", name).deaths
    except (OSError, ValueError):
        return -1


def disk_full(trials: int) -> dict:
    """The data directory on a 16 MiB tmpfs, filled up again and again while work runs:
    tickets are deferred with the reason, none is held or half-written, and all images
    are made once space is freed."""
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    mnt = Path(tempfile.mkdtemp(prefix="sdgen-full-"))
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, check=False
        ).returncode
        != 0
    ):
        return {"skipped": "mount -t tmpfs failed"}
    started: list[subprocess.Popen] = []
    try:
        data = mnt / "data"
        expected = {}
        for i in range(3):  # 1024x1024 dry-run PNGs of ~80 kB
            rid = sdgen(
                data,
                "submit",
                "--engine",
                "dry-run",
                "--width",
                "1024",
                "--height",
                "1024",
                "--prompt",
                f"full {i}",
                "--images",
                "20",
                "--batch-size",
                "2",
                "--seed",
                str(100 * i),
            ).stdout.strip()
            expected[rid] = 20
        daemon = start_daemon(data, "--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY=0.1)
        started.append(daemon)
        deferred_dir = data / "spool" / "tickets" / "deferred"
        held_dir = data / "spool" / "tickets" / "held"
        filler = mnt / "filler"
        reasons, held_seen, daemon_died = set(), 0, 0
        deferrals_seen = 0
        for _ in range(trials):
            time.sleep(1.0)
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            try:
                filler.write_bytes(b"\0" * max(0, free - 48 * 1024))
            except OSError:
                pass  # the workers filled it first: full is what this trial wants
            deadline = time.time() + 30
            seen = False
            while time.time() < deadline and not seen:
                for p in deferred_dir.glob("*.json") if deferred_dir.exists() else []:
                    try:
                        reasons.add(json.loads(p.read_text())["reason"][:90])
                        seen = True
                    except (OSError, ValueError):
                        pass  # moved on meanwhile
                time.sleep(0.1)
            deferrals_seen += seen
            time.sleep(2.0)  # stay full a while
            held_seen += len(os.listdir(held_dir)) if held_dir.exists() else 0
            daemon_died += daemon.poll() is not None
            filler.unlink(missing_ok=True)
        daemon.send_signal(signal.SIGTERM)
        wait_idle(daemon, 60)
        psutil_wait(data)
        final = start_daemon(data, "--workers", "2", "--exit-when-idle", *FAST)
        started.append(final)
        code = wait_idle(final, 600)
        return {
            "trials": trials,
            "trials_with_a_deferral": deferrals_seen,
            "deferral_reasons": sorted(reasons),
            "held_while_full": held_seen,
            "daemon_died": daemon_died,
            "final_exit": code,
            **audit(data, expected),
        }
    finally:  # whatever happened, leave no daemon, worker or mount behind
        for p in started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for w in workers_of(mnt / "data"):
            w.kill()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def mlflow_outage(trials: int) -> dict:
    """A real MLflow server stopped for a few seconds, several times, while work runs:
    every request gets exactly one parent run and every attempt one child run."""
    sys.path.insert(0, str(REPO))
    from mlflow.tracking import MlflowClient

    from tests.servers import MlflowServer

    root = Path(tempfile.mkdtemp(prefix="sdgen-mlflow-"))
    server = MlflowServer(root)
    t0 = time.monotonic()
    server.start()
    start_s = time.monotonic() - t0
    data = root / "data"
    exp = "soak-outage"
    track = server.env
    expected = {}
    for i in range(3):
        rid = sdgen(
            data,
            "submit",
            "--engine",
            "dry-run",
            "--width",
            "128",
            "--height",
            "128",
            "--prompt",
            f"outage {i}",
            "--images",
            "40",
            "--batch-size",
            "2",
            "--seed",
            str(i),
            "--experiment",
            exp,
            **track,
        ).stdout.strip()
        expected[rid] = 40
    daemon = start_daemon(data, "--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY=0.2, **track)
    rng = random.Random(5)
    downtime = 0.0
    for _ in range(trials):
        time.sleep(rng.uniform(1.0, 3.0))
        server.stop()
        down = rng.uniform(3.0, 6.0)
        time.sleep(down)
        t = time.monotonic()
        server.start()
        downtime += down + time.monotonic() - t
    final_wait = time.monotonic() + 300
    client = MlflowClient(server.uri)
    tickets = 3 * 20
    parents = children = 0
    while time.monotonic() < final_wait:
        e = client.get_experiment_by_name(exp)
        runs = client.search_runs([e.experiment_id], max_results=1000) if e else []
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        if len(parents) >= 3 and all(r.info.status == "FINISHED" for r in parents) and len(children) >= tickets:
            break
        time.sleep(1)
    daemon.send_signal(signal.SIGTERM)
    code = wait_idle(daemon, 60)
    server.stop()
    out = audit(data, expected)
    per_request = {}
    for r in parents:
        per_request[r.data.tags.get("sdgen.request_id")] = per_request.get(r.data.tags.get("sdgen.request_id"), 0) + 1
    child_status = {}
    for r in children:
        child_status[r.info.status] = child_status.get(r.info.status, 0) + 1
    return {
        "outages": trials,
        "server_down_s": round(downtime, 1),
        "server_start_s": round(start_s, 1),
        "parent_runs": len(parents),
        "requests": len(expected),
        "duplicate_parents": sum(n - 1 for n in per_request.values() if n > 1),
        "child_runs": len(children),
        "child_status": child_status,
        "tickets": tickets,
        "final_exit": code,
        **out,
    }


def infra(quick: bool) -> dict:
    out = {}
    for name, fn, n_quick, n_full in (
        ("two_daemons", two_daemons, 3, 10),
        ("clock_skew", clock_skew, 2, 6),
        ("disk_full", disk_full, 1, 5),
        ("mlflow_outage", mlflow_outage, 0, 3),
    ):
        n = n_quick if quick else n_full
        if n == 0:
            continue
        t = time.monotonic()
        out[name] = fn(n)
        out[name]["wall_s"] = round(time.monotonic() - t, 1)
        print(name, json.dumps(out[name]), flush=True)
    return out
