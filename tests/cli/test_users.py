"""Who submitted what (issue 20, fair share): `sdgen status` shows the user, `--json` has
`user`, `sdgen list --user NAME` filters."""

import json
import os
import time

from sdgen.spool.intake import owner_name
from sdgen.spool.request import parse_request
from tests.conftest import sdgen, submit

R1, R2, R3 = "20261126-000000-aaaaa1", "20261126-000001-aaaaa2", "20261126-000002-aaaaa3"
LONG = "a.very.long.directory.user"


def accepted_as(spool, rid: str, user: str) -> None:
    spool.accept(rid, parse_request("prompt: a\nimages: 1\nengine: dry-run\nseed: 1\n"), "test", time.time())
    state = spool.read_state(rid)
    spool.write_state(rid, {**state, "user": user})


def test_status_shows_the_user_cut_to_fit_and_json_has_it_whole(data, spool):
    accepted_as(spool, R1, "alice")
    accepted_as(spool, R2, LONG)
    spool.accept(R3, parse_request("prompt: c\nimages: 1\nengine: dry-run\nseed: 1\n"), "test", time.time())  # none
    waiting = submit(data, "--prompt", "w")  # still in the inbox: its file's owner
    out = sdgen(data, "status", check=True).stdout.splitlines()
    head = out[0]
    assert "USER" in head and head.index("USER") < head.index("NAME")
    col = head.index("USER")
    cells = {line.split()[0]: line[col : col + 12] for line in out[1:5]}
    assert cells[R1].strip() == "alice" and cells[R2] == LONG[:11] + "~" and cells[R3].strip() == "-"
    assert cells[waiting].strip() == owner_name(os.geteuid())[:12]
    rows = {r["id"]: r for r in json.loads(sdgen(data, "status", "--json", check=True).stdout)}
    assert (rows[R1]["user"], rows[R2]["user"], rows[R3]["user"]) == ("alice", LONG, "")
    # the detail view names the user whole; one without a user says nothing of it
    assert f"user      {LONG} " in sdgen(data, "status", R2, check=True).stdout
    assert "user " not in sdgen(data, "status", R3, check=True).stdout
    assert json.loads(sdgen(data, "status", R2, "--json", check=True).stdout)["user"] == LONG


def test_list_user_keeps_only_that_users_requests(data, spool):
    accepted_as(spool, R1, "alice")
    accepted_as(spool, R2, "bob")
    accepted_as(spool, R3, "alice")
    assert sdgen(data, "list", "--user", "alice", check=True).stdout.split() == [R1, "pending", R3, "pending"]
    rows = json.loads(sdgen(data, "list", "--user", "bob", "--json", check=True).stdout)
    assert [r["id"] for r in rows] == [R2]
    assert sdgen(data, "list", "--user", "carol", check=True).stdout == ""
    combined = sdgen(data, "list", "--user", "alice", "--state", "done", check=True)
    assert combined.stdout == ""


def test_list_user_without_a_name_is_a_one_line_error(data, spool):
    proc = sdgen(data, "list", "--user")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--user" in proc.stderr.strip().splitlines()[-1]
