"""Issue 15, "A newcomer's first hour": status detail, list filters, help, the daemon line,
option typos, submit overrides, attempt numbers across retries, the output index, the
per-user weight cache and resubmit. Each runs the real CLI in processes."""

from __future__ import annotations

import json
from pathlib import Path

from sdgen.spool.request import parse_request
from tests.conftest import sdgen

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
        "0000-000000-7.png",
        "0000-000001-8.png",
        "0001-000000-7.png",
        "0001-000001-8.png",
    ]
    index = json.loads((out / "index.json").read_text())
    assert index["prompts"] == {"0": "a red fox", "1": "a grey wolf, at night"} and index["seed"] == 7
    import csv

    rows = list(csv.DictReader((out / "index.csv").open()))
    assert [(r["file"], r["seed"], r["prompt"]) for r in rows] == [
        ("0000-000000-7.png", "7", "a red fox"),
        ("0000-000001-8.png", "8", "a red fox"),
        ("0001-000000-7.png", "7", "a grey wolf, at night"),
        ("0001-000001-8.png", "8", "a grey wolf, at night"),
    ]
    assert not list(out.glob(".*.part"))


def one_line_error(proc, *needles):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_status_of_one_request_is_a_detail_view_named_by_id_prefix_or_name(spool):
    fox, wolf = "20261126-000000-aaaaaa", "20261126-000001-bbbbbb"
    accept(spool, fox, "prompts: [a red fox, a fox at night]\nimages: 1\nseed: 5\nsteps: 3\nname: foxes\n")
    accept(spool, wolf, "prompt: a wolf\nimages: 1\nseed: 6\nname: wolves\n")
    data = spool.layout.root
    (data / "outputs").mkdir(parents=True, exist_ok=True)
    (data / "outputs" / fox).write_text("in the way")  # its tickets fail (deferred, with a reason)
    worker_once(data)
    for name in ("foxes", "20261126-000000", fox):
        out = sdgen(data, "status", name, check=True).stdout
        for text in (
            "a red fox",
            "a fox at night",
            "seed      5",
            "128x128, 3 steps, guidance 7.5",
            "engine dry-run",
            "weights random",
            "batch size 1",
            str(data / "outputs" / fox),
            "ticket 0: deferred, 1 attempt(s):",
            "daemon: not running",
        ):
            assert text in out, (name, text, out)
    d = json.loads(sdgen(data, "status", "foxes", "--json", check=True).stdout)
    assert d["id"] == fox and d["prompts"] == ["a red fox", "a fox at night"] and d["seed"] == 5
    assert d["problem_tickets"][0]["state"] == "deferred" and d["problem_tickets"][0]["reason"]
    assert d["daemon"]["running"] is False
    one_line_error(sdgen(data, "status", "20261126"), "2 requests", fox, wolf, "(foxes)")
    one_line_error(sdgen(data, "status", "nothing-like-it"), "unknown request")


def test_list_filters_and_json_help_and_descriptions(spool):
    fox, wolf = "20261126-000000-aaaaaa", "20261126-000001-bbbbbb"
    accept(spool, fox, "prompt: a fox\nname: Foxes\n")
    accept(spool, wolf, "prompt: a wolf\nname: wolves\n")
    data = spool.layout.root
    sdgen(data, "cancel", wolf, check=True)
    rows = json.loads(sdgen(data, "list", "--json", check=True).stdout)
    assert {r["id"]: r["state"] for r in rows} == {fox: "pending", wolf: "cancelled"}
    assert sdgen(data, "list", "--state", "cancelled", check=True).stdout.split("\t")[0] == wolf
    assert sdgen(data, "list", "--name", "fox", check=True).stdout.split("\t")[0] == fox
    one_line_error(sdgen(data, "list", "--state", "cancled"), "did you mean 'cancelled'")
    plain = sdgen(data)
    assert plain.returncode == 0 and "usage: sdgen" in plain.stdout and "resubmit" in plain.stdout
    assert "(default: local)" in sdgen(data, "daemon", "--help", check=True).stdout
    for command in (
        "submit",
        "resubmit",
        "status",
        "list",
        "cancel",
        "retry",
        "daemon",
        "worker",
        "run",
        "weights",
        "show",
        "ui",
    ):
        text = sdgen(data, command, "--help", check=True).stdout
        description = text.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (command, text)


def test_status_says_whether_a_daemon_runs_and_hides_stale_worker_counts(spool, daemon):
    rid = "20261126-000000-aaaaaa"
    accept(spool, rid, "prompt: a fox\nimages: 1\nseed: 1\n")
    data = spool.layout.root
    # what a daemon that was killed leaves behind
    (data / "spool" / "launcher.json").write_text(
        json.dumps({"launcher": "local", "blocked": None, "since": 0, "workers": {"running": 1}})
    )
    (data / "spool" / "daemon.json").write_text(json.dumps({"pid": 1, "host": "gone", "started": 0}))
    out = sdgen(data, "status", check=True).stdout
    assert "daemon: not running — start `sdgen daemon" in out and "workers (local)" not in out
    d = daemon("--workers", "1", "--rescan", "0.2", SDGEN_DRY_RUN_DELAY="30")
    from tests.conftest import wait_for

    wait_for(lambda: "daemon: running (pid " in sdgen(data, "status").stdout, what="daemon line")
    out = sdgen(data, "status", check=True).stdout
    assert f"(pid {d.proc.pid} on " in out
    wait_for(lambda: "workers (local): 1 running" in sdgen(data, "status").stdout, what="workers line")
    d.kill_all()
    out = sdgen(data, "status", check=True).stdout
    assert "daemon: not running" in out and "workers (local)" not in out


def test_flag_typos_get_a_hint_and_options_override_a_request_file(data, tmp_path):
    one_line_error(sdgen(data, "submit", "--prompt", "a", "--stpes", "3"), "did you mean --steps")
    one_line_error(sdgen(data, "status", "--jsn"), "did you mean --json")
    request = tmp_path / "foxes.yaml"
    request.write_text("prompt: a red fox\nsteps: 40\nseed: 3\nname: foxes\n" + DRY)
    rid = sdgen(data, "submit", str(request), "--steps", "3", "--images", "2", check=True).stdout.strip()
    queued = parse_request((data / "spool" / "inbox" / f"{rid}.yaml").read_text())
    assert (queued.prompts, queued.steps, queued.images, queued.seed, queued.name) == (("a red fox",), 3, 2, 3, "foxes")
    rid = sdgen(data, "submit", str(request), "--prompt", "a wolf", check=True).stdout.strip()
    assert parse_request((data / "spool" / "inbox" / f"{rid}.yaml").read_text()).prompts == ("a wolf",)
    one_line_error(sdgen(data, "submit", str(request), "--width", "320"), "--width", "256", "384")


def test_resubmit_queues_a_cancelled_request_again(spool):
    rid = "20261126-000000-aaaaaa"
    accept(spool, rid, "prompt: a fox\nimages: 2\nseed: 11\nname: foxes\n")
    data = spool.layout.root
    sdgen(data, "cancel", rid, check=True)
    again = sdgen(data, "resubmit", "foxes", check=True).stdout.strip()
    assert again != rid
    queued = parse_request((data / "spool" / "inbox" / f"{again}.yaml").read_text())
    original = spool.read_request(rid)
    assert queued == original  # same seed: the same images
    other = sdgen(data, "resubmit", rid, "--new-seed", check=True).stdout.strip()
    assert parse_request((data / "spool" / "inbox" / f"{other}.yaml").read_text()).seed != 11
    one_line_error(sdgen(data, "resubmit", "20261199"), "unknown request")
    one_line_error(sdgen(data, "retry", rid), f"`sdgen resubmit {rid}`")
    # the copies keep the name: a name is then ambiguous, and says so
    one_line_error(sdgen(data, "status", "foxes"), "3 requests named 'foxes'")


def test_cancel_and_retry_take_a_name_or_an_id_prefix(spool):
    fox, wolf = "20261126-000000-aaaaaa", "20261126-000001-bbbbbb"
    accept(spool, fox, "prompt: a fox\nname: foxes\n")
    accept(spool, wolf, "prompt: a wolf\nname: wolves\n")
    data = spool.layout.root
    one_line_error(sdgen(data, "cancel", "20261126-"), "2 requests", fox, wolf)
    assert f"cancelled {wolf}" in sdgen(data, "cancel", "wolves", check=True).stdout
    assert fox in sdgen(data, "retry", "20261126-000000", check=True).stdout
    one_line_error(sdgen(data, "cancel", "not-an-id"), "is not a request id")
