"""MLflow tracking against a real `mlflow server` on 127.0.0.1, read back with MlflowClient."""

import os
import signal
import time
import uuid

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, kill_workers, sdgen, sdgen_env, status_json, wait_for  # noqa: F401
from tests.harness import workers_of

pytestmark = pytest.mark.slow


def submit(data, server, experiment, *args) -> str:
    env = sdgen_env(data, **server.env)
    return sdgen(
        data,
        "submit",
        "--engine",
        "dry-run",
        "--width",
        "128",
        "--height",
        "128",
        "--experiment",
        experiment,
        *args,
        env=env,
        check=True,
    ).stdout.strip()


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} not created"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def artifacts(client, run_id, path=None):
    return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_a_multi_ticket_request_makes_a_run_tree(data, daemon, mlflow_server):
    exp = f"tree-{uuid.uuid4().hex[:6]}"
    rid = submit(
        data,
        mlflow_server,
        exp,
        "--prompt",
        "a fox",
        "--images",
        "5",
        "--batch-size",
        "2",
        "--seed",
        "10",
        "--name",
        "foxes",
    )
    d = daemon("--workers", "2", "--exit-when-idle", "--system-metrics", *FAST, **mlflow_server.env)
    assert d.wait(120) == 0, d.output()
    client = MlflowClient(mlflow_server.uri)
    [parent], children = runs_of(client, exp)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "foxes"
    assert all(c.data.metrics["system/rss_mb"] > 10 for c in children)
    assert parent.data.tags["sdgen.request_id"] == rid and parent.data.tags["sdgen.launcher"] == "local"
    assert parent.data.params["images"] == "5" and parent.data.params["batch_size"] == "2"
    assert parent.data.params["seed"] == "10" and parent.data.params["prompts"] == "a fox"
    assert parent.data.metrics["images_done"] == 5
    assert artifacts(client, parent.info.run_id) == ["contact_sheet.png", "manifest.json", "request.yaml"]
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    seeds = sorted(c.data.params["seeds"] for c in children)
    assert seeds == ["10,11", "12,13", "14"]
    for c in children:
        assert c.data.tags["sdgen.attempt"] == "1" and c.data.tags["sdgen.worker"]
        assert c.data.params["engine"] == "dry-run" and c.data.params["size"] == "128x128"
        assert c.data.metrics["seconds_per_image"] >= 0
        images = artifacts(client, c.info.run_id, "images")
        assert len(images) == int(c.data.params["batch"])
    assert os.listdir(data / "spool" / "events") == []


def test_a_failed_attempt_is_failed_and_its_retry_finished(data, daemon, mlflow_server):
    exp = f"retry-{uuid.uuid4().hex[:6]}"
    rid = submit(data, mlflow_server, exp, "--prompt", "a", "--images", "1", "--seed", "1")
    (data / "outputs").mkdir(parents=True, exist_ok=True)
    (data / "outputs" / rid).write_text("a file where the folder goes: an I/O error")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, **mlflow_server.env)
    wait_for(lambda: os.listdir(data / "spool" / "tickets" / "deferred"), what="a deferred ticket")
    (data / "outputs" / rid).unlink()
    assert d.wait(120) == 0, d.output()
    client = MlflowClient(mlflow_server.uri)
    [parent], children = runs_of(client, exp)
    children.sort(key=lambda c: int(c.data.tags["sdgen.attempt"]))
    assert [(c.data.tags["sdgen.attempt"], c.info.status) for c in children] == [("1", "FAILED"), ("2", "FINISHED")]
    assert "FileExistsError" in children[0].data.tags["sdgen.error"]
    assert "error.txt" in artifacts(client, children[0].info.run_id)
    assert parent.info.status == "FINISHED"


def test_a_killed_worker_leaves_a_killed_run(data, daemon, mlflow_server):
    exp = f"killed-{uuid.uuid4().hex[:6]}"
    rid = submit(data, mlflow_server, exp, "--prompt", "a", "--images", "4", "--batch-size", "4", "--seed", "1")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, **mlflow_server.env, SDGEN_DRY_RUN_DELAY="0.5")
    wait_for(
        lambda: (data / "outputs" / rid).exists() and list((data / "outputs" / rid).glob("*.png")), what="an image"
    )
    [worker] = workers_of(data)
    worker.send_signal(signal.SIGKILL)
    assert d.wait(120) == 0, d.output()
    client = MlflowClient(mlflow_server.uri)
    [parent], children = runs_of(client, exp)
    statuses = sorted((c.data.tags["sdgen.attempt"], c.info.status) for c in children)
    assert statuses == [("1", "KILLED"), ("2", "FINISHED")]
    killed = next(c for c in children if c.info.status == "KILLED")
    assert "exited with code -9" in killed.data.tags["sdgen.error"]
    assert parent.info.status == "FINISHED"
    assert not [r for r in client.search_runs([parent.info.experiment_id]) if r.info.status == "RUNNING"]


def test_a_cancelled_request_ends_killed(data, daemon, mlflow_server):
    exp = f"cancel-{uuid.uuid4().hex[:6]}"
    rid = submit(data, mlflow_server, exp, "--prompt", "a", "--images", "20", "--batch-size", "5", "--seed", "1")
    d = daemon("--workers", "1", "--exit-when-idle", *FAST, **mlflow_server.env, SDGEN_DRY_RUN_DELAY="0.3")
    wait_for(
        lambda: (data / "outputs" / rid).exists() and list((data / "outputs" / rid).glob("*.png")), what="an image"
    )
    sdgen(data, "cancel", rid, check=True)
    assert d.wait(120) == 0, d.output()
    [parent], children = runs_of(MlflowClient(mlflow_server.uri), exp)
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED"]  # the running ticket, stopped


def test_the_embedded_default_needs_no_server(data):
    env = sdgen_env(data, SDGEN_TRACKING="on")
    proc = sdgen(
        data,
        "run",
        "--prompt",
        "a",
        "--images",
        "3",
        "--engine",
        "dry-run",
        "--width",
        "128",
        "--height",
        "128",
        *FAST,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    [parent], children = runs_of(client, "sdgen")
    assert parent.info.status == "FINISHED" and len(children) == 3
    stored = list((data / "mlflow" / "artifacts").rglob("*.png"))
    assert len([p for p in stored if p.parent.name == "images"]) == 3
    assert (data / "mlflow" / "mlflow.db").exists() and not (data.parent / "mlruns").exists()


def test_workers_never_get_mlflow_run_id(spool, monkeypatch):
    from sdgen.launchers.local import LocalLauncher

    monkeypatch.setenv("MLFLOW_RUN_ID", "hijack")
    launcher = LocalLauncher(spool.layout.root, max_workers=1, idle_exit=30, pin_gpus=False)
    launcher.launch(time.time())
    [proc] = launcher.procs.values()
    env = open(f"/proc/{proc.popen.pid}/environ", "rb").read().split(b"\0")
    launcher.stop_all(grace=10)
    assert not [e for e in env if e.startswith(b"MLFLOW_RUN_ID=")]


def test_an_mlflow_outage_loses_nothing_and_catches_up(data, daemon, mlflow_server):
    """Runs last: it stops the session's server and starts it again."""
    exp = f"outage-{uuid.uuid4().hex[:6]}"
    rid = submit(data, mlflow_server, exp, "--prompt", "a", "--images", "24", "--batch-size", "2", "--seed", "1")
    d = daemon("--workers", "1", *FAST, **mlflow_server.env, SDGEN_DRY_RUN_DELAY="0.25")
    client = MlflowClient(mlflow_server.uri)
    wait_for(lambda: client.get_experiment_by_name(exp), timeout=60, what="experiment")
    mlflow_server.stop()
    wait_for(lambda: status_json(data)[0]["images_done"] == 24, timeout=120, what="all images while down")
    row = status_json(data)[0]
    assert row["state"] == "done"
    assert row["tracking_backlog"] > 0 and "MLflow unreachable" in row["tracking_error"]
    table = sdgen(data, "status", check=True).stdout
    assert "unreachable since" in table
    mlflow_server.start()
    client = MlflowClient(mlflow_server.uri)

    def caught_up():
        parents, children = runs_of(client, exp)
        return parents and parents[0].info.status == "FINISHED" and len(children) == 12

    wait_for(caught_up, timeout=120, interval=1, what="tracking to catch up")
    out = d.output()
    assert out.count("is not answering") == 1 and "Traceback" not in out
    assert len(list((data / "outputs" / rid).glob("*.png"))) == 24
    d.signal(signal.SIGTERM)
    assert d.wait(60) == 0


def test_credentials_in_a_tracking_uri_are_never_written():
    from sdgen.tracking.mlflow_log import redact

    assert redact("https://alice:s3cret@mlflow.example.com/path") == "https://mlflow.example.com/path"
    assert redact("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"


def test_a_sweep_logs_its_grid_prompts_and_combinations(spool, mlflow_server):
    from sdgen.tracking.mlflow_log import Tracker
    from tests.conftest import DRY, generate

    exp = f"sweep-{uuid.uuid4().hex[:6]}"
    sweep = "sweep: {guidance: [5, 9], steps: [2, 3]}"
    generate(spool, DRY + f"prompt: a {{red|blue}} fox\nimages: 1\nseed: 5\nexperiment: {exp}\n{sweep}\n")
    tracker = Tracker(spool, uri=mlflow_server.uri)  # what the daemon runs, here in-process
    client = MlflowClient(mlflow_server.uri)
    wait_for(lambda: tracker.step(time.time()) and runs_of(client, exp)[0][0].info.status == "FINISHED", timeout=60)
    [parent], children = runs_of(client, exp)
    assert artifacts(client, parent.info.run_id) == ["contact_sheet.png", "grid.png", "manifest.json", "request.yaml"]
    [given] = parent.inputs.dataset_inputs
    assert given.dataset.name.endswith(" prompts") and '"num_rows": 2' in given.dataset.profile
    assert {(t.key, t.value) for t in given.tags} == {("mlflow.data.context", "generation")}
    assert len(children) == 8
    seen = {(c.data.params["sweep.guidance"], c.data.params["sweep.steps"], c.data.params["prompt"]) for c in children}
    assert seen == {(g, s, p) for g in ("5.0", "9.0") for s in ("2", "3") for p in ("a red fox", "a blue fox")}
    assert {c.data.params["template"] for c in children} == {"a {red|blue} fox"}
    assert all(c.data.params["steps"] == c.data.params["sweep.steps"] for c in children)
