"""`sdgen status --watch` (sdgen/cli/watch.py): a live table on a terminal, plain lines
elsewhere, user text inert, Ctrl-C ends it with exit 0, bad options are one line."""

import io
import re
import signal
import subprocess
import sys
import time

import pytest

from sdgen.cli import watch as watch_module
from sdgen.spool.layout import parse_ticket_name
from sdgen.spool.states import TicketState
from tests.conftest import accept, sdgen, sdgen_env

RID = "20261126-000000-aaaaaa"
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _stop_after(n: int):
    """A sleep that is Ctrl-C at its n-th call."""
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) >= n:
            raise KeyboardInterrupt

    return sleep


def _finish(spool, rid: str, indexes) -> None:
    """Tickets of `rid` done, as a worker leaves them (moved from pending to done)."""
    layout = spool.layout
    for index in indexes:
        (name,) = [n for n in spool.ticket_names(TicketState.PENDING) if parse_ticket_name(n)[1:] == (index, rid)]
        layout.ticket(TicketState.PENDING, name).rename(layout.ticket(TicketState.DONE, name))


def test_a_pipe_gets_plain_lines_one_per_change(spool, monkeypatch):
    accept(spool, "prompt: a\nimages: 4\nengine: dry-run\nname: foxes\n", RID)
    out = io.StringIO()
    looks = []

    def sleep(seconds):
        looks.append(seconds)
        if len(looks) == 2:
            _finish(spool, RID, [0])
        if len(looks) == 4:
            raise KeyboardInterrupt

    assert watch_module.watch(spool, 0.5, stream=out, sleep=sleep) == 0
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    rows = [line for line in lines if RID in line]
    # the first look, then the one change (one image done); unchanged looks print nothing
    assert len(rows) == 2, lines
    assert rows[0].endswith(f"{RID} pending 0/4 images foxes")
    assert f"{RID} running 1/4 images" in rows[1]
    assert sum("daemon: not running" in line for line in lines) == 1
    assert looks == [0.5] * 4


def test_the_terminal_gets_a_live_table_with_user_text_as_it_is(spool):
    from rich.console import Console

    accept(spool, "prompt: a\nimages: 4\nengine: dry-run\nname: '[bold]x[/bold] [link=http://e.x]y'\n", RID)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=30, color_system="standard")
    assert watch_module.watch(spool, 1, console=console, sleep=_stop_after(2)) == 0
    shown = ESCAPES.sub("", out.getvalue())
    assert "[bold]x[/bold] [link=http://e.x]y" in shown
    assert RID in shown and "pending" in shown and "0/4" in shown and "daemon: not running" in shown
    for head in ("ID", "STATE", "PROGRESS", "IMAGES", "RATE", "ETA", "NAME"):
        assert head in shown
    assert "\x1b[" in out.getvalue()  # drawn with rich's escapes, in place


def test_a_name_with_markup_is_printed_literally_in_a_pipe(data, spool):
    accept(spool, "prompt: a\nimages: 2\nengine: dry-run\nname: '[red]x'\n", RID)
    proc = _watch_process(data, spool)
    assert f"{RID} pending 0/2 images [red]x" in proc


def test_rows_show_rate_and_eta_while_running(spool):
    accept(spool, "prompt: a\nimages: 40\nengine: dry-run\n", RID)
    watcher = watch_module.Watcher(spool)
    watcher.look(0.0)
    _finish(spool, RID, range(0, 4))
    watcher.look(1.0)
    _finish(spool, RID, range(4, 20))
    rows, footer = watcher.look(5.0)
    (row,) = rows
    assert row["rate"] == pytest.approx(4) and row["eta"] == pytest.approx(5)
    assert watch_module.plain_row(row) == f"{RID} running 20/40 images 4.00 img/s ETA 5s"
    assert footer[0].startswith("daemon: not running")


def test_a_short_terminal_drops_finished_rows_first(spool):
    from rich.console import Console

    for i in range(12):
        rid = f"20261126-000000-{i:06d}"
        accept(spool, f"prompt: a\nimages: 1\nengine: dry-run\nname: r{i}\n", rid)
        if i != 3:
            _finish(spool, rid, [0])
    watcher = watch_module.Watcher(spool)
    rows, footer = watcher.look(0)
    out = io.StringIO()
    Console(file=out, width=120, height=10).print(watch_module.table(rows, footer, 120, 10))
    shown = out.getvalue()
    names = set(re.findall(r"\br\d+\b", shown))
    assert names == {"r3", "r8", "r9", "r10", "r11"}, names  # the pending one, then the latest
    assert "7 finished request(s) not shown" in shown
    assert len(shown.splitlines()) <= 10


def _watch_process(data, spool, wait: float = 0) -> str:
    """`sdgen status --watch` in a process of its own (stdout a pipe), ended by Ctrl-C
    after its first lines: its stdout; it exits 0 with nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdgen", "status", "--watch", "--interval", "0.2"],
        env=sdgen_env(data),
        cwd=data.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as on a terminal: a shell without job control (a CI job started in the
        # background, `nohup ... &`) starts children with SIGINT ignored, and Python then
        # keeps ignoring it instead of raising KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()
        time.sleep(wait)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == "", err
    return first + out


def test_ctrl_c_ends_it_quietly_with_exit_0(data, spool):
    accept(spool, "prompt: a\nimages: 2\nengine: dry-run\n", RID)
    out = _watch_process(data, spool, wait=0.5)
    assert RID in out and "\x1b" not in out and "\r" not in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--watch", "--interval", "0"], "above 0"),
        (["--watch", "--interval", "-1"], "above 0"),
        (["--watch", "--interval", "nan"], "above 0"),
        (["--watch", "--interval", "soon"], "not a number"),
        (["--interval", "2"], "add --watch"),
        (["--watch", "--json"], "leave out REQUEST and --json"),
        (["--watch", RID], "leave out REQUEST and --json"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(data, spool, args, words):
    proc = sdgen(data, "status", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_default_interval_is_a_tunable():
    from sdgen import defaults

    assert 0 < defaults.WATCH_INTERVAL_SECONDS <= 2
