"""The dashboard's pages, files and JSON API, called in this process (no server, no browser):
what they show, what they refuse, and that every refusal is one line."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

import pytest

from sdgen import defaults
from sdgen.spool.store import Spool
from sdgen.web.app import Config, create_app, normalize_prefix
from tests.conftest import DRY, generate, sdgen
from tests.web.asgi import call

RID = "20261126-000000-aaaaaa"
REQUEST = DRY + "prompt: a <b>fox</b>\nimages: 5\nseed: 40\nname: <script>alert(1)</script>\n"


@pytest.fixture
def made(spool) -> Spool:
    generate(spool, REQUEST, RID)
    return spool


def app_of(spool: Spool, **kw):
    return create_app(Config(root=spool.layout.root, **kw))


def one_line_error(answer, status: int) -> str:
    assert answer.status == status, (answer.status, answer.text[:500])
    assert "Traceback" not in answer.text
    message = answer.json()["error"]
    assert "\n" not in message and message
    return message


def test_queue_page_lists_requests_escaped_with_progress(made):
    app = app_of(made)
    page = call(app, "GET", "/")
    assert page.status == 200
    assert RID in page.text and "5/5" in page.text
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert re.search(r'<progress value="5" max="5"', page.text)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # only this server's own files: no CDN, no inline script
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
    assert not re.search(r"<script>", page.text)
    fragment = call(app, "GET", "/fragments/queue?state=done")
    assert fragment.status == 200 and RID in fragment.text and "<html" not in fragment.text
    assert RID not in call(app, "GET", "/fragments/queue?state=running").text


def test_api_lists_and_filters(made):
    app = app_of(made)
    data = call(app, "GET", "/api/requests").json()
    (row,) = data["requests"]
    assert row["id"] == RID and row["state"] == "done" and row["images_done"] == 5
    assert data["daemon"]["running"] is False and data["lines"][0].startswith("daemon: not running")
    assert call(app, "GET", "/api/requests?state=pending").json()["requests"] == []
    assert call(app, "GET", "/api/requests?user=nobody-here").json()["requests"] == []
    assert len(call(app, "GET", f"/api/requests?user={row['user']}").json()["requests"]) == 1
    assert "unknown state" in one_line_error(call(app, "GET", "/api/requests?state=bogus"), 400)
    one = call(app, "GET", f"/api/requests/{RID}").json()
    assert one["prompts"] == ["a <b>fox</b>"] and one["seed"] == 40 and one["images_listed"] == 5
    images = call(app, "GET", f"/api/requests/{RID}/images").json()
    assert [i["seed"] for i in images["images"]] == [40, 41, 42, 43, 44]


def test_request_page_gallery_is_paged_and_lazy(made, monkeypatch):
    monkeypatch.setattr(defaults, "WEB_GALLERY_PAGE_SIZE", 2)
    app = app_of(made)
    page = call(app, "GET", f"/requests/{RID}")
    assert page.status == 200 and "page 1 of 3" in page.text
    thumbs = re.findall(r'<img src="(/thumbs/[^"]+)" loading="lazy"', page.text)
    assert len(thumbs) == 2
    last = call(app, "GET", f"/requests/{RID}?page=3")
    assert len(re.findall(r'src="/thumbs/', last.text)) == 1
    assert call(app, "GET", f"/requests/{RID}?page=99").status == 200  # the last page
    assert "a &lt;b&gt;fox&lt;/b&gt;" in page.text and "<b>fox</b>" not in page.text


def test_thumbnails_are_made_once_under_the_data_directory(made):
    app = app_of(made)
    name = "0000-000000-40.png"
    first = call(app, "GET", f"/thumbs/{RID}/{name}")
    assert first.status == 200 and first.headers["content-type"] == "image/jpeg" and first.body[:2] == b"\xff\xd8"
    (kept,) = (made.layout.root / "cache" / "thumbnails").rglob("*.jpg")
    assert kept.name == "0000-000000-40.jpg" and kept.read_bytes() == first.body
    stamp = kept.stat().st_mtime_ns
    assert call(app, "GET", f"/thumbs/{RID}/{name}").body == first.body
    assert kept.stat().st_mtime_ns == stamp


def test_image_page_shows_the_pngs_parameters_and_neighbours(made):
    app = app_of(made)
    page = call(app, "GET", f"/requests/{RID}/images/0000-000001-41.png")
    assert page.status == 200
    assert re.search(r'class="meta-seed">41<', page.text)
    assert 'rel="prev" id="prev" href="/requests/' + RID + '/images/0000-000000-40.png"' in page.text
    assert 'id="next" href="/requests/' + RID + '/images/0000-000002-42.png"' in page.text
    raw = call(app, "GET", f"/files/{RID}/0000-000001-41.png")
    assert raw.status == 200 and raw.body.startswith(b"\x89PNG")


def test_damaged_and_planted_files(made, tmp_path):
    app = app_of(made)
    folder = made.layout.output_dir(RID)
    (folder / "0000-000002-42.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    page = call(app, "GET", f"/requests/{RID}/images/0000-000002-42.png")
    assert page.status == 200 and 'class="error"' in page.text and str(folder) not in page.text
    assert call(app, "GET", f"/thumbs/{RID}/0000-000002-42.png", headers={"accept": "application/json"}).status == 415
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (folder / "0000-000000-40.png").unlink()
    (folder / "0000-000000-40.png").symlink_to(secret)
    for url in (f"/files/{RID}/0000-000000-40.png", f"/thumbs/{RID}/0000-000000-40.png"):
        answer = call(app, "GET", url)
        assert answer.status == 404 and b"secret" not in answer.body
    for url in (
        f"/files/{RID}/..%2F..%2Fspool%2Fdaemon.json",
        f"/files/{RID}/../../spool/daemon.json",
        "/files/..%2F..%2Fetc/passwd",
        f"/files/{RID}/index.csv",
        "/requests/..%2F..%2F/images/x.png",
    ):
        answer = call(app, "GET", url)
        assert answer.status == 404 and "Traceback" not in answer.text, url


def test_unknown_things_are_one_line_4xx(made):
    app = app_of(made)
    assert "not a request id" in one_line_error(call(app, "GET", "/api/requests/x<y"), 404)
    assert "unknown request" in one_line_error(call(app, "GET", "/api/requests/20991231-000000-abcdef"), 404)
    page = call(app, "GET", "/requests/<script>")
    assert page.status == 404 and "<script>" not in page.text and 'id="error"' in page.text
    assert call(app, "GET", "/no/such/page").status == 404
    assert "unknown action" in one_line_error(call(app, "POST", f"/api/requests/{RID}/explode"), 404)


def test_an_empty_data_directory_is_an_empty_queue(tmp_path):
    app = create_app(Config(root=tmp_path / "nothing"))
    page = call(app, "GET", "/")
    assert page.status == 200 and "no spool" in page.text
    assert call(app, "GET", "/api/requests").json()["requests"] == []


def test_submit_json_and_yaml_through_the_api(spool):
    app = app_of(spool)
    answer = call(
        app,
        "POST",
        "/api/requests",
        json.dumps({"prompt": "a cat", "engine": "dry-run", "width": 128, "height": 128, "images": 2}),
        {"content-type": "application/json"},
    )
    assert answer.status == 201 and answer.json()["queued"] is True
    rid = answer.json()["id"]
    assert (spool.layout.inbox / f"{rid}.yaml").exists()
    rows = call(app, "GET", "/api/requests").json()["requests"]
    assert [r["id"] for r in rows] == [rid] and rows[0]["state"] == "pending"
    yaml_answer = call(app, "POST", "/api/requests", DRY + "prompt: a dog\nimages: 1\n", {"content-type": "text/yaml"})
    assert yaml_answer.status == 201
    # an id of the submitter's own: the same content again queues nothing
    body = DRY + "prompt: a dog\nid: my-dog\n"
    first = call(app, "POST", "/api/requests", body)
    again = call(app, "POST", "/api/requests", body)
    assert first.status == 201 and again.status == 200 and again.json() == {"id": first.json()["id"], "queued": False}


@pytest.mark.parametrize(
    "text",
    [
        "prompt: a fox\nwidht: 128\n",
        "prompt: a fox\nwidth: 320\n",
        "images: 3\n",
        "prompt: a fox\nimages: 1\nimages: 2\n",
        "prompt: [unclosed\n",
        "- a list\n",
        "prompt: !!python/object:os.system x\n",
    ],
)
def test_api_submit_says_what_sdgen_submit_says(spool, tmp_path, text):
    app = app_of(spool)
    message = one_line_error(call(app, "POST", "/api/requests", text), 400)
    path = tmp_path / "request.yaml"
    path.write_text(text)
    cli = sdgen(spool.layout.root, "submit", str(path))
    assert cli.returncode == 2
    assert cli.stderr.strip().endswith(message), (cli.stderr, message)


def test_api_submit_refuses_bad_bodies(spool):
    app = app_of(spool)
    assert "JSON object" in one_line_error(
        call(app, "POST", "/api/requests", "[1, 2]", {"content-type": "application/json"}), 400
    )
    assert "not valid JSON" in one_line_error(
        call(app, "POST", "/api/requests", "{nope", {"content-type": "application/json"}), 400
    )
    assert "UTF-8" in one_line_error(call(app, "POST", "/api/requests", b"prompt: \xff\xfe"), 400)
    big = "prompt: " + "x" * (defaults.WEB_MAX_BODY_BYTES + 10)
    assert one_line_error(call(app, "POST", "/api/requests", big), 413)
    assert list(spool.layout.inbox.iterdir()) == []


def test_submit_form_queues_or_shows_the_error(spool):
    app = app_of(spool)
    ok = call(
        app,
        "POST",
        "/submit",
        "prompt=a+fox%0Aa+wolf&engine=dry-run&width=128&height=128&images=2&seed=&name=two",
        {"content-type": "application/x-www-form-urlencoded"},
    )
    assert ok.status == 303
    rid = ok.headers["location"].rsplit("/", 1)[1]
    assert "queued " + rid in unquote(ok.headers["set-cookie"])
    queued = (spool.layout.inbox / f"{rid}.yaml").read_text()
    assert "a wolf" in queued and "name: two" in queued
    bad = call(
        app, "POST", "/submit", "prompt=x&steps=many&width=320", {"content-type": "application/x-www-form-urlencoded"}
    )
    assert bad.status == 400 and "--steps: &#39;many&#39; is not a whole number" in bad.text
    bad = call(app, "POST", "/submit", "prompt=x&width=320", {"content-type": "application/x-www-form-urlencoded"})
    assert bad.status == 400 and "--width 320 is not a multiple of 128" in bad.text
    # the YAML box, with fields overriding it
    box = call(
        app,
        "POST",
        "/submit",
        "yaml=" + (DRY + "prompt: a bear\nsteps: 7\n").replace("\n", "%0A").replace(" ", "+") + "&steps=3",
        {"content-type": "application/x-www-form-urlencoded"},
    )
    assert box.status == 303
    rid = box.headers["location"].rsplit("/", 1)[1]
    assert "steps: 3" in (spool.layout.inbox / f"{rid}.yaml").read_text()


def test_actions_through_the_api(spool):
    app = app_of(spool)
    from tests.conftest import accept

    accept(spool, DRY + "prompt: a fox\nimages: 4\n", RID)
    post = lambda what, body="": call(app, "POST", f"/api/requests/{RID}/{what}", body)  # noqa: E731
    assert post("pause").json()["message"].startswith(f"paused {RID}")
    assert call(app, "GET", f"/api/requests/{RID}").json()["state"] == "paused"
    assert post("resume").json()["message"] == f"resumed {RID}"
    assert "priority 0 -> 7; 4 waiting ticket(s) reordered" in post("priority", '{"priority": 7}').json()["message"]
    assert "between -1000 and 1000" in one_line_error(post("priority", '{"priority": 5000}'), 400)
    assert "whole number" in one_line_error(post("priority", '{"priority": "high"}'), 400)
    assert "no failed or held tickets" in post("retry").json()["message"]
    assert post("cancel").json()["message"].startswith(f"cancelled {RID}")
    assert call(app, "GET", f"/api/requests/{RID}").json()["state"] == "cancelled"
    assert "already cancelled" in post("cancel").json()["message"]
    assert "resubmit" in one_line_error(post("retry"), 400)
    assert "unknown request id" in one_line_error(call(app, "POST", "/api/requests/20991231-000000-abcdef/cancel"), 404)
    assert call(app, "POST", "/api/queue/pause").json()["message"].startswith("paused the whole queue")
    assert spool.layout.pause_all_marker.exists()
    assert call(app, "POST", "/api/queue/resume").json()["message"] == "resumed the whole queue"


def test_action_forms_redirect_with_the_message(made):
    app = app_of(made)
    answer = call(app, "POST", f"/requests/{RID}/cancel", "", {"content-type": "application/x-www-form-urlencoded"})
    assert answer.status == 303 and answer.headers["location"] == f"/requests/{RID}"
    assert "already done" in unquote(answer.headers["set-cookie"])


WRITES = [
    ("/api/requests", DRY + "prompt: x\n"),
    (f"/api/requests/{RID}/cancel", ""),
    (f"/api/requests/{RID}/retry", ""),
    (f"/api/requests/{RID}/pause", ""),
    (f"/api/requests/{RID}/resume", ""),
    (f"/api/requests/{RID}/priority", '{"priority": 1}'),
    ("/api/queue/pause", ""),
    ("/submit", "prompt=x"),
    (f"/requests/{RID}/cancel", ""),
]


def _nothing_changed(spool):
    assert list(spool.layout.inbox.iterdir()) == []
    assert not spool.is_cancelled(RID) and not spool.is_paused(RID) and not spool.layout.pause_all_marker.exists()


def test_read_only_refuses_every_write(made):
    app = app_of(made, read_only=True)
    for url, body in WRITES:
        answer = call(app, "POST", url, body, {"accept": "application/json"})
        assert answer.status == 403 and "read-only" in answer.json()["error"], url
    _nothing_changed(made)
    page = call(app, "GET", f"/requests/{RID}").text
    assert 'id="cancel"' not in page and "/submit" not in page and "read-only" in page


def test_beyond_loopback_writes_need_the_token(made):
    open_to_all = app_of(made, host="0.0.0.0")
    for url, body in WRITES:
        answer = call(open_to_all, "POST", url, body, {"accept": "application/json"})
        assert answer.status == 403 and "token" in answer.json()["error"], url
    _nothing_changed(made)
    app = app_of(made, host="0.0.0.0", token="s3cret-token")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-sdgen-token": "s3cret-tokeN"}):
        for url, body in WRITES:
            answer = call(app, "POST", url, body, {"accept": "application/json", **headers})
            assert answer.status == 401 and "token" in answer.json()["error"], (url, headers)
    _nothing_changed(made)
    good = call(app, "POST", "/api/queue/pause", "", {"authorization": "Bearer s3cret-token"})
    assert good.status == 200 and made.layout.pause_all_marker.exists()
    assert call(app, "POST", "/api/queue/resume", "", {"x-sdgen-token": "s3cret-token"}).status == 200
    # the page's token form: a cookie the forms then carry
    login = call(app, "POST", "/login", "token=s3cret-token", {"content-type": "application/x-www-form-urlencoded"})
    assert login.status == 303
    cookie = re.search(r"sdgen_token=([^;]+)", login.headers["set-cookie"]).group(1)
    assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=strict" in login.headers["set-cookie"]
    assert call(app, "POST", "/login", "token=nope", {"accept": "application/json"}).status == 401
    paused = call(app, "POST", f"/requests/{RID}/pause", "", {"cookie": f"sdgen_token={cookie}"})
    assert paused.status == 303


def test_a_token_is_asked_for_on_loopback_too(made):
    app = app_of(made, token="t0k")
    assert call(app, "POST", "/api/queue/pause").status == 401
    assert call(app, "POST", "/api/queue/pause", "", {"authorization": "Bearer t0k"}).status == 200


def test_writes_from_another_sites_page_are_refused(made):
    app = app_of(made)
    answer = call(
        app, "POST", f"/requests/{RID}/pause", "", {"origin": "http://evil.example", "accept": "application/json"}
    )
    assert answer.status == 403 and "another site" in answer.json()["error"]
    assert call(app, "POST", "/api/queue/pause", "", {"origin": "null"}).status == 403
    assert not made.layout.pause_all_marker.exists()
    assert call(app, "POST", "/api/queue/pause", "", {"origin": "http://127.0.0.1:8765"}).status == 200


def test_url_prefix(made):
    app = app_of(made, prefix=normalize_prefix("projects/sdgen/"))
    page = call(app, "GET", "/projects/sdgen/")
    assert page.status == 200 and 'href="/projects/sdgen/static/sdgen.css"' in page.text
    assert f'href="/projects/sdgen/requests/{RID}"' in page.text
    assert call(app, "GET", "/projects/sdgen/static/sdgen.js").status == 200
    assert call(app, "GET", "/").headers["location"] == "/projects/sdgen/"
    assert call(app, "GET", "/projects/sdgen/api/requests").json()["requests"][0]["id"] == RID
    assert call(app, "GET", "/api/requests").status == 404
    for bad in ("a b", "/x/../y", "/<x>"):
        with pytest.raises(Exception, match="URL prefix"):
            normalize_prefix(bad)


def test_cli_takes_the_anaconda_project_http_options():
    from sdgen.cli.main import build_parser

    args = build_parser().parse_args(
        [
            "web",
            "--anaconda-project-address",
            "0.0.0.0",
            "--anaconda-project-port",
            "8086",
            "--anaconda-project-url-prefix",
            "/projects/sdgen",
            "--anaconda-project-host",
            "ae5.example:443",
            "--anaconda-project-use-xheaders",
            "--anaconda-project-no-browser",
            "--anaconda-project-iframe-hosts",
            "https://ae5.example",
        ]
    )
    assert (args.host, args.port, args.url_prefix) == ("0.0.0.0", 8086, "/projects/sdgen")
    assert args.allowed_hosts == ["ae5.example:443"] and args.use_xheaders
    plain = build_parser().parse_args(["web"])
    assert (plain.host, plain.port, plain.read_only, plain.token) == ("127.0.0.1", 8765, False, None)


def test_one_request_reads_only_its_own_files_and_says_what_status_says(made, spool):
    from sdgen.cli.status import collect, detail
    from sdgen.web.look import Look
    from tests.conftest import accept

    other = "20261126-000000-bbbbbb"
    accept(spool, DRY + "prompt: another\nimages: 3\n", other)
    for rid in (RID, other):
        mine = Look(spool).detail(rid)
        theirs = detail(spool, next(r for r in collect(spool) if r["id"] == rid))
        for key in ("rate", "eta", "rate_text", "eta_text", "tracking_backlog"):
            mine.pop(key, None)
            theirs.pop(key, None)
        assert mine == theirs
    assert Look(spool).detail("20991231-000000-abcdef") is None  # not there: the caller says so


def test_failed_tickets_show_their_reasons_escaped_and_retry_queues_them(spool):
    import dataclasses

    from sdgen.spool.states import TicketState
    from tests.conftest import accept

    accept(spool, DRY + "prompt: a fox\nimages: 3\n", RID)
    for name in spool.ticket_names(TicketState.PENDING):
        ticket = spool.read_ticket(TicketState.PENDING, name)
        assert spool.move_ticket(
            name, TicketState.PENDING, TicketState.FAILED, dataclasses.replace(ticket, reason="boom <img src=x>")
        )
    app = app_of(spool)
    page = call(app, "GET", f"/requests/{RID}")
    assert page.status == 200 and page.text.count("boom &lt;img src=x&gt;") == 3 and "<img src=x>" not in page.text
    assert 'id="retry"' in page.text
    one = call(app, "GET", f"/api/requests/{RID}").json()
    assert one["state"] == "failed" and [t["reason"] for t in one["problem_tickets"]] == ["boom <img src=x>"] * 3
    assert call(app, "POST", f"/api/requests/{RID}/retry").json()["message"] == f"3 ticket(s) of {RID} queued again"
    assert call(app, "GET", f"/api/requests/{RID}").json()["state"] == "pending"


def test_a_sweep_has_its_grid_and_others_have_none(made, spool):
    sweep = "20261126-000000-cccccc"
    generate(spool, DRY + "prompt: a fox\nimages: 1\nseed: 3\nsweep:\n  guidance: [5, 7.5]\n  steps: [2, 3]\n", sweep)
    app = app_of(spool)
    page = call(app, "GET", f"/requests/{sweep}")
    assert f'src="/requests/{sweep}/grid.png"' in page.text and "sweep guidance" in page.text
    grid = call(app, "GET", f"/requests/{sweep}/grid.png")
    assert grid.status == 200 and grid.body.startswith(b"\x89PNG")
    assert list((spool.layout.root / "cache" / "grids").iterdir())  # kept for the next view
    assert "grid.png" not in call(app, "GET", f"/requests/{RID}").text
    assert call(app, "GET", f"/requests/{RID}/grid.png").status == 404


def test_mlflow_parent_run_link(made, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    made.write_mlflow_record(RID, {"experiment_id": "7", "run_id": "abc123", "finalized": True, "status": "FINISHED"})
    linked = call(app_of(made, mlflow_url="http://mlflow.local:5000/"), "GET", f"/requests/{RID}").text
    assert 'href="http://mlflow.local:5000/#/experiments/7/runs/abc123"' in linked
    plain = call(app_of(made), "GET", f"/requests/{RID}").text
    assert "abc123" in plain and "#/experiments" not in plain
    made.write_mlflow_record(RID, {"experiment_id": "7", "run_id": 'x"><script>', "finalized": True})
    hostile = call(app_of(made, mlflow_url="http://mlflow.local:5000"), "GET", f"/requests/{RID}").text
    assert "<script>" not in hostile and "#/experiments" not in hostile
