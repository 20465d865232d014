"""The tracker in-process against the embedded MLflow store (SQLite + local artifacts):
a failure of one request's logging is that request's alone, events that can never be
logged are set aside, and experiment names never pick where files go."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdgen.spool.request import parse_request
from sdgen.worker.loop import Worker

pytestmark = pytest.mark.slow  # mlflow's import and store creation take seconds

A, B = "20261126-000000-aaaaaa", "20261126-000000-bbbbbb"


@pytest.fixture
def tracker(spool, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    from sdgen.tracking.mlflow_log import Tracker

    return Tracker(spool)


def make(spool, rid, experiment, images=1):
    spool.accept(
        rid,
        parse_request(
            f"prompt: a fox\nimages: {images}\nengine: dry-run\nwidth: 128\n"
            f"height: 128\nexperiment: {json.dumps(experiment)}\n"
        ),
        source="t",
        now=0.0,
    )
    while Worker(spool, "w1").step() is not None:
        pass


def runs(tracker, experiment):
    exp = tracker.client.get_experiment_by_name(experiment)
    return [] if exp is None else tracker.client.search_runs([exp.experiment_id])


def status(spool) -> dict:
    return json.loads(spool.layout.tracking_status.read_text())


def test_one_request_that_cannot_be_logged_stops_no_other(spool, tracker, data):
    from sdgen.tracking.mlflow_log import artifact_dir_name

    make(spool, A, "ea")
    make(spool, B, "eb")
    # A's artifact folder cannot be made: a file sits where it goes (root ignores modes)
    blocker = data / "mlflow" / "artifacts" / artifact_dir_name("ea")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    assert tracker.step(100.0) is True  # MLflow is up: not an outage
    assert tracker.step(100.5) is True  # (a parent ends a step after its children)
    st = status(spool)
    assert st["ok"] is True and list(st["requests"]) == [A]
    assert "NotADirectory" in st["requests"][A]["error"] or "Exists" in st["requests"][A]["error"]
    [parent_b, *children_b] = sorted(runs(tracker, "eb"), key=lambda r: "mlflow.parentRunId" in r.data.tags)
    assert parent_b.info.status == "FINISHED" and len(children_b) == 1
    assert [n for n in spool.event_names() if B in n] == []
    assert [n for n in spool.event_names() if A in n]  # A's attempt waits
    # `sdgen status` says why, for that request only
    from sdgen.cli.status import collect

    rows = {r["id"]: r for r in collect(spool)}
    assert "NotADirectory" in rows[A]["tracking_error"] or "Exists" in rows[A]["tracking_error"]
    assert "tracking_error" not in rows[B]
    # backing off: not tried again at once; once the cause is gone, it is logged
    assert st["requests"][A]["attempts"] == 1
    blocker.unlink()
    assert tracker.step(1000.0) is True and tracker.step(1000.5) is True
    assert status(spool)["requests"] == {} and spool.event_names() == []
    statuses = sorted(r.info.status for r in runs(tracker, "ea"))
    assert statuses == ["FINISHED", "FINISHED"]


def test_events_that_can_never_be_logged_are_set_aside(spool, tracker):
    make(spool, A, "ev")
    events = spool.layout.events
    good = spool.event_names()
    bad = {
        f"00000000000000000001-{A}-000001.json": b"{not json",
        f"00000000000000000002-{A}-000002.json": b"[1, 2]",
        f"00000000000000000003-{A}-000003.json": json.dumps({"kind": "\x1b[2Jboom", "request_id": A}).encode(),
        f"00000000000000000004-{B}-000004.json": json.dumps(
            {"kind": "worker-failed", "request_id": B, "worker": "w", "error": "x", "ended_at": 1}
        ).encode(),
        f"00000000000000000005-{A}-000005.json": json.dumps(
            {"kind": "attempt", "request_id": A, "ended_at": 1, "worker": "w"}
        ).encode(),
        "whatever.json": b"{}",
        f"00000000000000000006-{A}-000006.json": b"\xff\xfe",
    }
    for name, content in bad.items():
        (events / name).write_bytes(content)
    (events / f"00000000000000000007-{A}-000007.json").mkdir()
    assert tracker.step(100.0) is True and tracker.step(100.5) is True
    assert status(spool)["ok"] is True and status(spool)["requests"] == {}
    assert spool.event_names() == [f"00000000000000000007-{A}-000007.json"] or spool.event_names() == []
    left = set(os.listdir(events))
    assert not (left & set(bad)) and not (left & set(good))
    [parent, child] = sorted(runs(tracker, "ev"), key=lambda r: "mlflow.parentRunId" in r.data.tags)
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"


def test_experiment_names_never_place_artifacts_outside_the_data_directory(spool, tracker, data):
    make(spool, A, "../../x")
    assert tracker.step(100.0) is True
    exp = tracker.client.get_experiment_by_name("../../x")
    location = Path(exp.artifact_location.removeprefix("file://"))
    root = (data / "mlflow" / "artifacts").resolve()
    assert location.resolve().parent == root
    assert not (data.parent / "x").exists() and not (data.parent.parent / "x").exists()
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert stored and all(p.resolve().is_relative_to(root) for p in stored)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "\x00", "\u202e..", "x" * 500, "..\\..\\x"])
def test_artifact_dir_names_are_one_plain_component(name):
    from sdgen.tracking.mlflow_log import artifact_dir_name

    d = artifact_dir_name(name)
    assert "/" not in d and "\\" not in d and not d.startswith(".") and len(d) < 100
    assert d.isascii() and d.isprintable() and d != artifact_dir_name(name + "1")


def test_only_unreachable_servers_are_outages():
    import socket

    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sdgen.tracking.mlflow_log import is_outage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(Exception) as e:
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("x")
    assert is_outage(e.value)
    assert is_outage(requests.ConnectionError("refused"))
    assert is_outage(ConnectionRefusedError(111, "Connection refused"))
    assert not is_outage(MlflowException("Invalid value for parameter", error_code="INVALID_PARAMETER_VALUE"))
    assert not is_outage(NotADirectoryError(20, "Not a directory"))
    assert not is_outage(KeyError("request_id"))
