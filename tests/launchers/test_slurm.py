"""The slurm launcher against a real single-node Slurm (tests/servers.py): the daemon submits
real batch jobs that run real `sdgen worker` processes on the shared data directory."""

import json
import os
import shutil
import signal
import time

import pytest

from sdgen.exceptions import UserError
from sdgen.launchers.slurm import (
    JobOptions,
    batch_script,
    check_env_names,
    final_outcome,
    parse_job_record,
    parse_runtime,
    sbatch_args,
)
from tests.conftest import sdgen, sdgen_env, status_json, submit, wait_for
from tests.harness import daemons_of, kill_all

SECRET = "s3cret-" + str(time.time_ns())
FAST = ("--launcher", "slurm", "--rescan", "0.3", "--lease-timeout", "4")


# -- pure parts -----------------------------------------------------------------------------
def test_sbatch_args_carry_every_cluster_option():
    opts = JobOptions(
        partition="gpu",
        gres="gpu:1",
        gpus="a100:1",
        time_limit="4:00:00",
        account="proj",
        qos="high",
        cpus=8,
        mem="32G",
        extra=("--constraint=a100",),
    )
    args = sbatch_args("sdgen-w-x", "/d/logs/worker-sdgen-w-x.log", opts)
    assert args[:5] == [
        "--parsable",
        "--job-name=sdgen-w-x",
        "--output=/d/logs/worker-sdgen-w-x.log",
        "--export=NONE",
        "--no-requeue",
    ]
    assert args[5:] == [
        "--partition=gpu",
        "--gres=gpu:1",
        "--gpus=a100:1",
        "--time=4:00:00",
        "--account=proj",
        "--qos=high",
        "--cpus-per-task=8",
        "--mem=32G",
        "--constraint=a100",
    ]
    assert sbatch_args("n", "o", JobOptions())[5:] == []


def test_the_batch_script_quotes_its_environment():
    text = batch_script({"SDGEN_DATA": "/data with space/$HOME", "A": "x'y"}, "/opt/py/bin/python")
    assert "export SDGEN_DATA='/data with space/$HOME'" in text
    # the version-free form that never imports a folder named sdgen from the job's cwd
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("exec /opt/py/bin/python -c ") and last.endswith(" sdgen worker")


def test_slurm_records_are_read():
    assert parse_runtime("00:00:03") == 3 and parse_runtime("1-02:00:05") == 93605 and parse_runtime("12:07") == 727
    assert parse_runtime("INVALID") == 0
    rec = parse_job_record("JobId=7 JobName=w JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 RunTime=00:00:02")
    assert (rec["JobState"], rec["ExitCode"], rec["RunTime"]) == ("FAILED", "3:0", "00:00:02")
    assert final_outcome("COMPLETED", "0:0") == 0
    assert final_outcome("FAILED", "127:0") == 127 and final_outcome("OUT_OF_MEMORY", "0:125") == 1
    for outside in ("CANCELLED", "CANCELLED+", "TIMEOUT", "PREEMPTED", "NODE_FAIL"):
        assert final_outcome(outside, "0:15") is None


@pytest.mark.parametrize("name", ["AE5_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "API_KEY"])
def test_credentials_cannot_be_passed_to_jobs(name):
    with pytest.raises(UserError, match="credential"):
        check_env_names((name,))


# -- against the real cluster -----------------------------------------------------------------
@pytest.fixture
def slurm(slurm_cluster, data):
    yield slurm_cluster
    # The test's daemon would submit a new job for each one cancelled below: it goes first
    # (this teardown runs before the daemon fixture's).
    kill_all(daemons_of(data))
    slurm_cluster.run("scancel", "--full", "-u", "root", check=False)
    wait_for(lambda: not jobs(slurm_cluster, active_only=True), timeout=30, what="jobs to end")


def jobs(cluster, active_only=False) -> dict[str, str]:
    """Job id -> state of sdgen's jobs (final states too, unless active_only)."""
    out = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T", check=False).stdout
    rows = [line.split("|") for line in out.splitlines() if "|sdgen-w-" in line]
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL"}
    return {i: s for i, _, s in rows if not (active_only and s in final)}


def submitted_since(cluster, before: set[str]) -> dict[str, str]:
    return {i: s for i, s in jobs(cluster).items() if i not in before}


def start(daemon, slurm, *args, **env):
    return daemon(*FAST, *args, **slurm.env, **env)


def test_a_request_completes_through_slurm_jobs_with_at_most_n_running(data, daemon, slurm):
    before = set(jobs(slurm))
    rid = submit(data, "--prompt", "a", "--images", "24", "--batch-size", "2", "--seed", "1")
    d = start(
        daemon,
        slurm,
        "--max-jobs",
        "2",
        "--worker-idle-exit",
        "2",
        "--exit-when-idle",
        SDGEN_DRY_RUN_DELAY="0.2",
        AE5_PASSWORD=SECRET,
        MLFLOW_TRACKING_TOKEN=SECRET,
    )
    most = 0
    while d.proc.poll() is None:
        most = max(most, sum(1 for s in submitted_since(slurm, before).values() if s in ("PENDING", "RUNNING")))
        time.sleep(0.1)
    assert d.wait(5) == 0, d.output()[-3000:]
    assert status_json(data)[0]["state"] == "done" and len(list((data / "outputs" / rid).glob("*.png"))) == 24
    mine = submitted_since(slurm, before)
    assert most == 2 and len(mine) == 2, (most, mine)
    done_by = {json.loads(p.read_text())["result"]["worker"] for p in (data / "spool/tickets/done").iterdir()}
    # the daemon exits only once its jobs are out of the queue (left when idle, or cancelled)
    assert set(mine.values()) <= {"COMPLETED", "CANCELLED"}, mine
    # every job kept its output; no credential reached a job's script, output or Slurm's record
    names = set()
    for job_id in mine:
        record = slurm.run("scontrol", "show", "job", job_id).stdout
        assert SECRET not in record
        names.add(name := parse_job_record(record.replace("\n", " "))["JobName"])
        log = (data / "logs" / f"worker-{name}.log").read_text()
        assert "worker" in log
        assert SECRET not in log and SECRET not in (data / "logs" / f"worker-{name}.sbatch").read_text()
    assert done_by <= names  # the workers in the jobs did the tickets
    assert SECRET not in d.output()


def test_a_job_failing_at_start_up_is_reported_and_not_resubmitted_forever(data, daemon, slurm, mlflow_server):
    from mlflow.tracking import MlflowClient

    before = set(jobs(slurm))
    exp = "slurm-start-up-" + str(time.time_ns())
    tracked = mlflow_server.env
    sdgen(
        data,
        "submit",
        "--engine",
        "dry-run",
        "--width",
        "128",
        "--height",
        "128",
        "--prompt",
        "a",
        "--images",
        "4",
        "--seed",
        "1",
        "--experiment",
        exp,
        env=sdgen_env(data, **tracked),
        check=True,
    )
    d = start(daemon, slurm, "--max-jobs", "1", "--slurm-python", "/nonexistent/bin/python", **tracked)
    wait_for(lambda: "no more workers will be launched" in d.output(), timeout=90, what="the launcher to stop")
    time.sleep(3)
    failed = submitted_since(slurm, before)
    assert len(failed) == 3 and set(failed.values()) == {"FAILED"}, failed
    row = status_json(data)[0]
    assert row["state"] == "pending" and "3 workers in a row failed at start-up" in row["launcher_error"]
    assert "exit code 127:0" in row["launcher_error"]
    table = sdgen(data, "status", check=True).stdout
    assert "launcher slurm stopped launching workers" in table and "restart the daemon" in table
    name = row["launcher_error"].split("last: ")[1].split()[0]
    assert "/nonexistent/bin/python" in (data / "logs" / f"worker-{name}.log").read_text()
    assert "Traceback" not in d.output()
    # no ticket was held, so no child run: each failed job's output is on the request's run
    client = MlflowClient(mlflow_server.uri)

    def failures_logged():
        e = client.get_experiment_by_name(exp)
        runs = client.search_runs([e.experiment_id]) if e else []
        return runs and [a.path for a in client.list_artifacts(runs[0].info.run_id, "worker-failures")]

    logged = wait_for(failures_logged, timeout=60, interval=0.5, what="worker failures in MLflow")
    assert len(logged) == 3 and f"worker-failures/{name}.txt" in logged
    # a restart (after fixing the cause) clears the stop and the work gets done
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    d2 = start(daemon, slurm, "--max-jobs", "1", "--worker-idle-exit", "2", "--exit-when-idle", **tracked)
    assert d2.wait(120) == 0, d2.output()[-3000:]
    assert status_json(data)[0]["state"] == "done" and "launcher_error" not in status_json(data)[0]


def test_sbatch_refusing_a_job_is_reported_the_same_way(data, daemon, slurm):
    submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    d = start(daemon, slurm, "--slurm-partition", "nosuchpartition")
    wait_for(lambda: "no more workers will be launched" in d.output(), timeout=60, what="the launcher to stop")
    err = status_json(data)[0]["launcher_error"]
    assert "was refused by sbatch" in err and "partition" in err.lower()


def test_a_job_cancelled_from_outside_has_its_tickets_finished_by_another(data, daemon, slurm):
    before = set(jobs(slurm))
    rid = submit(data, "--prompt", "a", "--images", "12", "--batch-size", "4", "--seed", "1")
    d = start(
        daemon, slurm, "--max-jobs", "1", "--worker-idle-exit", "2", "--exit-when-idle", SDGEN_DRY_RUN_DELAY="0.5"
    )
    leases = data / "spool" / "leases"
    wait_for(lambda: leases.exists() and list(leases.iterdir()), timeout=60, what="a job to claim a ticket")
    [first] = submitted_since(slurm, before)
    slurm.run("scancel", first)
    assert d.wait(120) == 0, d.output()[-3000:]
    out = d.output()
    assert f"Slurm job {first} CANCELLED" in out
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 12
    others = set(submitted_since(slurm, before)) - {first}
    assert others, "no job took over"
    # scancel sends SIGTERM first: the worker hands its ticket back unchanged at an image
    # boundary, and a job submitted after it finishes the ticket
    first_name = next(line.split()[-1][1:-1] for line in out.splitlines() if f"submitted Slurm job {first} " in line)
    log = (data / "logs" / f"worker-{first_name}.log").read_text()
    assert "handing back at the next image boundary" in log
    markers = [json.loads(p.read_text()) for p in (data / "spool/tickets/done").iterdir()]
    assert len(markers) == 3 and {m["result"]["worker"] for m in markers} - {first_name}


def test_a_restarted_daemon_re_adopts_its_running_jobs(data, daemon, slurm):
    before = set(jobs(slurm))
    rid = submit(data, "--prompt", "a", "--images", "24", "--batch-size", "2", "--seed", "1")
    d = start(daemon, slurm, "--max-jobs", "2", "--worker-idle-exit", "3", SDGEN_DRY_RUN_DELAY="0.3")
    wait_for(
        lambda: list(submitted_since(slurm, before).values()).count("RUNNING") == 2, timeout=60, what="two running jobs"
    )
    d.signal(signal.SIGKILL)
    d.wait(10)
    d2 = start(
        daemon, slurm, "--max-jobs", "2", "--worker-idle-exit", "3", "--exit-when-idle", SDGEN_DRY_RUN_DELAY="0.3"
    )
    assert d2.wait(120) == 0, d2.output()[-3000:]
    assert "re-adopting 2 Slurm job(s)" in d2.output()
    assert len(submitted_since(slurm, before)) == 2  # no duplicate was submitted
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 24


def test_cancelling_a_request_cancels_its_slurm_jobs(data, daemon, slurm):
    before = set(jobs(slurm))
    rid = submit(data, "--prompt", "a", "--images", "40", "--batch-size", "2", "--seed", "1")
    d = start(daemon, slurm, "--max-jobs", "3", "--worker-idle-exit", "300", SDGEN_DRY_RUN_DELAY="0.5")
    wait_for(
        lambda: list(submitted_since(slurm, before).values()).count("RUNNING") == 3,
        timeout=60,
        what="three running jobs",
    )
    wait_for(
        lambda: "workers (slurm): 3 RUNNING" in sdgen(data, "status").stdout,
        timeout=30,
        what="sdgen status to show the jobs",
    )
    sdgen(data, "cancel", rid, check=True)
    wait_for(
        lambda: set(submitted_since(slurm, before).values()) == {"CANCELLED"},
        timeout=60,
        what="every job of the request to be cancelled",
    )
    out = d.output()
    assert out.count("no work left for it") == 3
    assert status_json(data)[0]["state"] == "cancelled"


def test_status_says_why_jobs_wait(data, daemon, slurm):
    """Each job asks for all 8 cores of the node: one runs, the other waits for resources."""
    submit(data, "--prompt", "a", "--images", "40", "--batch-size", "2", "--seed", "1")
    start(daemon, slurm, "--max-jobs", "2", "--slurm-cpus", "8", "--worker-idle-exit", "300", SDGEN_DRY_RUN_DELAY="0.5")
    wait_for(
        lambda: "workers (slurm): 1 PENDING (Resources), 1 RUNNING" in sdgen(data, "status").stdout,
        timeout=60,
        interval=0.5,
        what="a job pending for resources in sdgen status",
    )


def test_a_hung_slurm_command_is_a_failed_call_not_an_exception(tmp_path, monkeypatch):
    """squeue that never answers: the launcher keeps its jobs and says so once."""
    import stat

    from sdgen.launchers.slurm import Job, SlurmLauncher
    from sdgen.spool.store import Spool

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).write_text("#!/bin/sh\nsleep 30\n")
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    launcher = SlurmLauncher(Spool(tmp_path / "data").ensure().layout.root, max_workers=1)
    launcher.attach()
    launcher.jobs["sdgen-w-x"] = Job("sdgen-w-x", job_id="7", state="RUNNING")
    slurm = launcher._slurm
    monkeypatch.setattr(launcher, "_slurm", lambda *cmd, timeout=30: slurm(*cmd, timeout=0.5))
    assert launcher.reap(now=0.0) == [] and launcher.running() == ["sdgen-w-x"]
    assert launcher.warn.since("Slurm") == 0.0  # said once, and when


# -- one-shot runs (--exit-when-idle, sdgen run) ---------------------------------------------
def our_active_jobs(slurm, before: set[str]) -> list[str]:
    """What plain `squeue -h` (active jobs only) lists of the jobs submitted since `before`."""
    out = slurm.run("squeue", "-h", "-o", "%i|%j", check=False).stdout
    return [line for line in out.splitlines() if "|sdgen-w-" in line and line.split("|")[0] not in before]


def test_a_one_shot_run_leaves_no_job_in_the_queue(data, slurm):
    """Workers that would idle 300 s: the run cancels them and waits until they are gone."""
    before = set(jobs(slurm))
    proc = sdgen(
        data,
        "run",
        "--prompt",
        "a",
        "--images",
        "4",
        "--batch-size",
        "2",
        "--seed",
        "1",
        "--engine",
        "dry-run",
        "--weights",
        "random",
        "--width",
        "128",
        "--height",
        "128",
        *FAST,
        "--workers",
        "2",
        "--worker-idle-exit",
        "300",
        env=sdgen_env(data, **slurm.env),
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((data / "outputs").rglob("*.png"))) == 4
    assert submitted_since(slurm, before), "no job was submitted"
    assert our_active_jobs(slurm, before) == []
    assert json.loads((data / "spool" / "slurm-jobs.json").read_text()) == {}
    assert "ERROR" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_refused_sbatch_ends_an_exit_when_idle_daemon(data, slurm):
    submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    started = time.monotonic()
    proc = sdgen(
        data,
        "daemon",
        *FAST,
        "--slurm-partition",
        "nosuchpartition",
        "--exit-when-idle",
        env=sdgen_env(data, **slurm.env),
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert time.monotonic() - started < 40
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sdgen daemon: error: launcher slurm is blocked: ") and "refused by sbatch" in last
    assert "partition" in last.lower()
    # the log it points to exists and holds what sbatch said
    name = last.split("last: ")[1].split()[0]
    assert "partition" in (data / "logs" / f"worker-{name}.log").read_text().lower()
    assert status_json(data)[0]["state"] == "pending"


# -- job environment names -----------------------------------------------------------------------
def test_a_bad_variable_name_never_reaches_a_batch_script(caplog):
    text = batch_script({"SDGEN_OK": "1", "SDGEN_X;touch /tmp/pwned;Y": "v", "1ABC": "v"}, "/py")
    assert "export SDGEN_OK=1" in text and "pwned" not in text and "1ABC" not in text
    assert "not a plain environment variable name" in caplog.text


@pytest.mark.parametrize("name", ["A;B", "1X", "A B", "$(id)"])
def test_a_bad_slurm_env_name_is_refused(name):
    with pytest.raises(UserError, match="not an environment variable name: give a name of letters"):
        check_env_names((name,))


@pytest.mark.skipif(not shutil.which("sbatch"), reason="sbatch not installed (scripts/system-packages.sh)")
def test_a_bad_slurm_env_name_stops_the_daemon_at_start(data):
    proc = sdgen(data, "daemon", "--launcher", "slurm", "--slurm-env", "A;touch x", "--exit-when-idle")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'A;touch x' is not an environment variable name" in proc.stderr


@pytest.mark.skipif(not shutil.which("sbatch"), reason="sbatch not installed (scripts/system-packages.sh)")
def test_a_bad_name_in_the_daemons_environment_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    from sdgen.launchers.slurm import SlurmLauncher

    monkeypatch.setenv("SDGEN_X;touch pwned;Y", "1")
    launcher = SlurmLauncher(tmp_path / "data", max_workers=1)
    assert "SDGEN_X;touch pwned;Y" in launcher.worker_env("w")  # collected, then left out of the script
    text = batch_script(launcher.worker_env("w"), "/py")
    assert "pwned" not in text and "'SDGEN_X;touch pwned;Y'" in caplog.text
