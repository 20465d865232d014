"""Idempotent submit (issue 20): a request may carry its own id (`id:`, `sdgen submit --id`).
The same id with the same content again queues nothing and prints the first request's id;
other content is refused in one line; a tool that re-drops its file never doubles the work,
whether it goes through `sdgen submit` or drops files into the inbox itself."""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.request import CLIENT_ID, parse_request, request_digest
from tests.conftest import drop_settled, sdgen

ARGS = ("--prompt", "a fox", "--images", "2", "--engine", "dry-run", "--width", "128", "--height", "128")


def test_the_same_id_and_content_again_queues_nothing_and_prints_the_first_id(spool):
    root = spool.layout.root
    first = sdgen(root, "submit", *ARGS, "--id", "job-42")
    assert first.returncode == 0
    rid = first.stdout.strip()
    again = sdgen(root, "submit", *ARGS, "--id", "job-42")
    assert again.returncode == 0 and again.stdout.strip() == rid and "nothing queued" in again.stderr
    assert len(list(spool.layout.inbox.iterdir())) == 1
    Scheduler(spool, launcher=None).tick(time.time())  # accepted; a third submit still says the same
    assert sdgen(root, "submit", *ARGS, "--id", "job-42").stdout.strip() == rid
    other = sdgen(root, "submit", *ARGS, "--steps", "3", "--id", "job-42")
    assert other.returncode == 2 and f"is request {rid}, submitted with other content" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and len(spool.request_ids()) == 1


def test_a_tool_that_re_drops_its_file_never_doubles_the_work(spool):
    body = "prompt: a fox\nimages: 2\nengine: dry-run\nid: nightly-7\n"
    drop_settled(spool, "one.yaml", body)
    sched = Scheduler(spool, launcher=None)
    [rid] = sched.tick(time.time()).accepted
    drop_settled(spool, "one-again.yaml", body)  # the tool crashed and dropped it again
    report = sched.tick(time.time())
    assert report.accepted == [] and report.rejected == [] and not list(spool.layout.inbox.iterdir())
    assert spool.request_ids() == [rid]
    drop_settled(spool, "changed.yaml", body.replace("images: 2", "images: 3"))
    assert sched.tick(time.time()).rejected == ["changed.yaml"]
    [reason] = spool.layout.rejected.glob("*changed.yaml.reason")
    assert f"is request {rid}, submitted with other content" in reason.read_text()
    # `sdgen submit` of that same content finds the dropped file's request
    assert sdgen(spool.layout.root, "submit", "--id", "nightly-7", "--prompt", "a fox", "--images", "2",
                 "--engine", "dry-run").stdout.strip() == rid  # fmt: skip


def test_two_submitters_of_one_id_at_once_make_one_request(spool):
    ids = []

    def submit():
        ids.append(sdgen(spool.layout.root, "submit", *ARGS, "--id", "race", subprocess=True).stdout.strip())

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(ids)) == 1 and len(list(spool.layout.inbox.iterdir())) == 1


def test_a_submit_that_died_between_recording_and_queueing_is_finished_by_the_next(spool):
    request = parse_request("prompt: a fox\nid: half\nengine: dry-run\n")
    spool.record_client_id("half", "20261126-000000-dddddd", request_digest(request))  # then it died
    out = sdgen(spool.layout.root, "submit", "--prompt", "a fox", "--engine", "dry-run", "--id", "half")
    assert out.stdout.strip() == "20261126-000000-dddddd"
    assert (spool.layout.inbox / "20261126-000000-dddddd.yaml").exists()


def test_pruning_a_request_frees_its_id(spool):
    rid = sdgen(spool.layout.root, "submit", *ARGS, "--id", "again").stdout.strip()
    Scheduler(spool, launcher=None).tick(time.time())
    spool.remove_request(rid)
    assert spool.lookup_client_id("again") is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_an_id_is_accepted_exactly_when_it_is_safe_as_a_file_name(text):
    import yaml

    from sdgen.exceptions import RequestError

    try:
        request = parse_request(yaml.safe_dump({"prompt": "a", "id": text}))
    except RequestError as e:
        assert "\n" not in str(e)
        return
    assert request.id == text and CLIENT_ID.match(text) and "/" not in text and not text.startswith(".")
