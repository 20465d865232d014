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


def test_the_detail_view_of_a_batch_program_shows_templates_sweep_and_a_bounded_prompt_list(data):
    """A template may expand to thousands of prompts: the detail view shows the template,
    the first prompts and how many more, and the sweep; --json has every prompt."""
    from sdgen.spool.store import Spool
    from tests.conftest import accept, sdgen

    spool = Spool(data).ensure()
    (data / "wildcards").mkdir(parents=True)
    (data / "wildcards" / "n.txt").write_text("\n".join(str(i) for i in range(30)) + "\n")
    rid = "20261126-000000-bbbbbb"
    accept(
        spool,
        "version: 2\nprompt: 'photo of __n__'\nimages: 1\nseed: 1\nengine: dry-run\nsweep:\n  guidance: [3, 9]\n",
        rid,
    )
    out = sdgen(data, "status", rid).stdout
    assert "template 0  photo of __n__" in out and "prompt 19 photo of 19" in out and "prompt 20" not in out
    assert "... 10 more prompt(s)" in out and "sweep     guidance: 3, 9" in out and "2 combinations" in out
    full = json.loads(sdgen(data, "status", rid, "--json").stdout)
    assert len(full["prompts"]) == 30 and full["sweep"] == {"guidance": [3.0, 9.0]}
