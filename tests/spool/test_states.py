"""Ticket and request states are str enums: equal to, hashed and written as the plain words."""

import json
import subprocess
import sys

import pytest

from sdgen.spool.layout import Layout
from sdgen.spool.states import TICKET_STATES, RequestState, TicketState


def test_states_are_the_words_in_files():
    assert TicketState.DONE == "done" and {"done": 1}[TicketState.DONE] == 1
    assert json.dumps({TicketState.HELD: [RequestState.STUCK]}, indent=1) == '{\n "held": [\n  "stuck"\n ]\n}'
    assert f"{TicketState.PENDING}|{RequestState.CORRUPT:<8}|" == "pending|corrupt |"
    assert [s.value for s in TICKET_STATES] == ["pending", "deferred", "running", "done", "failed", "held", "cancelled"]


def test_a_ticket_folder_is_only_a_ticket_state(tmp_path):
    layout = Layout(tmp_path)
    assert layout.tickets(TicketState.RUNNING) == layout.tickets("running") == tmp_path / "spool/tickets/running"
    for bad in ("runing", "../outputs", "", RequestState.REJECTED, None, 3):
        with pytest.raises(ValueError):
            layout.ticket(bad, "0000.000000.20240101-000000-abcdef")


def test_the_check_survives_python_O(tmp_path):
    """Not an assert: `python -O` keeps it."""
    code = (
        "from pathlib import Path\nfrom sdgen.spool.layout import Layout\n"
        "try:\n    Layout(Path('.')).tickets('nope')\nexcept ValueError:\n    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"
