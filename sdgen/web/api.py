"""The JSON API under the pages (README, "Dashboard"): the same look, the same actions and
the same read-only and token rules; errors are {"error": "one line"} with a 4xx code.

  GET  /api/requests[?state=S&user=U]      every request's status row (newest first), the daemon,
                                           the workers by launcher and state, the lines under
                                           `sdgen status`'s table
  GET  /api/requests/<id>                  one request: its row, parameters, problem tickets,
                                           rate, ETA, images made, MLflow parent run
  GET  /api/requests/<id>/images[?page=N]  its finished images, a page at a time
  POST /api/requests                       a request as JSON or YAML: 201 {"id", "queued"}
  POST /api/requests/<id>/<action>         cancel, retry, pause, resume, priority: {"id", "message"}
                                           (priority: {"priority": N}; pause: {"after_ticket": true})
  POST /api/queue/pause, /api/queue/resume the whole queue
"""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sdgen import defaults
from sdgen.exceptions import RequestError
from sdgen.web import actions
from sdgen.web.guard import Refused, request_id


def _web(request: Request):
    return request.app.state.web


def _json(data, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(data, default=str)), status_code=status)


def list_requests(request: Request):
    from sdgen.web.app import _filters

    web = _web(request)
    snap = web.look.snapshot()
    state, user = _filters(request)
    from sdgen.web.look import filter_rows

    return _json(
        {
            "requests": filter_rows(snap["rows"], state, user),
            "daemon": snap["daemon"],
            "launcher": snap["launcher"],
            "paused_all": snap["paused_all"],
            "tracking_backlog": snap.get("tracking_backlog", 0),
            "lines": snap["footer"],
            "at": snap["at"],
        }
    )


def get_request(request: Request):
    web = _web(request)
    rid = request_id(request.path_params["rid"])
    d = web.detail(rid)
    if d["accepted"]:
        try:
            _, images, _ = web.gallery.images(rid)
            d["images_listed"] = len(images)
        except RequestError:
            pass
    return _json(d)


def list_images(request: Request):
    from sdgen.web.app import _int_arg
    from sdgen.web.look import page_of

    web = _web(request)
    rid = request_id(request.path_params["rid"])
    _, images, _ = web.gallery.images(rid)
    shown, page, pages = page_of(images, _int_arg(request, "page"), defaults.WEB_GALLERY_PAGE_SIZE)
    base = web.config.prefix
    return _json(
        {
            "id": rid,
            "count": len(images),
            "page": page,
            "pages": pages,
            "images": [
                {
                    "file": i.path.name,
                    "prompt_index": i.spec.prompt_index,
                    "image_index": i.spec.image_index,
                    "seed": i.spec.seed,
                    "combination_index": i.ticket.combination_index,
                    "url": f"{base}/files/{rid}/{i.path.name}",
                    "thumbnail": f"{base}/thumbs/{rid}/{i.path.name}",
                }
                for i in shown
            ],
        }
    )


async def post_request(request: Request):
    from sdgen.web.app import _body

    web = _web(request)
    web.check_write(request)
    body = await _body(request)
    text = actions.body_text(request.headers.get("content-type", ""), body)
    rid, queued = await run_in_threadpool(actions.submit, web.spool, None, text)
    web.look.invalidate()
    return _json({"id": rid, "queued": queued}, 201 if queued else 200)


async def post_action(request: Request):
    from sdgen.web.app import _body, run_action

    web = _web(request)
    rid = request_id(request.path_params["rid"])
    web.check_write(request)
    params = await _params(request, _body)
    message = await run_in_threadpool(run_action, web, request.path_params["action"], rid, params)
    return _json({"id": rid, "message": message})


async def post_queue(request: Request):
    web = _web(request)
    web.check_write(request)
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise Refused(f"unknown queue action {action[:30]!r}: pause or resume", 404)
    if action == "pause":
        message = await run_in_threadpool(actions.pause, web.spool, None)
    else:
        message = await run_in_threadpool(actions.resume, web.spool, None)
    web.look.invalidate()
    return _json({"message": message})


async def _params(request: Request, body_of) -> dict:
    """An action's parameters: the query string, then a JSON object body."""
    params = dict(request.query_params)
    body = await body_of(request)
    if body.strip():
        try:
            value = json.loads(body)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise Refused('the body must be a JSON object (like {"priority": 5})') from None
        if not isinstance(value, dict):
            raise Refused('the body must be a JSON object (like {"priority": 5})')
        params.update(value)
    return params


def routes() -> list:
    return [
        Route("/api/requests", list_requests, methods=["GET"]),
        Route("/api/requests", post_request, methods=["POST"]),
        Route("/api/requests/{rid}", get_request, methods=["GET"]),
        Route("/api/requests/{rid}/images", list_images, methods=["GET"]),
        Route("/api/requests/{rid}/{action}", post_action, methods=["POST"]),
        Route("/api/queue/{action}", post_queue, methods=["POST"]),
    ]
