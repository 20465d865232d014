"""Issue 15, "A newcomer's first hour": status detail, list filters, help, the daemon line,
option typos, submit overrides, attempt numbers across retries, the output index, the
per-user weight cache and resubmit. Each runs the real CLI in processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdgen.spool.request import parse_request
from tests.conftest import sdgen, status_json

DRY = "engine: dry-run\nweights: random\nwidth: 128\nheight: 128\n"


def accept(spool, rid: str, text: str):
    return spool.accept(rid, parse_request(text + DRY), source="t", now=0.0)


def events(data: Path) -> list[dict]:
    folder = data / "spool" / "events"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def worker_once(data: Path):
    return sdgen(data, "worker", "--max-tickets", "1", "--idle-exit", "1", timeout=120)


def test_attempt_numbers_keep_counting_across_a_retry(spool):
    rid = "20261126-000000-aaaaaa"
    accept(spool, rid, "prompt: a fox\nimages: 1\nseed: 1\n")
    data = spool.layout.root
    # a file where the output folder goes: every attempt fails (an I/O error, transient)
    (data / "outputs").mkdir(parents=True, exist_ok=True)
    (data / "outputs" / rid).write_text("in the way")
    worker_once(data)
    assert [e["attempt"] for e in events(data)] == [1]
    assert "1 ticket(s)" in sdgen(data, "retry", rid, check=True).stdout
    worker_once(data)
    # before: the retried ticket's attempt was numbered 1 again (two MLflow runs "attempt 1")
    assert sorted(e["attempt"] for e in events(data)) == [1, 2]
    (data / "outputs" / rid).unlink()
    sdgen(data, "retry", rid, check=True)
    worker_once(data)
    done = json.loads(next((data / "spool" / "tickets" / "done").glob("*.json")).read_text())
    assert done["result"]["attempt"] == 3


def test_the_output_folder_says_which_prompt_each_image_is(spool):
    rid = "20261126-000000-bbbbbb"
    accept(spool, rid, "prompts: [a red fox, 'a grey wolf, at night']\nimages: 2\nseed: 7\nname: animals\n")
    data = spool.layout.root
    out = data / "outputs" / rid
    out.mkdir(parents=True)
    for _ in range(4):
        assert worker_once(data).returncode == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "0000-000000-7.png", "0000-000001-8.png", "0001-000000-7.png", "0001-000001-8.png"]
    index = json.loads((out / "index.json").read_text())
    assert index["prompts"] == {"0": "a red fox", "1": "a grey wolf, at night"} and index["seed"] == 7
    import csv
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert [(r["file"], r["seed"], r["prompt"]) for r in rows] == [
        ("0000-000000-7.png", "7", "a red fox"), ("0000-000001-8.png", "8", "a red fox"),
        ("0001-000000-7.png", "7", "a grey wolf, at night"), ("0001-000001-8.png", "8", "a grey wolf, at night")]
    assert not list(out.glob(".*.part"))
