"""Notifications when a request ends: `sdgen daemon --on-done CMD` and/or `--webhook URL`.

Set by the operator only, never by a request file (those are untrusted). The Scheduler calls
`Notifier.request_ended` when it records a terminal state; a background thread delivers, so
a slow command or server never holds the tick.

Delivery is at least once, keyed: the end is recorded as owed (`notify: "pending"` in
state.json) in the very write that records the end, and as settled (`"sent"` / `"failed"`)
only after delivery, by the daemon's main thread. A crash in between delivers again after
the restart, with the same `key` in the JSON (and the Idempotency-Key header), which a
receiver can use to drop the second copy. We prefer that side of the crash: a lost
"done" is worse than a repeated one.

The webhook URL may carry a token: it is logged and shown only as scheme://host/..., and is
written nowhere (not in state.json, spool files, MLflow, nor the command's environment).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from sdgen import __version__, defaults
from sdgen.settings import shown
from sdgen.spool.progress import summarize
from sdgen.spool.records import CorruptRecord, one_line
from sdgen.spool.states import REQUEST_TERMINAL, RequestState
from sdgen.spool.store import Spool
from sdgen.textsafe import printable
from sdgen.warnonce import WarnOnce

log = logging.getLogger(__name__)

# state.json `notify`: owed (recorded with the end), then how delivery ended.
PENDING, SENT, FAILED = "pending", "sent", "failed"


# -- the operator's options (argparse types: a bad value is one line and exit 2) -------------
def on_done_command(text: str) -> list[str]:
    """--on-done: split once, as a shell would split words (no shell runs it); the program
    must exist now, not at the first finished request hours later."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"cannot be split into words ({e}): quote it as in a shell") from None
    if not argv:
        raise argparse.ArgumentTypeError("is empty: give a program and its arguments, e.g. '/usr/local/bin/ping-me'")
    found = shutil.which(argv[0])
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{shown(argv[0])} is not an executable file nor a program on PATH (the command runs without a shell)"
        )
    return [os.path.abspath(found), *argv[1:]]


def webhook_url(text: str) -> str:
    """--webhook: an http:// or https:// URL with a host. The message never quotes the URL
    (it may hold a token), only what is wrong with it."""
    text = text.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise argparse.ArgumentTypeError("is not a URL (a bad host or port)") from None
    if parts.scheme not in ("http", "https"):
        got = f"scheme {shown(parts.scheme)}" if parts.scheme else "no scheme"
        raise argparse.ArgumentTypeError(f"takes an http:// or https:// URL (got {got})")
    if not parts.hostname:
        raise argparse.ArgumentTypeError("takes a URL with a host, like https://hooks.example.com/sdgen")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError("must not contain spaces or control characters (percent-encode them)")
    return text


def redact(url: str) -> str:
    """scheme://host[:port]/... : how the URL is logged and shown (its path, query and any
    user:password may be a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


# -- what is sent ----------------------------------------------------------------------------
def delivery_key(request_id: str, meta: dict) -> str:
    """The same for every delivery of one end (it is built from state.json), different for a
    later end of the same request (a retried failed request that ends again)."""
    return f"{request_id}/{meta.get('state')}/{meta.get('finished_at')}"


def summary(spool: Spool, request_id: str, meta: dict, tickets: dict) -> dict:
    """The JSON a command reads on stdin and a webhook receives."""
    state = str(meta.get("state"))
    try:
        row = summarize(meta, tickets, state == RequestState.CANCELLED)
    except (KeyError, TypeError, ValueError):  # a damaged state.json: say what is known
        row = {}
    out = {
        "event": "request.ended",
        "key": delivery_key(request_id, meta),
        "id": request_id,
        "name": meta.get("name") or "",
        "state": state,
        "reason": meta.get("reason", ""),
        "accepted_at": meta.get("accepted_at"),
        "finished_at": meta.get("finished_at"),
        "outputs": str(spool.layout.output_dir(request_id)),
        "host": socket.gethostname(),
    }
    for k in ("images_done", "images_total", "tickets_total"):
        out[k] = row.get(k, meta.get(k, 0))
    out.update((k, v) for k, v in row.items() if k.startswith("tickets_"))
    return out


def command_env(s: dict) -> dict[str, str]:
    """SDGEN_* variables of the --on-done command, beside the daemon's own environment."""
    env = {
        "SDGEN_REQUEST_ID": s["id"],
        "SDGEN_REQUEST_STATE": s["state"],
        "SDGEN_REQUEST_NAME": s["name"],
        "SDGEN_OUTPUTS": s["outputs"],
        "SDGEN_NOTIFY_KEY": s["key"],
    }
    for k, v in s.items():
        if k.startswith(("images_", "tickets_")):
            env[f"SDGEN_{k.upper()}"] = str(v)
    # Names and reasons come from untrusted requests: no NUL (an environment cannot hold
    # it), and one line.
    return {k: one_line(v).replace("\0", "") for k, v in env.items()}


# -- delivery --------------------------------------------------------------------------------
@dataclass(order=True)
class _Job:
    due: float  # time.monotonic()
    seq: int
    request_id: str = field(compare=False)
    key: str = field(compare=False)
    summary: dict = field(compare=False)
    command_done: bool = field(default=False, compare=False)
    attempts: int = field(default=0, compare=False)  # webhook POSTs so far
    errors: list[str] = field(default_factory=list, compare=False)


class _Retry(Exception):
    """A webhook failure worth trying again (no answer, 408, 429, 5xx)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would resend the summary (and the URL's token) somewhere the operator did
    # not name: a 3xx is a failure to fix in --webhook, not something to follow.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Notifier:
    def __init__(
        self,
        spool: Spool,
        command: list[str] | None = None,
        webhook: str | None = None,
        attempts: int = defaults.NOTIFY_ATTEMPTS,
        backoff_base: float = defaults.NOTIFY_BACKOFF_BASE_SECONDS,
        backoff_cap: float = defaults.NOTIFY_BACKOFF_CAP_SECONDS,
        http_timeout: float = defaults.NOTIFY_HTTP_TIMEOUT_SECONDS,
        command_timeout: float = defaults.NOTIFY_COMMAND_TIMEOUT_SECONDS,
    ):
        self.spool = spool
        self.command = command
        self.webhook = webhook
        self.target = redact(webhook) if webhook else None
        self.attempts, self.backoff_base, self.backoff_cap = attempts, backoff_base, backoff_cap
        self.http_timeout, self.command_timeout = http_timeout, command_timeout
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._keys: set[str] = set()  # queued or in hand: an end is never queued twice
        self._in_hand = 0
        self._settled: list[tuple[str, str, str]] = []  # (request id, key, outcome) for settle()
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warn = WarnOnce(log)
        self._status: dict = {}  # channel -> its status (notify.json)

    # -- the daemon's side (main thread) ---------------------------------------------------
    def start(self) -> None:
        """Queue the ends a previous daemon recorded as owed, then start delivering."""
        owed = 0
        counts = None
        for rid in self.spool.request_ids():
            try:
                meta = self.spool.read_state(rid)
            except CorruptRecord:
                continue
            if meta and meta.get("state") in REQUEST_TERMINAL and meta.get("notify") == PENDING:
                if counts is None:
                    counts = self.spool.ticket_counts()
                self.request_ended(rid, meta, counts.get(rid, {}))
                owed += 1
        if owed:
            log.info("notifications: %d request end(s) owed by the last daemon, delivering them", owed)
        self._thread = threading.Thread(target=self._run, name="sdgen-notify", daemon=True)
        self._thread.start()

    def request_ended(self, request_id: str, meta: dict, tickets: dict) -> None:
        """The Scheduler's hook: `meta` was just written to state.json with the end and
        `notify: pending`. Cheap: the summary is built here, delivered in the thread."""
        try:
            s = summary(self.spool, request_id, meta, tickets)
        except Exception:  # noqa: BLE001 - never the tick's failure: the end stays owed on disk
            log.exception("notification of %s not queued (the next daemon start delivers it)", request_id)
            return
        with self._cond:
            if s["key"] in self._keys:
                return
            self._keys.add(s["key"])
            heapq.heappush(self._heap, _Job(time.monotonic(), next(self._seq), request_id, s["key"], s))
            self._cond.notify()

    def settle(self) -> int:
        """Record finished deliveries in state.json (main thread: the one writer of
        state.json). An end that changed since (retried, ended again) is left alone."""
        with self._cond:
            settled, self._settled = self._settled, []
        for rid, key, outcome in settled:
            try:
                meta = self.spool.read_state(rid)
            except CorruptRecord:
                continue
            if meta and meta.get("notify") == PENDING and delivery_key(rid, meta) == key:
                self.spool.write_state(rid, dict(meta, notify=outcome))
        return len(settled)

    def stop(self, timeout: float = defaults.NOTIFY_STOP_SECONDS) -> None:
        """Wait up to `timeout` for what is due now (retries waiting for their backoff are
        not waited for), then stop; whatever is left stays owed for the next daemon."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._thread and time.monotonic() < deadline:
                due = self._heap and self._heap[0].due <= time.monotonic()
                if not (due or self._in_hand):
                    break
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            left = len(self._heap) + self._in_hand
            self._cond.notify_all()
        if self._thread:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self.settle()
        if left:
            log.warning("notifications: %d request end(s) not delivered yet; the next daemon delivers them", left)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = self._heap[0].due - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                job = heapq.heappop(self._heap)
                self._in_hand += 1
            try:
                again = self._deliver(job)
            except Exception as e:  # noqa: BLE001 - a bug here must not end notifications
                log.exception("notification of %s failed", job.request_id)
                job.errors.append(f"{type(e).__name__}: {e}")
                again = None
            with self._cond:
                self._in_hand -= 1
                if again is not None:
                    job.due = again
                    heapq.heappush(self._heap, job)
                else:
                    self._keys.discard(job.key)
                    self._settled.append((job.request_id, job.key, FAILED if job.errors else SENT))
                self._cond.notify_all()

    def _deliver(self, job: _Job) -> float | None:
        """One step of a job: the command once, then webhook tries. Returns when to go on
        (a retry's due time), or None when the job is over."""
        if self.command and not job.command_done:
            job.command_done = True
            error = self._run_command(job.summary)
            self._outcome("command", job, error, final=True)
        if not self.webhook:
            return None
        job.attempts += 1
        try:
            self._post(job.summary)
        except _Retry as e:
            final = job.attempts >= self.attempts
            self._outcome("webhook", job, str(e), final=final)
            if final:
                return None
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (job.attempts - 1))
            return time.monotonic() + delay
        except Exception as e:  # noqa: BLE001 - a refusal (4xx, bad answer): no retry helps
            self._outcome("webhook", job, self._scrub(f"{type(e).__name__}: {e}"), final=True)
            return None
        self._outcome("webhook", job, None, final=True)
        return None

    def _run_command(self, s: dict) -> str | None:
        """Run --on-done for one end: no shell, SDGEN_* in its environment, the summary on
        stdin. The error, in one line, or None."""
        env = dict(os.environ, **command_env(s))
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own group: a timeout kills whatever it started
                close_fds=True,
            )
        except OSError as e:
            return f"cannot start {self.command[0]}: {e.strerror or e}"
        try:
            out, _ = proc.communicate(json.dumps(s).encode() + b"\n", timeout=self.command_timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return f"{os.path.basename(self.command[0])} timed out after {self.command_timeout:g}s"
        if proc.returncode != 0:
            tail = one_line(out.decode("utf-8", "replace")[-300:], 300)
            return f"{os.path.basename(self.command[0])} exited with {proc.returncode}" + (f": {tail}" if tail else "")
        return None

    def _post(self, s: dict) -> None:
        request = urllib.request.Request(
            self.webhook,
            data=json.dumps(s).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"sdgen/{__version__}",
                "Idempotency-Key": s["key"],
            },
        )
        try:
            with self._opener.open(request, timeout=self.http_timeout) as response:
                response.read(64 * 1024)
        except urllib.error.HTTPError as e:
            message = f"HTTP {e.code} {e.reason}"
            if e.code in (408, 425, 429) or e.code >= 500:
                raise _Retry(message) from None
            raise RuntimeError(message) from None
        except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out
            reason = getattr(e, "reason", e)
            raise _Retry(self._scrub(f"no answer: {reason}")) from None

    def _scrub(self, text: str) -> str:
        """An error message with anything of the URL beyond scheme://host cut out."""
        text = one_line(text, 300)
        if self.webhook:
            parts = urllib.parse.urlsplit(self.webhook)
            for secret in (self.webhook, parts.netloc if "@" in parts.netloc else "", parts.path, parts.query):
                if len(secret) > 1:
                    text = text.replace(secret, "…")
        return text

    # -- failures: logged once, shown by `sdgen status` (spool/notify.json) ------------------
    def _outcome(self, channel: str, job: _Job, error: str | None, final: bool) -> None:
        now = time.time()
        what = self.target if channel == "webhook" else f"--on-done {os.path.basename(self.command[0])}"
        entry = self._status.setdefault(channel, {"target": what, "not_notified": 0})
        before = dict(entry)
        if error is None:
            if self._warn.ok(channel, now, f"notifications: {what.replace('%', '%%')} works again (after %.0fs)"):
                entry.pop("failing_since", None)
                entry.pop("error", None)
        else:
            if self._warn.fail(
                channel,
                now,
                "notifications: %s failed for request %s: %s (%s; logged once until it works again)",
                what,
                job.request_id,
                printable(error),
                "retrying with backoff" if not final else "not retried",
            ):
                entry["failing_since"] = now
            entry["error"] = error
            if final:
                job.errors.append(f"{channel}: {error}")
                entry["not_notified"] += 1
                entry["last_not_notified"] = {"request": job.request_id, "at": now, "error": error}
        if entry != before:
            try:
                self.spool.write_notify_status({"updated": now, "channels": self._status})
            except OSError as e:
                log.debug("notify.json not written: %s", e)
