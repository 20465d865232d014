"""`sdgen run`'s progress (sdgen/cli/progress.py): whole lines in a pipe, a rich display on a
terminal with log lines above it, the smoothed rate."""

import io
import logging
import re

import pytest

from sdgen.cli import progress as progress_module
from sdgen.cli.progress import RunProgress
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.states import TicketState
from tests.conftest import accept

RID = "20261126-000000-aaaaaa"
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Tty(io.StringIO):
    def isatty(self):
        return True


def _finish(spool, count: int) -> None:
    """The next `count` pending tickets of RID done, as a worker leaves them."""
    layout = spool.layout
    names = sorted(n for n in spool.ticket_names(TicketState.PENDING) if parse_ticket_name(n)[2] == RID)
    for name in names[:count]:
        layout.ticket(TicketState.PENDING, name).rename(layout.ticket(TicketState.DONE, name))


@pytest.fixture
def clock(monkeypatch):
    """The progress's clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def test_a_pipe_gets_whole_lines_without_carriage_returns_or_escapes(spool, clock, monkeypatch):
    monkeypatch.setattr(RunProgress, "PLAIN_EVERY", 0)
    accept(spool, "prompt: a\nimages: 8\nengine: dry-run\n", RID)
    out = io.StringIO()
    progress = RunProgress(spool, RID, stream=out)
    progress.update()
    progress.update()  # no change: no line
    for _ in range(4):
        clock[0] += 2
        _finish(spool, 2)
        progress.update()
    progress.update()  # done already said: once
    progress.break_line()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("0/8 images (pending: waiting for the daemon, 0s)")
    assert len(lines) == 5 and lines[-1].startswith("8/8 images") and lines[-1].endswith("(done)"), lines


def test_the_rate_of_grouped_tickets_is_the_true_rate(spool, clock, monkeypatch):
    """16 images land at once every 4 s: about 4 images/s, not the hundreds that images
    divided by the time since the first one read when two groups land a moment apart."""
    monkeypatch.setattr(RunProgress, "PLAIN_EVERY", 0)
    accept(spool, "prompt: a\nimages: 160\nbatch_size: 8\nengine: dry-run\n", RID)
    out = io.StringIO()
    progress = RunProgress(spool, RID, stream=out)
    for step in range(40):  # a look every 0.5 s
        if step % 8 == 1:
            _finish(spool, 2)  # two tickets of 8 together
        progress.update()
        clock[0] += 0.5
    rates = [float(m) for m in re.findall(r" ([0-9.]+) img/s", out.getvalue())]
    assert rates and all(3.5 <= r <= 4.5 for r in rates), rates


def test_on_a_terminal_log_lines_print_above_the_display_as_they_are(spool, monkeypatch):
    import os
    import shutil

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((80, 24)))
    accept(spool, "prompt: a\nimages: 4\nengine: dry-run\n", RID)
    out = Tty()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sdgen.test-progress")
    log.addHandler(handler)
    log.propagate = False
    try:
        progress = RunProgress(spool, RID, stream=out)
        progress.take_logs([handler])
        progress.update()
        log.warning("request [bold]x[/bold] \\[y]: one line")
        _finish(spool, 1)
        progress.update()
        progress.close()
        log.warning("after the display")
    finally:
        log.removeHandler(handler)
    raw = out.getvalue()
    assert "\x1b[" in raw  # rich drew it
    # what the terminal shows, line by line: the last redraw of each line wins
    shown = [part.split("\r")[-1] for part in ESCAPES.sub("", raw).split("\n")]
    assert "WARNING request [bold]x[/bold] \\[y]: one line" in shown, shown
    bars = [line for line in shown if "/4 images" in line]
    assert bars and bars[-1].rstrip().endswith("1/4 images (running)"), shown
    assert shown.index("WARNING request [bold]x[/bold] \\[y]: one line") < shown.index(bars[-1])
    assert shown[-2:] == ["WARNING after the display", ""]
    assert raw.count("\x1b[?25l") == raw.count("\x1b[?25h")  # the cursor is given back


def test_a_terminal_display_ends_at_the_final_state(spool):
    accept(spool, "prompt: a\nimages: 1\nengine: dry-run\n", RID)
    out = Tty()
    progress = RunProgress(spool, RID, stream=out)
    progress.update()
    _finish(spool, 1)
    progress.update()
    assert progress.live is None and progress.finished()
    shown = ESCAPES.sub("", out.getvalue())
    assert shown.endswith("1/1 images (done)\n")
