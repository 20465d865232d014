"""The Starlette application of `sdgen web`: pages, form actions, images, and the JSON API
(api.py) under an optional URL prefix. Reads the data directory alone: no daemon needed.

Every answer to a mistake is one line (a page or {"error": ...}) with a 4xx code; anything
unexpected is logged here and answered with a one-line 500, never a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from sdgen import defaults
from sdgen.exceptions import SdgenError, UserError
from sdgen.pngmeta import MAX_PNG_BYTES, read_meta
from sdgen.spool.layout import REQUEST_ID
from sdgen.spool.records import CorruptRecord, load_json_object
from sdgen.spool.states import RequestState
from sdgen.spool.store import Spool
from sdgen.web import actions
from sdgen.web.gallery import Gallery
from sdgen.web.guard import Refused, image_path, is_loopback, read_file, request_id, write_refusal
from sdgen.web.look import Look, filter_rows, page_of
from sdgen.web.thumbnails import store_file, thumbnail

log = logging.getLogger(__name__)

TOKEN_COOKIE = "sdgen_token"
FLASH_COOKIE = "sdgen_flash"
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


@dataclass
class Config:
    root: Path  # the data directory, resolved
    host: str = defaults.WEB_HOST
    read_only: bool = False
    token: str | None = None
    prefix: str = ""  # "" or "/something" (no trailing slash)
    mlflow_url: str | None = None  # the MLflow UI, for links to parent runs
    allowed_hosts: list[str] = field(default_factory=list)  # extra Origin hosts (ADSP's --anaconda-project-host)
    poll_seconds: float = defaults.WEB_POLL_SECONDS

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def normalize_prefix(text: str | None) -> str:
    """'/a/b' from 'a/b/', '/a/b', ''; UserError for what cannot be a URL path."""
    text = (text or "").strip()
    if not text or text == "/":
        return ""
    if not re.fullmatch(r"/?[A-Za-z0-9._~!$&'()*+,;=:@%/-]+", text) or ".." in text.split("/"):
        raise UserError(f"URL prefix {text[:60]!r} is not a plain URL path (like /projects/sdgen)")
    return "/" + text.strip("/")


class Web:
    """What the routes share: the config, the spool, one Look and one Gallery."""

    def __init__(self, config: Config):
        self.config = config
        self.spool = Spool(config.root)
        self.look = Look(self.spool)
        self.gallery = Gallery(self.spool)
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("sdgen.web", "templates"),
            autoescape=True,  # every template, every value: user strings are escaped
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = _when
        env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})
        env.filters["url"] = lambda s: quote(str(s), safe="")
        env.filters["urlunquote"] = unquote
        env.tests["request_id"] = is_request_id
        self.templates = Jinja2Templates(env=env)

    # -- answers ------------------------------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, **context) -> Response:
        flash = request.cookies.get(FLASH_COOKIE)
        context.setdefault("title", "sdgen")
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                "base": self.config.prefix,
                "writable": self.writes_open(),
                "read_only": self.config.read_only,
                "needs_token": bool(self.config.token),
                "poll_ms": int(self.config.poll_seconds * 1000),
                "flash": flash[:500] if flash else None,
                **context,
            },
            status_code=status,
        )
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=self.config.prefix or "/")
        return response

    def writes_open(self) -> bool:
        """Whether write actions are shown at all (a token may still be asked for)."""
        c = self.config
        return not c.read_only and bool(c.token or c.loopback)

    def check_write(self, request: Request, form_token: str | None = None) -> None:
        """Refused unless this request may write: read-only, token, then where it came from."""
        given = (
            form_token or _bearer(request) or request.headers.get("x-sdgen-token") or request.cookies.get(TOKEN_COOKIE)
        )
        refusal = write_refusal(self.config.read_only, self.config.token, self.config.loopback, given)
        if refusal:
            raise refusal
        origin = request.headers.get("origin")
        if origin is not None and not self._same_origin(request, origin):
            # a page of another site posting here (the browser sends its Origin): refused
            raise Refused(f"a write from another site ({origin[:80]}) is refused", 403)

    def _same_origin(self, request: Request, origin: str) -> bool:
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            return False
        if not netloc:
            return False
        hosts = {request.headers.get("host", "").lower(), request.headers.get("x-forwarded-host", "").lower()}
        if netloc in hosts:
            return True
        name = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        return any(name == h.lower() or netloc == h.lower() for h in self.config.allowed_hosts)

    # -- reads ----------------------------------------------------------------------------------
    def row(self, rid: str) -> dict:
        for row in self.look.snapshot()["rows"]:
            if row["id"] == rid:
                return row
        raise Refused(f"unknown request id {rid!r}: the queue lists the known ones", 404)

    def detail(self, rid: str) -> dict:
        from sdgen.cli.status import detail

        out = self.look.detail(rid)  # its own files only: quick at any queue length
        if out is None:  # in the inbox, or damaged: as the queue's look shows it
            out = detail(self.spool, self.row(rid))
        problems = out.get("problem_tickets") or []
        out["problem_tickets_more"] = max(0, len(problems) - defaults.WEB_PROBLEM_TICKETS_SHOWN)
        out["problem_tickets"] = problems[: defaults.WEB_PROBLEM_TICKETS_SHOWN]
        out["mlflow"] = self.mlflow_link(rid)
        out["accepted"] = self.spool.layout.request_file(rid).exists()
        if "prompts" in out and "sampler" not in out:  # a field of newer request schemas
            try:
                sampler = getattr(self.spool.read_request(rid), "sampler", None)
            except (OSError, CorruptRecord):
                sampler = None
            if sampler:
                out["sampler"] = str(sampler)
        return out

    def mlflow_link(self, rid: str) -> dict | None:
        try:
            record = load_json_object(self.spool.layout.mlflow_record(rid))
        except (OSError, CorruptRecord):
            return None
        run, experiment = str(record.get("run_id", "")), str(record.get("experiment_id", ""))
        if not _RUN_ID.match(run):
            return None
        link = None
        base = self.config.mlflow_url or os.environ.get("MLFLOW_TRACKING_URI", "")
        if base.startswith(("http://", "https://")) and _RUN_ID.match(experiment):
            link = f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run}"
        return {"run_id": run, "experiment_id": experiment if _RUN_ID.match(experiment) else "", "url": link}


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else ""
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _int_arg(request: Request, name: str, default: int = 1) -> int:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise Refused(f"{name} must be a whole number, got {value[:20]!r}") from None


def _filters(request: Request) -> tuple[str | None, str | None]:
    state = request.query_params.get("state") or None
    if state is not None and state not in {s.value for s in RequestState}:
        raise Refused(f"unknown state {state[:40]!r}: one of {', '.join(s.value for s in RequestState)}")
    user = request.query_params.get("user")
    return state, (user if user else None)


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the dashboard's forms), size-bounded."""
    from urllib.parse import parse_qsl

    body = await _body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the form is not UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=100))


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > defaults.WEB_MAX_BODY_BYTES:
            raise Refused(f"the request body is over {defaults.WEB_MAX_BODY_BYTES} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


# -- pages ------------------------------------------------------------------------------------


def queue_context(web: Web, request: Request) -> dict:
    snap = web.look.snapshot()
    state, user = _filters(request)
    rows = filter_rows(snap["rows"], state, user)
    shown, page, pages = page_of(rows, _int_arg(request, "page"), defaults.WEB_QUEUE_PAGE_SIZE)
    return {
        "snap": snap,
        "rows": shown,
        "matching": len(rows),
        "page": page,
        "pages": pages,
        "state": state or "",
        "user": user or "",
        "states": [s.value for s in RequestState],
        "users": sorted({r.get("user") or "" for r in snap["rows"]} - {""}),
        "filters": {"state": state, "user": user},
    }


def queue_page(request: Request):
    web: Web = request.app.state.web
    return web.page(request, "queue.html", title="sdgen queue", **queue_context(web, request))


def queue_fragment(request: Request):
    web: Web = request.app.state.web
    return web.page(request, "_queue.html", **queue_context(web, request))


def request_context(web: Web, request: Request, rid: str) -> dict:
    d = web.detail(rid)
    context = {"d": d, "rid": rid, "images": [], "page": 1, "pages": 1, "image_count": 0, "has_grid": False}
    if d["accepted"]:
        try:
            req, images, _ = web.gallery.images(rid)
        except UserError as e:
            context["gallery_error"] = str(e)
        else:
            shown, page, pages = page_of(images, _int_arg(request, "page"), defaults.WEB_GALLERY_PAGE_SIZE)
            context.update(
                images=[{"name": i.path.name, "seed": i.spec.seed, "prompt": i.ticket.prompt} for i in shown],
                page=page,
                pages=pages,
                image_count=len(images),
                has_grid=bool(req.sweep) and bool(images),
            )
    return context


def request_page(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    return web.page(request, "request.html", title=f"sdgen {rid}", **request_context(web, request, rid))


def request_fragment(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    return web.page(request, "_summary.html", d=web.detail(rid), rid=rid)


def image_page(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    name = request.path_params["name"]
    path = image_path(web.config.root, web.spool.layout.output_dir(rid), rid, name)
    _, images, positions = web.gallery.images(rid)
    if name not in positions:
        raise Refused(f"no finished image {name} in request {rid}", 404)
    i = positions[name]
    try:
        meta, meta_error = read_meta(path), None
    except UserError as e:
        meta, meta_error = None, str(e).replace(str(path), name)
    parameters = meta.pop("parameters", "") if meta else ""
    return web.page(
        request,
        "image.html",
        title=f"sdgen {rid} {name}",
        rid=rid,
        name=name,
        position=i + 1,
        count=len(images),
        prev=images[i - 1].path.name if i > 0 else None,
        next=images[i + 1].path.name if i + 1 < len(images) else None,
        gallery_page=i // defaults.WEB_GALLERY_PAGE_SIZE + 1,
        meta=meta,
        meta_error=meta_error,
        parameters=parameters,
    )


def image_file(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    path = image_path(web.config.root, web.spool.layout.output_dir(rid), rid, request.path_params["name"])
    data = read_file(path, MAX_PNG_BYTES)
    # images are published once (link(2)) and never replaced: cache them for good
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})


def thumbnail_file(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    data = thumbnail(web.config.root, web.spool.layout.output_dir(rid), rid, request.path_params["name"])
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400, immutable"})


def grid_file(request: Request):
    from sdgen.batch.grid import request_grids

    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    req, images, _ = web.gallery.images(rid)
    if not req.sweep:
        raise Refused(f"request {rid} has no sweep: no X/Y grid", 404)
    if not images:
        raise Refused(f"request {rid} has no finished images yet", 404)
    cached = web.config.root / "cache" / "grids" / f"{rid}-{len(images)}.png"
    try:
        data = read_file(cached, 256 * 1024 * 1024)
    except Refused:
        import io

        grids, _ = request_grids(req, images)
        buf = io.BytesIO()
        grids[0][1].image.save(buf, format="PNG")
        data = buf.getvalue()
        store_file(web.config.root, cached, data)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


def submit_page(request: Request):
    web: Web = request.app.state.web
    return web.page(request, "submit.html", title="sdgen submit", fields={}, text="", error=None)


async def submit_form(request: Request):
    web: Web = request.app.state.web
    form = await _form(request)
    web.check_write(request, form.get("token"))
    text = form.get("yaml", "")
    fields = {k: v for k, v in form.items() if k in actions.FIELDS}
    try:
        rid, queued = await run_in_threadpool(actions.submit, web.spool, fields, text)
    except UserError as e:  # RequestError too: the form again, with the line saying what to fix
        return web.page(
            request, "submit.html", status=400, title="sdgen submit", fields=fields, text=text, error=str(e)
        )
    web.look.invalidate()
    message = f"queued {rid}" if queued else f"id given was submitted before with the same content: {rid}"
    return _redirect(web, f"/requests/{rid}", message)


async def action_form(request: Request):
    web: Web = request.app.state.web
    rid = request_id(request.path_params["rid"])
    action = request.path_params["action"]
    form = await _form(request)
    web.check_write(request, form.get("token"))
    message = await run_in_threadpool(run_action, web, action, rid, form)
    return _redirect(web, f"/requests/{rid}", message)


async def queue_action_form(request: Request):
    web: Web = request.app.state.web
    form = await _form(request)
    web.check_write(request, form.get("token"))
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise Refused(f"unknown queue action {action[:30]!r}: pause or resume", 404)
    message = await run_in_threadpool(actions.pause if action == "pause" else actions.resume, web.spool, None)
    web.look.invalidate()
    return _redirect(web, "/", message)


def run_action(web: Web, action: str, rid: str, params: dict) -> str:
    if action not in actions.ACTIONS:
        raise Refused(f"unknown action {action[:30]!r}: one of {', '.join(sorted(actions.ACTIONS))}", 404)
    if action == "priority":
        message = actions.priority(web.spool, rid, params.get("priority"))
    elif action == "pause":
        message = actions.pause(
            web.spool, rid, after_ticket=str(params.get("after_ticket", "")).lower() in ("1", "true", "on", "yes")
        )
    else:
        message = getattr(actions, action)(web.spool, rid)
    web.look.invalidate()
    return message


async def login(request: Request):
    """The token form: the token is kept in an HttpOnly, same-site cookie for the forms."""
    web: Web = request.app.state.web
    form = await _form(request)
    token = form.get("token", "")
    web.check_write(request, token)
    response = _redirect(web, "/", "token accepted: write actions are on in this browser")
    response.set_cookie(
        TOKEN_COOKIE, token, httponly=True, samesite="strict", path=web.config.prefix or "/", max_age=30 * 86400
    )
    return response


def _redirect(web: Web, where: str, message: str) -> RedirectResponse:
    response = RedirectResponse(f"{web.config.prefix}{where}", status_code=303)
    response.set_cookie(
        FLASH_COOKIE, quote(message[:400]), httponly=True, samesite="strict", path=web.config.prefix or "/"
    )
    return response


# -- errors -----------------------------------------------------------------------------------


def _wants_json(request: Request) -> bool:
    path = request.url.path[len(request.app.state.web.config.prefix) :] if hasattr(request.app.state, "web") else ""
    return path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def _error(request: Request, message: str, status: int) -> Response:
    message = " ".join(str(message).split())[:1000]  # one line
    if _wants_json(request) or not hasattr(request.app.state, "web"):
        return JSONResponse({"error": message}, status_code=status)
    return request.app.state.web.page(request, "error.html", status=status, title="sdgen: error", message=message)


async def on_refused(request: Request, exc: Refused):
    return _error(request, str(exc), exc.status)


async def on_user_error(request: Request, exc: UserError):
    text = str(exc)
    return _error(request, text, 404 if text.startswith("unknown request") else 400)


async def on_sdgen_error(request: Request, exc: SdgenError):
    return _error(request, str(exc), 409)


async def on_http(request: Request, exc: HTTPException):
    return _error(request, exc.detail if isinstance(exc.detail, str) else "error", exc.status_code)


async def on_os_error(request: Request, exc: OSError):
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error(request, f"the data directory could not be read or written: {exc.strerror or exc}", 500)


async def on_anything(request: Request, exc: Exception):
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(request, f"internal error ({type(exc).__name__}): the server's log has the details", 500)


# -- the application --------------------------------------------------------------------------

_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """A CSP that allows only this server's own files (no inline script or style), on every answer."""

    def __init__(self, app, frame_ancestors: list[str] | None = None):
        self.app = app
        csp = _SECURITY_HEADERS[0][1].decode()
        csp += "; frame-ancestors " + (" ".join(frame_ancestors) if frame_ancestors else "'self'")
        self.headers = [(b"content-security-policy", csp.encode())] + _SECURITY_HEADERS[1:]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.headers
            await send(message)

        return await self.app(scope, receive, with_headers)


def routes() -> list:
    from sdgen.web import api

    return [
        Route("/", queue_page),
        Route("/fragments/queue", queue_fragment),
        Route("/requests/{rid}", request_page),
        Route("/fragments/requests/{rid}", request_fragment),
        Route("/requests/{rid}/images/{name}", image_page),
        Route("/requests/{rid}/grid.png", grid_file),
        Route("/files/{rid}/{name}", image_file),
        Route("/thumbs/{rid}/{name}", thumbnail_file),
        Route("/submit", submit_page, methods=["GET"]),
        Route("/submit", submit_form, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/queue/{action}", queue_action_form, methods=["POST"]),
        Route("/requests/{rid}/{action}", action_form, methods=["POST"]),
        *api.routes(),
        Mount("/static", app=StaticFiles(packages=[("sdgen.web", "static")]), name="static"),
    ]


def create_app(config: Config, frame_ancestors: list[str] | None = None):
    """The ASGI application: the routes under config.prefix, security headers on every answer."""
    handlers = {
        Refused: on_refused,
        UserError: on_user_error,
        SdgenError: on_sdgen_error,
        HTTPException: on_http,
        OSError: on_os_error,
        Exception: on_anything,
    }
    web = Web(config)
    inner = Starlette(routes=routes(), exception_handlers=handlers)
    inner.state.web = web
    if config.prefix:
        outer = Starlette(
            routes=[
                Route("/", lambda request: RedirectResponse(f"{config.prefix}/")),
                Mount(config.prefix, app=inner),
            ],
            exception_handlers=handlers,
        )
        outer.state.web = web
    else:
        outer = inner
    return SecurityHeaders(outer, frame_ancestors)


def is_request_id(text: str) -> bool:
    return bool(REQUEST_ID.fullmatch(str(text)))
