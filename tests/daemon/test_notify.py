"""Notifications (--on-done, --webhook): the in-process Scheduler ends requests, the notifier
delivers to a real HTTP server on 127.0.0.1 and runs a real script."""

import json
import logging
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdgen.daemon.notify import Notifier, redact
from sdgen.daemon.scheduler import Scheduler
from sdgen.spool.claim import claim_next
from sdgen.spool.store import Spool
from tests.conftest import accept, run_in_process, wait_for
from tests.harness import sdgen_env

RID = "20261126-000000-aaaaaa"
OTHER = "20261126-000000-bbbbbb"
TOKEN = "s3cr3t-t0ken"
FAST = dict(backoff_base=0.05, backoff_cap=0.2, http_timeout=5.0)


class Hook:
    """A webhook receiver: answers each POST with the next code of `codes` (then 200)."""

    def __init__(self, codes=()):
        self.codes = list(codes)
        self.posts: list[tuple[dict, dict]] = []  # (headers, body)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append((dict(self.headers), body))
                code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/{TOKEN}?key={TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def end(spool: Spool, sched: Scheduler, rid=RID, now=1000.0, fail=False) -> None:
    """Make a request finish without workers (claim, finish marker, retire) and let the
    Scheduler record its end."""
    accept(spool, "prompt: a\nimages: 2\nseed: 1\nengine: dry-run\nname: foxes\n", rid)
    claim_next(spool, "w", skip_request=lambda r: r != rid).finish({})
    last = claim_next(spool, "w", skip_request=lambda r: r != rid)
    if fail:
        last.fail("weights missing", transient=False, now=now)
    else:
        last.finish({})
    sched.update_requests(spool.ticket_counts(), now)


def settled(spool, notifier, rid=RID, timeout=10):
    def done():
        notifier.settle()
        return spool.read_state(rid).get("notify") != "pending"

    wait_for(done, timeout=timeout)
    return spool.read_state(rid)["notify"]


def test_the_webhook_gets_the_summary_once_after_a_500_and_the_token_stays_out_of_files(spool, hook, caplog):
    caplog.set_level(logging.INFO)
    hook.codes = [500]
    notifier = Notifier(spool, webhook=hook.url, **FAST)
    sched = Scheduler(spool, launcher=None, on_request_end=notifier.request_ended)
    notifier.start()
    try:
        end(spool, sched)
        assert spool.read_state(RID)["notify"] == "pending"  # owed, written with the end
        assert settled(spool, notifier) == "sent"
    finally:
        notifier.stop(1)
    assert len(hook.posts) == 2  # the 500, then the retry
    (h1, b1), (h2, b2) = hook.posts
    assert b1 == b2 and h1["Idempotency-Key"] == h2["Idempotency-Key"] == b1["key"]
    assert h1["Content-Type"] == "application/json"
    assert b1["id"] == RID and b1["state"] == "done" and b1["name"] == "foxes"
    assert b1["images_done"] == b1["images_total"] == 2 and b1["tickets_done"] == 2
    assert b1["outputs"] == str(spool.layout.output_dir(RID)) and b1["finished_at"] == 1000.0
    # the 500 was logged once, the recovery too; the token nowhere: log, spool, status file
    assert sum("failed for request" in r.getMessage() for r in caplog.records) == 1
    assert sum("works again (after" in r.getMessage() for r in caplog.records) == 1
    assert TOKEN not in caplog.text and "http://127.0.0.1:" in caplog.text
    for path in spool.layout.spool.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    status = json.loads(spool.layout.notify_status.read_text())
    assert "failing_since" not in status["channels"]["webhook"]


def test_a_webhook_that_keeps_failing_gives_up_logs_once_and_shows_in_status(spool, hook, caplog, data):
    hook.codes = [503] * 100
    notifier = Notifier(spool, webhook=hook.url, attempts=3, **FAST)
    sched = Scheduler(spool, launcher=None, on_request_end=notifier.request_ended)
    notifier.start()
    try:
        end(spool, sched, RID)
        end(spool, sched, OTHER, fail=True)
        assert settled(spool, notifier, RID) == "failed"
        assert settled(spool, notifier, OTHER) == "failed"
    finally:
        notifier.stop(1)
    assert len(hook.posts) == 6  # 3 tries each, then given up
    assert sum("failed for request" in r.getMessage() for r in caplog.records) == 1
    out = run_in_process(["--data", str(data), "status"], sdgen_env(data), cwd=data.parent).stdout
    assert "notifications: http://127.0.0.1:" in out and "failing since" in out and "HTTP 503" in out
    assert "gave up on 2 request end(s)" in out and TOKEN not in out


def test_a_4xx_is_not_retried(spool, hook):
    hook.codes = [404]
    notifier = Notifier(spool, webhook=hook.url, **FAST)
    notifier.start()
    try:
        end(spool, Scheduler(spool, launcher=None, on_request_end=notifier.request_ended))
        assert settled(spool, notifier) == "failed"
    finally:
        notifier.stop(1)
    assert len(hook.posts) == 1


def test_on_done_runs_a_real_script_with_the_env_and_the_summary_on_stdin(spool, tmp_path):
    out = tmp_path / "calls"
    script = tmp_path / "on done.sh"  # a space in the path: no shell ever splits it again
    script.write_text(
        "#!/bin/sh\n"
        f'{{ env | grep ^SDGEN_ | sort; echo "ARGS $*"; echo "STDIN $(cat)"; }} >> "{out}"\n'
        'test "$SDGEN_REQUEST_STATE" = done\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    from sdgen.daemon.notify import on_done_command

    notifier = Notifier(spool, command=on_done_command(f"'{script}' --to 'ops team' ';' '$HOME'"), **FAST)
    sched = Scheduler(spool, launcher=None, on_request_end=notifier.request_ended)
    notifier.start()
    try:
        end(spool, sched)
        assert settled(spool, notifier) == "sent"
        end(spool, sched, OTHER, fail=True)  # the script exits 1 for a failed request
        assert settled(spool, notifier, OTHER) == "failed"
    finally:
        notifier.stop(1)
    text = out.read_text()
    assert f"SDGEN_REQUEST_ID={RID}\n" in text and "SDGEN_REQUEST_STATE=done\n" in text
    assert f"SDGEN_OUTPUTS={spool.layout.output_dir(RID)}\n" in text
    assert "SDGEN_IMAGES_DONE=2\n" in text and "SDGEN_IMAGES_TOTAL=2\n" in text and "SDGEN_TICKETS_FAILED=0" in text
    assert "ARGS --to ops team ; $HOME\n" in text  # words as given: no shell expanded anything
    stdin = json.loads(text.split("STDIN ", 1)[1].splitlines()[0])
    assert stdin["id"] == RID and stdin["state"] == "done" and stdin["key"] == f"{RID}/done/1000.0"
    assert f"SDGEN_REQUEST_ID={OTHER}" in text and "SDGEN_REQUEST_STATE=failed" in text
    status = json.loads(spool.layout.notify_status.read_text())["channels"]["command"]
    assert status["not_notified"] == 1 and "exited with 1" in status["error"]


def test_an_end_owed_at_a_crash_is_delivered_by_the_next_daemon_once(spool, hook):
    """The daemon died after recording the end (notify: pending) and before delivering: the
    next one delivers it, with the same key; once settled, a third start sends nothing."""
    sched = Scheduler(spool, launcher=None, on_request_end=lambda *a: None)  # a daemon that dies
    end(spool, sched)
    assert spool.read_state(RID)["notify"] == "pending" and hook.posts == []
    for _ in range(2):
        notifier = Notifier(spool, webhook=hook.url, **FAST)
        notifier.start()
        try:
            assert settled(spool, notifier) == "sent"
        finally:
            notifier.stop(1)
    assert len(hook.posts) == 1 and hook.posts[0][1]["key"] == f"{RID}/done/1000.0"


def test_without_a_notifier_no_end_is_owed_and_a_later_notifier_sends_nothing_old(spool, hook):
    end(spool, Scheduler(spool, launcher=None))
    assert "notify" not in spool.read_state(RID)
    notifier = Notifier(spool, webhook=hook.url, **FAST)
    notifier.start()
    time.sleep(0.3)
    notifier.stop(1)
    assert hook.posts == []


def test_a_retried_request_that_ends_again_is_notified_again(spool, hook):
    from sdgen.spool.ticket import after_retry

    notifier = Notifier(spool, webhook=hook.url, **FAST)
    sched = Scheduler(spool, launcher=None, on_request_end=notifier.request_ended)
    notifier.start()
    try:
        end(spool, sched, fail=True, now=1000.0)
        assert settled(spool, notifier) == "sent"
        (name,) = spool.ticket_names("failed")
        spool.retry(name, "failed", after_retry(spool.read_ticket("failed", name), 1400.0))
        sched.update_requests(spool.ticket_counts(), 1500.0)
        assert "notify" not in spool.read_state(RID)  # running again: nothing owed
        claim_next(spool, "w").finish({})
        sched.update_requests(spool.ticket_counts(), 2000.0)
        assert settled(spool, notifier) == "sent"
    finally:
        notifier.stop(1)
    assert [(b["state"], b["key"]) for _, b in hook.posts] == [
        ("failed", f"{RID}/failed/1000.0"),
        ("done", f"{RID}/done/2000.0"),
    ]


def test_redact_keeps_scheme_host_and_port_only():
    assert redact("https://user:pw@hooks.example.com:8443/x/TOKEN?t=1") == "https://hooks.example.com:8443/…"
    assert redact("http://[::1]/a") == "http://[::1]/…"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--on-done", ""], "is empty"),
        (["--on-done", "'unclosed"], "cannot be split"),
        (["--on-done", "no-such-program-here --x"], "not an executable"),
        (["--webhook", f"ftp://example.com/{TOKEN}"], "http:// or https://"),
        (["--webhook", f"https:///{TOKEN}"], "with a host"),
        (["--webhook", f"http://example.com:port/{TOKEN}"], "not a URL"),
        (["--webhook", f"https://example.com/a b/{TOKEN}"], "spaces"),
        (["--retain", "30 days"], "--retain"),
    ],
)
def test_bad_operator_options_are_one_line_and_exit_2(data, args, words):
    r = run_in_process(["--data", str(data), "daemon", *args], sdgen_env(data), cwd=data.parent)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert TOKEN not in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(data / "spool" / "daemon.json")  # refused before anything started


def test_a_real_daemon_notifies_each_end_once_and_prunes_with_retain(data, daemon, hook, tmp_path):
    """`sdgen daemon --on-done CMD --webhook URL --retain AGE`: two dry-run requests end, the
    script runs and the server gets a POST once each, state.json records them as sent; an
    old ended request already in the spool is pruned on the first pass, the new ones kept."""
    from tests.conftest import FAST, submit

    spool = Spool(data).ensure()
    old = "20261126-000000-01d000"
    end(spool, Scheduler(spool, launcher=None), old, now=time.time() - 7200)
    out = tmp_path / "ended"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$SDGEN_REQUEST_ID $SDGEN_REQUEST_STATE $SDGEN_IMAGES_DONE" >> "{out}"\n')
    script.chmod(0o755)
    rids = [submit(data, "--prompt", f"p{i}", "--images", "2") for i in range(2)]
    d = daemon(
        "--workers", "1", "--exit-when-idle", *FAST,
        "--on-done", str(script), "--webhook", hook.url, "--retain", "1h",
    )  # fmt: skip
    assert d.wait(120) == 0, d.output()[-3000:]
    assert sorted(out.read_text().splitlines()) == sorted(f"{r} done 2" for r in rids)
    assert sorted(b["id"] for _, b in hook.posts) == sorted(rids)
    assert all(spool.read_state(r)["notify"] == "sent" for r in rids)
    assert old not in spool.request_ids() and "retention: removed the records of 1 request(s)" in d.output()
    assert TOKEN not in d.output()
