"""`sdgen cancel` agrees with what the daemon does: a cancel before acceptance holds, and a
request whose tickets are all done is not cancelled, whatever state.json says yet."""

from sdgen.spool.request import parse_request
from tests.conftest import FAST, sdgen, status_json


def test_a_cancel_while_in_the_inbox_holds_when_the_daemon_accepts(data, daemon):
    rid = sdgen(
        data,
        "submit",
        "--prompt",
        "a",
        "--images",
        "4",
        "--engine",
        "dry-run",
        "--weights",
        "random",
        "--width",
        "128",
        "--height",
        "128",
        check=True,
    ).stdout.strip()
    assert (data / "spool" / "inbox" / f"{rid}.yaml").exists()
    proc = sdgen(data, "cancel", rid)
    assert proc.returncode == 0 and "cancelled" in proc.stdout, proc.stderr
    d = daemon("--workers", "1", "--exit-when-idle", *FAST)
    assert d.wait(60) == 0, d.output()
    rows = status_json(data)
    assert [(r["id"], r["state"]) for r in rows if r["state"] != "rejected"] == [(rid, "cancelled")], rows
    assert not (data / "outputs" / rid).exists() or list((data / "outputs" / rid).glob("*.png")) == []
    assert not list((data / "outputs").glob("*/*.png"))


def test_cancel_of_a_request_whose_tickets_are_done_changes_nothing(data, spool):
    """The last ticket is done but the daemon has not recorded it yet (state.json: running)."""
    rid = "20261126-000000-dddddd"
    spool.accept(rid, parse_request("prompt: a\nimages: 2\nengine: dry-run\nseed: 1\n"), source="t", now=0.0)
    spool.write_state(rid, dict(spool.read_state(rid), state="running"))
    for name in spool.ticket_names("pending"):
        assert spool.move_ticket(name, "pending", "done")
    proc = sdgen(data, "cancel", rid)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"request {rid} is already done; nothing to cancel"
    assert not spool.is_cancelled(rid)


def test_cancel_of_an_unfinished_request_writes_the_marker(data, spool):
    rid = "20261126-000000-eeeeee"
    spool.accept(rid, parse_request("prompt: a\nimages: 2\nengine: dry-run\nseed: 1\n"), source="t", now=0.0)
    proc = sdgen(data, "cancel", rid)
    assert proc.returncode == 0 and f"cancelled {rid}" in proc.stdout, proc.stderr
    assert spool.is_cancelled(rid)
    again = sdgen(data, "cancel", rid)
    assert again.returncode == 0 and "already cancelled" in again.stdout
