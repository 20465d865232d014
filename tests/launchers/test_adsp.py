"""The adsp launcher end to end: the daemon drives ADSP jobs through a fake ae5-tools whose
jobs are real `sdgen worker` processes (tests/fakes/README.md)."""

import json
import os
import secrets
import signal
import time

import pytest

from tests.conftest import REPO, sdgen, status_json, submit, wait_for

pytestmark = pytest.mark.slow

PASSWORD = "pw-" + secrets.token_hex(8)
FAST = ("--launcher", "adsp", "--rescan", "0.3", "--lease-timeout", "4", "--worker-idle-exit", "2")


@pytest.fixture
def ae5(tmp_path):
    fake_dir = tmp_path / "fake-ae5"
    env = dict(
        PYTHONPATH=f"{REPO / 'tests' / 'fakes'}{os.pathsep}{REPO}",
        FAKE_AE5_DIR=str(fake_dir),
        AE5_HOSTNAME="ae5.example.com",
        AE5_USERNAME="alice",
        AE5_PASSWORD=PASSWORD,
        TOOL_PROJECT_URL=f"https://ae5.example.com/projects/{secrets.token_hex(16)}/sessions/x",
    )
    env["dir"] = fake_dir
    yield env
    state = fake_state(fake_dir)
    for run in state["runs"].values():
        try:
            os.killpg(run["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def fake_state(fake_dir):
    try:
        return json.loads((fake_dir / "state.json").read_text())
    except FileNotFoundError:
        return {"jobs": {}, "runs": {}}


def jobs_created(fake_dir) -> int:
    return len([p for p in fake_dir.iterdir() if p.is_dir()]) if fake_dir.exists() else 0


def start(daemon, ae5, *args, **env):
    e = {k: v for k, v in ae5.items() if k != "dir"}
    e.update(env)
    return daemon(*FAST, *args, **e)


def flag(ae5, name, on=True):
    ae5["dir"].mkdir(parents=True, exist_ok=True)
    path = ae5["dir"] / name
    path.touch() if on else path.unlink()


def no_secret_anywhere(data, ae5, daemon_output):
    assert PASSWORD not in daemon_output
    for path in list(data.rglob("*")) + list(ae5["dir"].rglob("*")):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    for job in fake_state(ae5["dir"])["jobs"].values():
        assert not [k for k in job["variables"] if k.startswith(("AE5_", "MLFLOW"))]


def test_a_request_completes_through_adsp_jobs(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "12", "--batch-size", "2", "--seed", "1")
    d = start(daemon, ae5, "--workers", "2", "--exit-when-idle", SDGEN_TRACKING="on")  # embedded MLflow
    assert d.wait(120) == 0, d.output()
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 12
    assert (data / "mlflow" / "mlflow.db").exists()  # grepped for the password below
    assert status_json(data)[0]["state"] == "done"
    assert 1 <= jobs_created(ae5["dir"]) <= 2
    state = fake_state(ae5["dir"])
    assert state["jobs"] == {} and state["runs"] == {}  # finished jobs and runs deleted
    given = [json.loads(p.read_text()) for p in ae5["dir"].glob("*/variables.json")]
    assert len(given) == jobs_created(ae5["dir"]) >= 1
    for variables in given:  # every run knew its worker id and data directory, and no secret
        assert variables["SDGEN_WORKER_ID"] and variables["SDGEN_DATA"] == str(data)
        assert not [k for k in variables if k.startswith(("AE5_", "MLFLOW"))]
    no_secret_anywhere(data, ae5, d.output())


def test_a_failing_job_is_logged_and_the_work_goes_on(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    flag(ae5, "fail-jobs")
    d = start(daemon, ae5, "--workers", "1", "--exit-when-idle")
    wait_for(lambda: "ended failed" in d.output(), timeout=60, what="a failed job")
    logs = list((data / "logs").glob("worker-sdgen-w-*.log"))
    assert logs and "worker environment broken" in logs[0].read_text()
    flag(ae5, "fail-jobs", on=False)
    assert d.wait(120) == 0, d.output()
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 2


def test_a_stopped_run_gives_its_ticket_to_another_job(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "6", "--batch-size", "6", "--seed", "1")
    d = start(daemon, ae5, "--workers", "1", "--exit-when-idle", SDGEN_DRY_RUN_DELAY="0.4")
    wait_for(
        lambda: (data / "outputs" / rid).exists() and list((data / "outputs" / rid).glob("*.png")), what="an image"
    )
    [run] = fake_state(ae5["dir"])["runs"].values()
    from tests.fakes.ae5_tools import api  # noqa: F401 - same module the daemon uses

    os.environ["FAKE_AE5_DIR"] = str(ae5["dir"])
    try:
        api.AEUserSession("h", "u", "p").run_stop(run["id"])
    finally:
        del os.environ["FAKE_AE5_DIR"]
    assert d.wait(120) == 0, d.output()
    assert "ended stopped" in d.output()
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 6
    assert jobs_created(ae5["dir"]) == 2


def test_a_502_on_create_makes_no_duplicate_job(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    flag(ae5, "create-502")
    d = start(daemon, ae5, "--workers", "1", "--exit-when-idle")
    assert d.wait(120) == 0, d.output()
    assert "already exists (a retried create): adopting it" in d.output()
    assert jobs_created(ae5["dir"]) == 1
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 2


def test_an_unknown_state_is_logged_and_polled(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    flag(ae5, "unknown-state")
    d = start(daemon, ae5, "--workers", "1", "--exit-when-idle", SDGEN_DRY_RUN_DELAY="1")
    wait_for(lambda: "unknown state 'suspended'" in d.output(), timeout=60, what="unknown state warning")
    flag(ae5, "unknown-state", on=False)
    assert d.wait(120) == 0, d.output()
    assert d.output().count("unknown state 'suspended'") == 1
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 2


def test_an_unreachable_ae5_is_waited_out(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    flag(ae5, "unreachable")
    d = start(daemon, ae5, "--workers", "1", "--exit-when-idle")
    wait_for(lambda: "AE5 call failed" in d.output(), timeout=60, what="the AE5 warning")
    time.sleep(3)
    assert d.proc.poll() is None  # still running
    flag(ae5, "unreachable", on=False)
    assert d.wait(120) == 0, d.output()
    assert d.output().count("AE5 call failed") == 1 and "Traceback" not in d.output()
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 2
    assert jobs_created(ae5["dir"]) == 1


def test_a_restarted_daemon_re_adopts_its_jobs(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "8", "--batch-size", "2", "--seed", "1")
    d = start(daemon, ae5, "--workers", "1", SDGEN_DRY_RUN_DELAY="0.3")
    wait_for(
        lambda: (data / "outputs" / rid).exists() and list((data / "outputs" / rid).glob("*.png")), what="an image"
    )
    os.killpg(d.proc.pid, signal.SIGKILL)  # the daemon only: ADSP jobs live on
    d.proc.wait()
    d2 = start(daemon, ae5, "--workers", "1", "--exit-when-idle")
    assert d2.wait(120) == 0, d2.output()
    assert "re-adopting 1 ADSP job(s)" in d2.output()
    assert jobs_created(ae5["dir"]) == 1
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 8


def test_cancel_stops_jobs_left_without_work(data, daemon, ae5):
    rid = submit(data, "--prompt", "a", "--images", "30", "--batch-size", "3", "--seed", "1")
    d = start(daemon, ae5, "--workers", "1", "--worker-idle-exit", "300", SDGEN_DRY_RUN_DELAY="0.3")
    wait_for(
        lambda: (data / "outputs" / rid).exists() and list((data / "outputs" / rid).glob("*.png")), what="an image"
    )
    sdgen(data, "cancel", rid, check=True)
    wait_for(lambda: "no work left for it" in d.output(), timeout=60, what="the job to be stopped")
    wait_for(lambda: fake_state(ae5["dir"])["runs"] == {}, timeout=60, what="the run to be cleaned up")
    assert "ended stopped" in d.output()


def test_adsp_profiles_lists_gpus(data, ae5):
    env = {k: v for k, v in ae5.items() if k != "dir"}
    from tests.conftest import sdgen_env

    proc = sdgen(data, "adsp", "profiles", env=sdgen_env(data, **env))
    assert proc.returncode == 0, proc.stderr
    assert "gpu-large" in proc.stdout and "1 GPU" in proc.stdout


def test_without_ae5_tools_the_launcher_says_how_to_install(data):
    proc = sdgen(data, "daemon", "--launcher", "adsp", "--exit-when-idle")
    assert proc.returncode == 2 and "conda install -c ae5-admin ae5-tools" in proc.stderr


def test_anaconda_project_commands_exist():
    import yaml

    spec = yaml.safe_load((REPO / "anaconda-project.yml").read_text())
    assert {
        "workflow:main:local",
        "workflow:main:adsp",
        "daemon",
        "worker",
        "submit",
        "status",
        "bootstrap",
        "test",
    } <= set(spec["commands"])
    assert {"MLFLOW_EXPERIMENT_NAME", "ADSP_WORKER_MAX"} <= set(spec["variables"])
    assert "ae5-admin::ae5-tools" in spec["packages"]
    for name, cmd in spec["commands"].items():
        words = cmd["unix"].split()
        if words[:3] != ["python", "-m", "sdgen"]:  # sdgen runs from the project directory
            continue
        sub = [w for w in words[3:] if not w.startswith("-")][:1]
        proc = sdgen(REPO / "tmp-data", *sub, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
    assert "-m sdgen worker" in spec["commands"]["worker"]["unix"]


def test_job_variables_carry_the_engine_settings_and_no_credential(monkeypatch, tmp_path):
    from sdgen.launchers.adsp import worker_variables

    for k, v in {
        "SDGEN_PRECISION": "float16",
        "SDGEN_GROUP_IMAGES": "8",
        "KERAS_BACKEND": "jax",
        "SDGEN_API_TOKEN": "t0ken",
        "AE5_PASSWORD": "pw",
        "MLFLOW_TRACKING_PASSWORD": "pw2",
        "SDGEN_TRACKING": "on",
        "SDGEN_WORKER_ID": "the-daemons-own",
    }.items():
        monkeypatch.setenv(k, v)
    variables = worker_variables(tmp_path, "w-1", 30.0, 5.0)
    assert {
        "SDGEN_PRECISION": "float16",
        "SDGEN_GROUP_IMAGES": "8",
        "KERAS_BACKEND": "jax",
    }.items() <= variables.items()
    assert variables["SDGEN_WORKER_ID"] == "w-1" and variables["SDGEN_DATA"] == str(tmp_path)
    assert not {"SDGEN_API_TOKEN", "AE5_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "SDGEN_TRACKING"} & set(variables)


def live_runs(ae5) -> list[dict]:
    from tests.fakes.ae5_tools.api import _pid_alive

    return [r for r in fake_state(ae5["dir"])["runs"].values() if _pid_alive(r["pid"])]


def test_a_one_shot_run_leaves_nothing_on_ae5(data, daemon, ae5):
    """Jobs that would idle 300 s: the daemon stops them, deletes their jobs and runs, and
    exits only once AE5 has none left."""
    rid = submit(data, "--prompt", "a", "--images", "4", "--batch-size", "2", "--seed", "1")
    d = start(daemon, ae5, "--workers", "2", "--worker-idle-exit", "300", "--exit-when-idle")
    assert d.wait(90) == 0, d.output()
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 4
    assert jobs_created(ae5["dir"]) >= 1
    state = fake_state(ae5["dir"])
    assert state["jobs"] == {} and state["runs"] == {}
    assert live_runs(ae5) == []
    assert json.loads((data / "spool" / "adsp-jobs.json").read_text()) == {}
    assert "stopped by sdgen" in d.output() and " ERROR " not in d.output()


def test_a_one_shot_run_with_keep_jobs_leaves_them_stopped(data, daemon, ae5):
    submit(data, "--prompt", "a", "--images", "2", "--seed", "1")
    d = start(daemon, ae5, "--workers", "1", "--worker-idle-exit", "300", "--exit-when-idle", "--adsp-keep-jobs")
    assert d.wait(90) == 0, d.output()
    state = fake_state(ae5["dir"])
    assert len(state["jobs"]) == 1 and len(state["runs"]) == 1
    assert live_runs(ae5) == []


def test_a_bad_variable_name_is_not_a_job_variable(monkeypatch, tmp_path, caplog):
    from sdgen.launchers.adsp import worker_variables

    monkeypatch.setenv("SDGEN_X;touch pwned;Y", "1")
    monkeypatch.setenv("SDGEN_PRECISION", "float16")
    variables = worker_variables(tmp_path, "w-1", 30.0, 5.0)
    assert "SDGEN_X;touch pwned;Y" not in variables and variables["SDGEN_PRECISION"] == "float16"
    assert "not a plain environment variable name" in caplog.text
