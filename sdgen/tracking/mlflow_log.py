"""Everything sdgen tells MLflow, logged by the daemon from what the spool records.

Workers never talk to MLflow: they publish one event file per attempt (spool/events/),
and this tracker turns requests into parent runs and events into child runs. So a tracking
server that is down or slow never stops generation, nothing is lost while it is down (the
events wait on disk and are logged when it is back), and MLflow credentials stay with the
daemon. The only module that imports mlflow.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hashlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path

# Fail fast instead of mlflow's default minutes of retries: the tracker retries by itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402

from sdgen import defaults
from sdgen.batch.grid import request_grids, sweep_sheet, value_slug  # noqa: E402
from sdgen.batch.outputs import finished_images  # noqa: E402
from sdgen.spool.layout import REQUEST_ID  # noqa: E402
from sdgen.spool.progress import summarize  # noqa: E402
from sdgen.spool.states import RequestState, TicketState  # noqa: E402
from sdgen.spool.store import Spool  # noqa: E402
from sdgen.textsafe import printable  # noqa: E402
from sdgen.tracking.contact_sheet import contact_sheet  # noqa: E402
from sdgen.warnonce import WarnOnce  # noqa: E402

log = logging.getLogger(__name__)

FINAL_STATUS = {RequestState.DONE: "FINISHED", RequestState.FAILED: "FAILED", RequestState.CANCELLED: "KILLED"}
IMAGE_MODES = ("all", "sample", "none")
SAMPLE_IMAGES = 4
LOG_TAIL_LINES = 60
REQUEST_BACKOFF = (
    defaults.TRACKING_REQUEST_BACKOFF_SECONDS
)  # seconds before a request whose logging failed is tried again...
REQUEST_MAX_BACKOFF = defaults.TRACKING_REQUEST_MAX_BACKOFF_SECONDS  # ... doubling up to this
EVENT_KINDS = ("attempt", "worker-failed")
EVENT_STATUSES = ("FINISHED", "FAILED", "KILLED")
EVENT_NAME = re.compile(r"^\d+-(\d{8}-\d{6}-[0-9a-f]{6})-[0-9a-f]+\.json$")
OUTAGE = "MLflow"  # the WarnOnce key of the server being unreachable

# errno values that mean "cannot reach the server", not "this request is wrong"
_OUTAGE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
    errno.ETIMEDOUT,
    errno.EPIPE,
}
# mlflow's own wording for server-side unavailability (it wraps requests' errors in text)
_OUTAGE_TEXT = re.compile(
    r"too many (429|502|503|504) error responses|Max retries exceeded|"
    r"Connection (refused|reset|aborted)|Failed to establish a new connection|"
    r"timed out|database is locked|unable to open database file",
    re.IGNORECASE,
)


def is_outage(e: BaseException) -> bool:
    """Whether `e` means MLflow cannot be reached at all (every request would fail alike),
    as opposed to a failure of what one request asked of it. Follows the chain of causes:
    mlflow raises its own exception from inside `except requests...`."""
    import requests

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, socket.gaierror)):
            return True
        if isinstance(e, OSError) and e.errno in _OUTAGE_ERRNOS:
            return True
        if type(e).__name__ == "OperationalError" and _OUTAGE_TEXT.search(str(e)):
            return True  # the embedded SQLite store itself is unusable (sqlalchemy/sqlite3)
        if type(e).__name__ in ("MlflowException", "RestException") and _OUTAGE_TEXT.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _one_line(e: BaseException, limit: int = 300) -> str:
    return redact(" ".join(f"{type(e).__name__}: {e}".split())[:limit])


def artifact_dir_name(experiment: str) -> str:
    """The folder of an experiment's artifacts in the embedded store: the name is anyone's
    text (`experiment: ../../x`), so the folder is a slug of it plus a hash of the whole
    name: one path component, never `.` or `..`, never hidden, and distinct per name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._-")[:60] or "experiment"
    return f"{slug}-{hashlib.sha256(experiment.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


class BadEvent(ValueError):
    """An event file that can never be logged: it is moved aside, not retried."""


def _need(d: dict, where: str, **fields) -> None:
    for key, types in fields.items():
        types = types if isinstance(types, tuple) else (types,)
        value = d.get(key)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise BadEvent(f"{where}{key} is {type(value).__name__}, not {'/'.join(t.__name__ for t in types)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadEvent(f"{where}{key} is not a finite number")


def check_event(event) -> dict:
    """The event if it has the shape the tracker uses, else BadEvent saying what is wrong."""
    if not isinstance(event, dict):
        raise BadEvent("not a JSON object")
    kind = event.get("kind", "attempt")
    if kind not in EVENT_KINDS:
        raise BadEvent(f"unknown kind {printable(kind, 40)!r}")
    _need(event, "", request_id=str, ended_at=(int, float), worker=str)
    if not REQUEST_ID.match(event["request_id"]):
        raise BadEvent("request_id is not a request id")
    if kind == "worker-failed":
        _need(event, "", error=str)
        return event
    _need(
        event,
        "",
        ticket=str,
        attempt=int,
        status=str,
        started_at=(int, float),
        host=(str, type(None)),
        gpu=(str, type(None)),
        error=(str, type(None)),
        result=(dict, type(None)),
        engine=(dict, type(None)),
        ticket_data=dict,
    )
    if "run_id" in event:
        _need(event, "", run_id=str)
    if event["status"] not in EVENT_STATUSES:
        raise BadEvent(f"status is not one of {', '.join(EVENT_STATUSES)}")
    t = event["ticket_data"]
    _need(
        t,
        "ticket_data.",
        index=int,
        prompt=str,
        negative_prompt=(str, type(None)),
        images=list,
        steps=int,
        width=int,
        height=int,
        guidance=(int, float),
        model=str,
        weights=str,
        engine=str,
    )
    for image in t["images"]:
        if not isinstance(image, dict):
            raise BadEvent("ticket_data.images holds a non-object")
        _need(image, "ticket_data.images[].", seed=int)
    result = event.get("result") or {}
    _need(
        result
        | {
            "seconds": result.get("seconds") or {},
            "outputs": result.get("outputs") or [],
            "system": result.get("system") or [],
        },
        "result.",
        seconds=dict,
        outputs=list,
        system=list,
    )
    for key, value in (result.get("seconds") or {}).items():
        if value is not None:
            _need({key: value}, "result.seconds.", **{key: (int, float)})
    if result.get("images_made") is not None:
        _need(result, "result.", images_made=int)
    for o in result.get("outputs") or []:
        if not isinstance(o, dict):
            raise BadEvent("result.outputs holds a non-object")
        _need(o, "result.outputs[].", file=str)
    for sample in result.get("system") or []:
        if not isinstance(sample, dict):
            raise BadEvent("result.system holds a non-object")
        for key, value in sample.items():
            _need({key: value}, "result.system[].", **{key: (int, float)})
    return event


def tracking_uri(data_root: Path) -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under the data directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(data_root) / 'mlflow' / 'mlflow.db'}"


def redact(uri: str) -> str:
    """A URI safe for logs and spool files: no user:password@ part."""
    import re

    return re.sub(r"//[^/@]*@", "//", uri)


def _ms(t: float) -> int:
    return int(t * 1000)


def _param(value) -> str:
    return str(value)[:6000]


class Tracker:
    def __init__(self, spool: Spool, launcher: str = "local", images: str = "all", uri: str | None = None):
        self.spool = spool
        self.launcher = launcher
        self.images = images
        self.uri = uri or tracking_uri(spool.layout.root)
        self.embedded = not os.environ.get("MLFLOW_TRACKING_URI") and uri is None
        self.client = MlflowClient(tracking_uri=self.uri)
        self._experiments: dict[str, str] = {}
        self._finalized: set[str] = set()
        self._failed: set[str] = set()  # finalized as FAILED: `sdgen retry` may reopen them
        self._progress: dict[str, tuple[int, float]] = {}
        self.outage = WarnOnce(log)
        self.last_error = ""
        # request id -> {error, since, attempts, next_try}: requests whose logging failed
        # for a reason of their own; they back off alone while the others go on. Not a
        # WarnOnce: a request warns again when its error changes (WarnOnce says once per
        # key), its record carries the backoff that `sdgen status` shows, and its "works
        # again" has no time in it.
        self.failures: dict[str, dict] = {}

    @property
    def down_since(self) -> float | None:
        """When MLflow stopped answering; None while it answers."""
        return self.outage.since(OUTAGE)

    # -- the step ---------------------------------------------------------------------------
    def step(self, now: float) -> bool:
        """Log what is new. False (after one warning) if MLflow cannot be reached; call again
        later. A failure of one request's logging (its artifacts cannot be written, MLflow
        refuses its values) is that request's alone: it backs off and is shown by
        `sdgen status`, and every other request goes on being logged."""
        tried: set[str] = set()
        failed: set[str] = set()
        try:
            counts = self.spool.ticket_counts()
            for request_id in self.spool.request_ids():
                if self._waiting(request_id, now):
                    continue
                tried.add(request_id)
                with self._isolated(request_id, now, failed):
                    self._step_request(request_id, counts.get(request_id, {}), now)
            for name in self.spool.event_names():
                m = EVENT_NAME.match(name)
                if m is None:
                    self._set_aside(name, "its name is not <ns>-<request id>-<hex>.json", now)
                    continue
                request_id = m.group(1)
                if request_id in failed or self._waiting(request_id, now):
                    continue
                tried.add(request_id)
                with self._isolated(request_id, now, failed):
                    self._log_event(name, now)
        except Exception as e:  # noqa: BLE001 - MLflow unreachable (or the spool unreadable): retry later
            self._went_down(now, e)
            return False
        self._recovered(tried - failed, now)
        self._came_back(now)
        return True

    def _step_request(self, request_id: str, tickets: dict, now: float) -> None:
        if request_id in self._finalized:
            if request_id in self._failed:
                self._reopen_if_retried(request_id, tickets)
            return
        record = self.parent(request_id, now)
        if record is None:
            return
        if record.get("finalized"):
            self._finalized.add(request_id)
            if record.get("status") == "FAILED":
                self._failed.add(request_id)
            return
        self._progress_and_finish(request_id, record, tickets, now)

    def _waiting(self, request_id: str, now: float) -> bool:
        f = self.failures.get(request_id)
        return f is not None and now < f["next_try"]

    @contextlib.contextmanager
    def _isolated(self, request_id: str, now: float, failed: set[str]):
        """Run one request's piece of logging; an outage goes up (it stops the step), any
        other failure is recorded against that request only."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - classified just below
            if is_outage(e):
                raise
            failed.add(request_id)
            self._request_failed(request_id, e, now)

    def _request_failed(self, request_id: str, e: Exception, now: float) -> None:
        old = self.failures.get(request_id)
        attempts = (old["attempts"] if old else 0) + 1
        delay = min(REQUEST_MAX_BACKOFF, REQUEST_BACKOFF * 2 ** min(attempts - 1, 20))
        text = _one_line(e)
        if old is None or old["error"] != text:
            log.warning(
                "MLflow logging of request %s failed (%s); the other requests go on, it is retried in %.0fs",
                request_id,
                printable(text),
                delay,
            )
        self.failures[request_id] = {
            "error": text,
            "since": old["since"] if old else now,
            "attempts": attempts,
            "next_try": now + delay,
        }
        self._write_status(now)

    def _recovered(self, request_ids: set[str], now: float) -> None:
        back = [r for r in request_ids if r in self.failures]
        for request_id in back:
            del self.failures[request_id]
            log.warning("MLflow logging of request %s works again", request_id)
        if back:
            self._write_status(now)

    def settled(self) -> bool:
        """Nothing left to log: no events, and every finished request's parent is closed."""
        for name in self.spool.event_names():
            m = EVENT_NAME.match(name)
            if m is None or m.group(1) not in self.failures:
                return False  # (a request that keeps failing waits for the next daemon)
        counts = self.spool.ticket_counts()
        for request_id in self.spool.request_ids():
            if request_id in self._finalized or request_id in self.failures:
                continue
            meta = self.spool.read_state(request_id)
            if (
                meta
                and summarize(meta, counts.get(request_id, {}), self.spool.is_cancelled(request_id))["state"]
                in FINAL_STATUS
            ):
                return False
        return True

    def backlog(self) -> int:
        return len(self.spool.event_names())

    def _went_down(self, now: float, e: Exception) -> None:
        text = _one_line(e)
        self.outage.fail(
            OUTAGE,
            now,
            "MLflow at %s is not answering (%s); generation goes on, tracking will catch up when it is back",
            redact(self.uri),
            printable(text),
        )
        self.last_error = text
        self._write_status(now)

    def _came_back(self, now: float) -> None:
        if self.outage.ok(OUTAGE, now, "MLflow is back after %.0fs; caught up"):
            self._write_status(now)
        elif not self.spool.layout.tracking_status.exists():
            self._write_status(now)

    def _write_status(self, now: float) -> None:
        status = {
            "uri": redact(self.uri),
            "ok": self.down_since is None,
            "down_since": self.down_since,
            "error": self.last_error if self.down_since else "",
            "updated": now,
            "requests": self.failures,
        }
        self.spool.write_tracking_status(status)

    # -- experiments and parent runs ------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = None
                if self.embedded:
                    location = (self.spool.layout.mlflow_dir / "artifacts" / artifact_dir_name(name)).as_uri()
                exp_id = self.client.create_experiment(name, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            self._experiments[name] = exp_id
        return self._experiments[name]

    def parent(self, request_id: str, now: float) -> dict | None:
        """The request's parent run ({experiment_id, run_id, finalized}), created on first sight."""
        path = self.spool.layout.mlflow_record(request_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            record = None
        if record is not None and record.get("ready", True):
            return record
        meta = self.spool.read_state(request_id)
        if meta is None:
            return None
        request = self.spool.read_request(request_id)
        if record is None:
            name = request.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "sdgen"
            exp_id = self.experiment_id(name)
            run = self.client.create_run(
                exp_id,
                start_time=_ms(meta.get("accepted_at", now)),
                tags={
                    "sdgen.request_id": request_id,
                    "sdgen.name": request.name,
                    "sdgen.user": getpass.getuser(),
                    "sdgen.host": socket.gethostname(),
                    "sdgen.launcher": self.launcher,
                },
                run_name=request.name or request_id,
            )
            # Remember the run before logging into it: an outage now must not make a twin.
            record = {"experiment_id": exp_id, "run_id": run.info.run_id, "finalized": False, "ready": False}
            self.spool.write_mlflow_record(request_id, record)
        fields = request.to_dict()
        fields["prompts"] = " | ".join(request.prompts)
        fields.pop("prompt", None)
        fields["images_total"] = request.images_total
        self.client.log_batch(record["run_id"], params=[Param(k, _param(v)) for k, v in fields.items()])
        self.client.log_artifact(record["run_id"], str(self.spool.layout.request_file(request_id)))
        self.client.log_inputs(record["run_id"], datasets=[self._prompts_input(request_id, request)])
        record["ready"] = True
        self.spool.write_mlflow_record(request_id, record)
        return record

    def _prompts_input(self, request_id: str, request) -> DatasetInput:
        """The request's prompts as the parent run's dataset input (MLflow's Datasets tab):
        an entity that describes them (name, digest, schema, rows) and points at
        request.yaml, which holds them (logged beside it as an artifact). Built here, not
        with mlflow.data.from_pandas, which warns on every call and needs pandas for a list
        of strings."""
        templates = [request.template_of(p) if request.templates else None for p in range(len(request.prompts))]
        digest = hashlib.sha256(json.dumps([request.prompts, templates]).encode()).hexdigest()[:8]
        columns = [("prompt_index", "long", True), ("prompt", "string", True), ("template", "string", False)]
        dataset = Dataset(
            name=f"{request.name or request_id} prompts",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": str(self.spool.layout.request_file(request_id))}),
            schema=json.dumps({"mlflow_colspec": [{"type": t, "name": n, "required": r} for n, t, r in columns]}),
            profile=json.dumps({"num_rows": len(request.prompts), "num_elements": 3 * len(request.prompts)}),
        )
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "generation")])

    def _sweep_pictures(self, request_id: str, folder: Path) -> list[Path]:
        """A sweep's X/Y grids (sdgen grid's defaults, one per value of a third swept field,
        at most TRACKING_GRIDS) and its contact sheet as a labelled grid (a row per
        combination), written in `folder`; [] without a sweep or images."""
        request = self.spool.read_request(request_id)
        if not request.sweep:
            return []
        images = finished_images(self.spool, request_id, request)
        if not images:
            return []
        out = []
        grids, _ = request_grids(request, images, max_side=defaults.TRACKING_GRID_MAX_SIDE)
        for value, grid in grids[: defaults.TRACKING_GRIDS]:
            path = folder / ("grid.png" if value is None else f"grid-{value_slug(value)}.png")
            grid.image.save(path)
            out.append(path)
        sheet = sweep_sheet(request, images)
        if sheet is not None:
            sheet.image.save(folder / "contact_sheet.png")
            out.append(folder / "contact_sheet.png")
        return out

    def _progress_and_finish(self, request_id: str, record: dict, tickets: dict, now: float) -> None:
        meta = self.spool.read_state(request_id)
        row = summarize(meta, tickets, self.spool.is_cancelled(request_id))
        done = row["images_done"]
        last = self._progress.get(request_id)
        if last is None or last[0] != done:
            metrics = [Metric("images_done", done, _ms(now), done)]
            if last is not None and now > last[1]:
                metrics.append(Metric("images_per_s", (done - last[0]) / (now - last[1]), _ms(now), done))
            self.client.log_batch(record["run_id"], metrics=metrics)
            self._progress[request_id] = (done, now)
        state = row["state"]
        if state not in FINAL_STATUS or tickets.get(TicketState.RUNNING):
            return
        if any(f"-{request_id}-" in e for e in self.spool.event_names()):
            return  # log the last attempts first, so the parent ends after its children
        self._finish_parent(request_id, record, meta, state, now)

    def _finish_parent(self, request_id: str, record: dict, meta: dict, state: str, now: float) -> None:
        run_id = record["run_id"]
        images = []
        for marker in self.spool.done_markers(request_id):  # in done/ or folded into the ledger
            result = marker.get("result")
            outputs = result.get("outputs") if isinstance(result, dict) else None
            # a marker is spool data: only well-formed entries go into the manifest
            images.extend(
                o
                for o in outputs or []
                if isinstance(o, dict)
                and isinstance(o.get("file"), str)
                and all(isinstance(o.get(k), int) for k in ("prompt_index", "image_index"))
            )
        images.sort(key=lambda o: (o["prompt_index"], o["image_index"]))
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "manifest.json"
            manifest.write_text(json.dumps({"request_id": request_id, "state": state, "images": images}, indent=1))
            self.client.log_artifact(run_id, str(manifest))
            pictures = self._sweep_pictures(request_id, Path(tmp))
            for picture in pictures:
                self.client.log_artifact(run_id, str(picture))
            sheet = None
            if not pictures:  # no sweep: one strip of thumbnails
                sheet = contact_sheet(
                    [p for p in (self._output_file(request_id, o.get("file", "")) for o in images) if p is not None]
                )
            if sheet is not None:
                sheet.save(Path(tmp) / "contact_sheet.png")
                self.client.log_artifact(run_id, str(Path(tmp) / "contact_sheet.png"))
        if meta.get("reason"):
            self.client.set_tag(run_id, "sdgen.reason", _param(meta["reason"]))
        self.client.set_terminated(run_id, FINAL_STATUS[state], end_time=_ms(meta.get("finished_at") or now))
        record = dict(record, finalized=True, status=FINAL_STATUS[state])
        if state == RequestState.FAILED:
            self._failed.add(request_id)
        self.spool.write_mlflow_record(request_id, record)
        self._finalized.add(request_id)
        log.info("MLflow: request %s logged as %s (%d images)", request_id, FINAL_STATUS[state], len(images))

    def _reopen_if_retried(self, request_id: str, tickets: dict) -> None:
        meta = self.spool.read_state(request_id)
        if meta is None or summarize(meta, tickets, False)["state"] == RequestState.FAILED:
            return
        record = json.loads(self.spool.layout.mlflow_record(request_id).read_text())
        self.client.update_run(record["run_id"], status="RUNNING")
        record.update(finalized=False, status="RUNNING")
        self.spool.write_mlflow_record(request_id, record)
        self._finalized.discard(request_id)
        self._failed.discard(request_id)

    # -- child runs -------------------------------------------------------------------------
    def _set_aside(self, name: str, reason: str, now: float) -> None:
        """Move an event that can never be logged out of spool/events, with its reason, so it
        neither stops the tracker nor is retried forever."""
        path = self.spool.layout.event(name)
        quarantine = getattr(self.spool, "quarantine", None)
        if quarantine is not None:
            quarantine(path, f"a tracking event that cannot be logged: {reason}", now)
            return
        log.error("tracking event %s cannot be logged (%s): set aside as .corrupt", printable(name), printable(reason))
        self.spool.set_aside_event(name)

    def _read_event(self, name: str, now: float) -> dict | None:
        """The event, checked; None if it is gone or was set aside."""
        path = self.spool.layout.event(name)
        try:
            with open(path, "rb") as f:
                raw = f.read(16 * 1024 * 1024 + 1)
        except FileNotFoundError:
            return None
        except OSError as e:  # e.g. a directory named *.json
            self._set_aside(name, f"unreadable ({e.strerror or e})", now)
            return None
        try:
            if len(raw) > 16 * 1024 * 1024:
                raise BadEvent("larger than 16 MiB")
            event = check_event(json.loads(raw.decode("utf-8")))
            if event["request_id"] != EVENT_NAME.match(name).group(1):
                raise BadEvent("its request_id is not the one in its name")
        except (ValueError, RecursionError) as e:  # BadEvent, JSON and UTF-8 errors
            self._set_aside(name, f"{type(e).__name__}: {e}" if not isinstance(e, BadEvent) else str(e), now)
            return None
        if not self.spool.layout.request_dir(event["request_id"]).is_dir():
            self._set_aside(name, f"request {event['request_id']} does not exist (removed?)", now)
            return None
        return event

    def _output_file(self, request_id: str, file: str) -> Path | None:
        """An output named by an event or marker, if it is a plain file in that request's
        own output folder: those names come from the spool, and anything else (an absolute
        path, `..`, a symlink) would upload some other file to MLflow."""
        folder = self.spool.layout.output_dir(request_id)
        path = self.spool.layout.root / file
        if path.parent != folder or not path.name.endswith(".png") or path.name.startswith("."):
            return None
        return path if path.is_file() and not path.is_symlink() else None

    def _log_event(self, name: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        event = self._read_event(name, now)
        if event is None:
            return
        record = self.parent(event["request_id"], event["ended_at"])
        if record is None:
            return
        if event.get("kind") == "worker-failed":
            self._log_worker_failure(record, event)
            self.spool.remove_event(name)
            return
        if record.get("finalized"):
            # A late attempt of a finished request (a fenced late writer): log it anyway.
            pass
        if "run_id" not in event:
            t = event["ticket_data"]
            run = self.client.create_run(
                record["experiment_id"],
                start_time=_ms(event["started_at"]),
                tags={
                    "mlflow.parentRunId": record["run_id"],
                    "sdgen.request_id": event["request_id"],
                    "sdgen.ticket": event["ticket"],
                    "sdgen.attempt": str(event["attempt"]),
                    "sdgen.worker": event["worker"],
                    "sdgen.host": event["host"] or "",
                    "sdgen.gpu": event.get("gpu") or "",
                    "sdgen.launcher": self.launcher,
                },
                run_name=f"ticket {t['index']} attempt {event['attempt']}",
            )
            event["run_id"] = run.info.run_id
            # Remember the run before logging into it: a crash now cannot create a twin.
            self.spool.rewrite_event(name, event)
        self._fill_child(event)
        self.client.set_terminated(event["run_id"], event["status"], end_time=_ms(event["ended_at"]))
        self.spool.remove_event(name)

    def _log_worker_failure(self, record: dict, event: dict) -> None:
        """A worker that failed before holding any ticket has no child run: its output goes
        to the parent run of each request that was waiting for it."""
        tail = self._worker_log_tail(event["worker"])
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / f"{event['worker']}.txt"
            p.write_text(f"{event['worker']}: {event['error']}\n\n--- worker log tail ---\n{tail}")
            self.client.log_artifact(record["run_id"], str(p), artifact_path="worker-failures")
        self.client.set_tag(record["run_id"], "sdgen.last_worker_failure", _param(event["error"]))

    def _fill_child(self, event: dict) -> None:
        run_id = event["run_id"]
        t = event["ticket_data"]
        engine = event.get("engine") or {}
        seeds = [i["seed"] for i in t["images"]]
        params = {
            "prompt": t["prompt"],
            "negative_prompt": t["negative_prompt"],
            "seeds": ",".join(map(str, seeds)),
            "batch": len(seeds),
            "steps": t["steps"],
            "size": f"{t['width']}x{t['height']}",
            "guidance": t["guidance"],
            "model": t["model"],
            "weights": t["weights"],
            "engine": t["engine"],
            "backend": engine.get("backend", ""),
            "precision": engine.get("precision", ""),
        }
        # a batch program's ticket: its combination as one param per swept field, so that
        # MLflow's run comparison plots a sweep's children against what was swept
        combination = t.get("combination") or {}
        if isinstance(combination, dict) and combination:
            params.update((f"sweep.{k}", v) for k, v in combination.items())
            params["combination_index"] = t.get("combination_index", 0)
        if t.get("template") and t.get("template") != t["prompt"]:
            params["template"] = t["template"]
        result = event.get("result") or {}
        seconds = result.get("seconds") or {}
        ts = _ms(event["ended_at"])
        metrics = [
            Metric(k, float(v), ts, 0)
            for k, v in (
                ("model_build_s", seconds.get("model_build")),
                ("compile_s", seconds.get("compile")),
                ("peak_rss_mb", seconds.get("peak_rss_mb")),
                ("generate_s", seconds.get("generate")),
                ("total_s", seconds.get("total")),
            )
            if v is not None
        ]
        made = result.get("images_made")
        if made:
            metrics.append(Metric("seconds_per_image", seconds.get("generate", 0.0) / made, ts, 0))
            metrics.append(Metric("images_made", made, ts, 0))
        for step, sample in enumerate(result.get("system") or []):
            metrics.extend(
                Metric(f"system/{k}", float(v), _ms(sample["t"]), step) for k, v in sample.items() if k != "t"
            )
        tags = []
        if event.get("error"):
            tags.append(RunTag("sdgen.error", _param(event["error"])))
        self.client.log_batch(
            run_id, params=[Param(k, _param(v)) for k, v in params.items()], metrics=metrics[:1000], tags=tags
        )
        for i in range(1000, len(metrics), 1000):  # MLflow takes at most 1000 per batch
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        outputs = result.get("outputs") or []
        chosen = {"all": outputs, "sample": outputs[:SAMPLE_IMAGES], "none": []}[self.images]
        for o in chosen:
            file = self._output_file(event["request_id"], o["file"])
            if file is not None:
                self.client.log_artifact(run_id, str(file), artifact_path="images")
        if event["status"] == "FAILED" or event.get("error"):
            tail = self._worker_log_tail(event["worker"])
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "error.txt"
                p.write_text(event.get("error", "") + ("\n\n--- worker log tail ---\n" + tail if tail else ""))
                self.client.log_artifact(run_id, str(p))

    def _worker_log_tail(self, worker: str) -> str:
        path = self.spool.layout.logs / f"worker-{worker}.log"
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])


def read_status(spool: Spool) -> dict | None:
    try:
        return json.loads(spool.layout.tracking_status.read_text())
    except (FileNotFoundError, ValueError):
        return None
