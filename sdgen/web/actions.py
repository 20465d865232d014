"""The dashboard's writes: submit, cancel, retry, pause, resume, priority. Each goes through
what the CLI uses (`sdgen submit`'s request_from_args and queue, `sdgen cancel`'s
cancel_request, the Spool methods of retry/pause/resume/priority with the same checks) and
says what happened in one line, as the CLI prints it; mistakes are UserError (-> 400)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from sdgen import defaults
from sdgen.cli.admin import _derived_state, _known, cancel_request
from sdgen.cli.submit import OPTIONS, queue, request_from_args
from sdgen.exceptions import RequestError, UserError
from sdgen.spool.layout import ticket_name
from sdgen.spool.states import REQUEST_TERMINAL, TicketState
from sdgen.spool.store import Spool
from sdgen.spool.ticket import after_retry

# The form's fields: the request keys of `sdgen submit`'s options, and their types.
FIELDS = [key for _, key, _ in OPTIONS]
_TYPES = {key: kw.get("type", str) for _, key, kw in OPTIONS}
_FLAG = {key: flags[0] for flags, key, _ in OPTIONS}


def submit(spool: Spool, fields: dict[str, str] | None = None, text: str | None = None) -> tuple[str, bool]:
    """Queue a request from form fields (as `sdgen submit --prompt ... --steps ...`) and/or a
    request file's text (YAML or JSON; the fields override its values, as options override a
    file's). (request id, queued now: False when an `id` repeats an earlier submit)."""
    args = argparse.Namespace(data=str(spool.layout.root), file=None, from_png=None, plan=False)
    for key in FIELDS:
        setattr(args, key, None)
    for key, raw in (fields or {}).items():
        if key not in _TYPES or raw is None or str(raw).strip() == "":
            continue
        setattr(args, key, _field(key, str(raw)))
    has_text = text is not None and text.strip() != ""
    if not has_text and not args.prompt:
        raise RequestError("missing --prompt TEXT (or a request file's text in the YAML box)")
    if has_text:
        if len(text.encode("utf-8", "surrogatepass")) > defaults.MAX_REQUEST_BYTES:
            raise RequestError(
                f"the request is over {defaults.MAX_REQUEST_BYTES} bytes: split it into several requests"
            )
        with tempfile.TemporaryDirectory(prefix="sdgen-web-") as folder:
            path = Path(folder) / "request.yaml"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            args.file = str(path)
            request = request_from_args(args)
    else:
        request = request_from_args(args)
    return queue(spool.ensure(), request)


def _field(key: str, raw: str):
    if key == "prompt":  # one prompt per line, as `--prompt` repeated
        prompts = [line.strip() for line in raw.splitlines() if line.strip()]
        return prompts or None
    kind = _TYPES[key]
    if kind is str:
        return raw
    try:
        return kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RequestError(f"{_FLAG[key]}: {raw.strip()[:40]!r} is not {what}") from None


def body_text(content_type: str, body: bytes) -> str:
    """A POSTed request as request-file text: JSON (an object) is written out as YAML, so
    both go through the one reader of request files; anything else is read as YAML."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the request is not UTF-8 text (byte 0x{body[e.start]:02x} at offset {e.start})") from None
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise RequestError(f"the request is not valid JSON ({str(e)[:120]})") from None
        if not isinstance(value, dict):
            raise RequestError('the request must be a JSON object (like {"prompt": "a red fox"})')
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    return text


def cancel(spool: Spool, rid: str) -> str:
    return cancel_request(spool.ensure(), rid)


def retry(spool: Spool, rid: str) -> str:
    """`sdgen retry`: failed, held and deferred tickets back to pending."""
    spool = spool.ensure()
    if _known(spool, rid) != "accepted":
        raise UserError(f"request {rid} has not been accepted yet: nothing to retry")
    if spool.is_cancelled(rid):
        raise UserError(f"request {rid} was cancelled: `sdgen resubmit {rid}` queues it again as a new request")
    meta = spool.read_state(rid) or {}
    counts = spool.ticket_counts().get(rid, {})
    moved, now = 0, time.time()
    for state in (TicketState.FAILED, TicketState.HELD, TicketState.DEFERRED):
        for index in counts.get(state, []):
            name = ticket_name(spool.priority_of(rid, meta.get("priority", 0)), index, rid)
            try:
                ticket = spool.read_ticket(state, name)
            except FileNotFoundError:
                continue
            if spool.retry(name, state, after_retry(ticket, now)):
                moved += 1
    return f"{moved} ticket(s) of {rid} queued again" if moved else f"request {rid} has no failed or held tickets"


def pause(spool: Spool, rid: str | None, after_ticket: bool = False) -> str:
    """`sdgen pause ID` (None: `--all`)."""
    spool = spool.ensure()
    how = "running tickets finish their ticket" if after_ticket else "running tickets stop at the next image"
    if rid is None:
        spool.pause(None, time.time(), after_ticket=after_ticket)
        return f"paused the whole queue: nothing is claimed until it is resumed; {how}"
    if _known(spool, rid) == "inbox":
        raise UserError(f"request {rid} is not accepted yet: pause it once the queue lists it as pending")
    state = _derived_state(spool, rid)
    if state in REQUEST_TERMINAL:
        return f"request {rid} is already {state}; nothing to pause"
    spool.pause(rid, time.time(), after_ticket=after_ticket)
    return f"paused {rid}: its pending tickets wait, {how}"


def resume(spool: Spool, rid: str | None) -> str:
    """`sdgen resume ID` (None: `--all`)."""
    spool = spool.ensure()
    if rid is None:
        return "resumed the whole queue" if spool.resume(None) else "nothing was paused"
    _known(spool, rid)
    was = spool.resume(rid)
    if spool.layout.pause_all_marker.exists():
        return f"resumed {rid}, but the whole queue is paused: resume the queue too"
    return f"resumed {rid}" if was else f"request {rid} was not paused"


def priority(spool: Spool, rid: str, value) -> str:
    """`sdgen priority ID N`."""
    spool = spool.ensure()
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise UserError(f"priority must be a whole number between -1000 and 1000, got {str(value)[:40]!r}") from None
    if not -1000 <= number <= 1000:
        raise UserError(f"priority must be between -1000 and 1000, got {number}")
    if _known(spool, rid) == "inbox":
        raise UserError(f"request {rid} is not accepted yet: set its priority once the queue lists it as pending")
    meta = spool.read_state(rid) or {}
    before = spool.priority_of(rid, meta.get("priority", 0))
    state = _derived_state(spool, rid)
    moved = spool.set_priority(rid, number, time.time())
    ended = f" (it is {state}: the priority counts if it is retried)" if state in REQUEST_TERMINAL else ""
    return f"request {rid}: priority {before} -> {number}; {moved} waiting ticket(s) reordered{ended}"


ACTIONS = {"cancel", "retry", "pause", "resume", "priority"}
