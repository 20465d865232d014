"""Calling the dashboard's ASGI app in this process, without a server or an HTTP client
library: one request in, status, headers and body out (what the fast tests need)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def call(app, method: str, url: str, body: bytes | str = b"", headers: dict | None = None) -> Answer:
    parts = urlsplit(url)
    data = body.encode() if isinstance(body, str) else body
    head = {"host": "127.0.0.1:8765", **{k.lower(): v for k, v in (headers or {}).items()}}
    if data:
        head.setdefault("content-length", str(len(data)))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(parts.path),
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(k.encode(), str(v).encode()) for k, v in head.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8765),
    }
    sent: list[dict] = []

    async def run():
        inbox = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive():
            if inbox:
                return inbox.pop(0)
            await asyncio.sleep(3600)  # a handler waiting for the client to go
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers_out: dict[str, str] = {}
    for k, v in start.get("headers", []):
        key = k.decode().lower()
        headers_out[key] = f"{headers_out[key]}, {v.decode()}" if key in headers_out else v.decode()
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], headers_out, payload)
