"""`sdgen status` / `sdgen list` print names and reasons, written by anyone, inertly."""

import json

from sdgen.spool.request import parse_request
from tests.conftest import sdgen

RID = "20261126-000000-aaaaaa"
EVIL = "fox\x1b]0;owned\x07\x1b[2J\u202egnp.exe"


def test_names_reasons_and_file_names_reach_the_terminal_inert(spool):
    spool.accept(RID, parse_request("prompt: a fox\nengine: dry-run\n"), source="t", now=0.0)
    # a state.json written before intake refused controls in names
    state = json.loads(spool.layout.request_state(RID).read_text())
    state.update(name=EVIL, state="failed", reason=f"because {EVIL}")
    spool.layout.request_state(RID).write_text(json.dumps(state))
    (spool.layout.rejected / f"20261126-000000-{EVIL}.yaml").write_text("x")
    (spool.layout.rejected / f"20261126-000000-{EVIL}.yaml.reason").write_text(f"bad {EVIL}\n")
    data = spool.layout.root
    for args in (("status",), ("list",), ("status", RID)):
        out = sdgen(data, *args, check=True).stdout
        assert not any(c in out for c in "\x1b\x07\u202e"), (args, out)
        assert "fox\\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in out
    rows = json.loads(sdgen(data, "status", "--json", check=True).stdout)
    assert EVIL in {r.get("name") for r in rows}  # JSON keeps the exact text, escaped by JSON
